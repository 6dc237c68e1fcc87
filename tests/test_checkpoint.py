"""DIMaskDINOCheckpointer: the authors' key names, our round trip, mismatches and safe loading."""
import os
import pickle

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

from dimaskdino.checkpoint import DIMaskDINOCheckpointer, convert_authors_state_dict

from test_model import STATE_DICT_TSV, config, needs_reference, tiny_config


def published_keys():
    return [line.split("\t")[0] for line in STATE_DICT_TSV.read_text().splitlines()]


@needs_reference
def test_published_r50_checkpoint_loads_with_nothing_missing_or_unexpected(tmp_path):
    torch.manual_seed(0)
    source = build_model(config())
    ours = source.state_dict()
    # the published file: every key in the authors' naming, aliases holding the same tensor
    authors = {}
    for key in published_keys():
        renamed = list(convert_authors_state_dict({key: torch.zeros(1)}))
        if renamed:
            authors[key] = ours[renamed[0]]
        else:  # criterion.empty_weight, which our criterion does not have
            authors[key] = torch.rand(81)
    assert len(authors) == 717
    path = tmp_path / "dimaskdino_r50_12ep.pth"
    torch.save({"model": authors}, path)

    torch.manual_seed(1)
    target = build_model(config())
    incompatible = DIMaskDINOCheckpointer(target)._load_model(DIMaskDINOCheckpointer(target)._load_file(str(path)))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    for key, value in target.state_dict().items():
        assert torch.equal(value, ours[key]), key


def test_our_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config())
    DIMaskDINOCheckpointer(model, str(tmp_path)).save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert list(saved.keys()) == list(model.state_dict().keys())
    torch.manual_seed(1)
    fresh = build_model(tiny_config())
    DIMaskDINOCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_training_state_resumes_with_weights_only_loading(tmp_path):
    cfg = tiny_config("SOLVER.MAX_ITER", 10, "SOLVER.STEPS", (5,), "SOLVER.CLIP_GRADIENTS.ENABLED", False)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    loss = sum(p.sum() for p in model.parameters() if p.requires_grad)
    loss.backward()
    optimizer.step()
    scheduler.step()
    DIMaskDINOCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler).save(
        "model_0000001", iteration=1
    )
    model2 = build_model(cfg)
    optimizer2 = build_optimizer(cfg, model2)
    scheduler2 = build_lr_scheduler(cfg, optimizer2)
    checkpointer = DIMaskDINOCheckpointer(model2, str(tmp_path), optimizer=optimizer2, scheduler=scheduler2)
    extra = checkpointer.resume_or_load(str(tmp_path / "model_0000001.pth"), resume=True)
    assert extra["iteration"] == 1
    assert scheduler2.last_epoch == scheduler.last_epoch
    assert optimizer2.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_di_checkpoint_into_a_maskdino_model_names_the_extra_keys(tmp_path):
    source = build_model(tiny_config())
    path = tmp_path / "di.pth"
    torch.save({"model": source.state_dict()}, path)
    plain = build_model(tiny_config("MODEL.MaskDINO.DI_ENABLED", False, "MODEL.MaskDINO.BATO_ENABLED", False))
    with pytest.raises(ValueError, match=r"unexpected keys: .*di_module"):
        DIMaskDINOCheckpointer(plain).load(str(path))


def test_shape_mismatch_is_an_error_unless_not_strict(tmp_path):
    source = build_model(tiny_config())
    path = tmp_path / "k5.pth"
    torch.save({"model": source.state_dict()}, path)
    other = build_model(tiny_config("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 8))
    with pytest.raises(ValueError, match=r"another shape: .*class_embed.weight \(checkpoint \(5, 64\), model \(8, 64\)\)"):
        DIMaskDINOCheckpointer(other).load(str(path))
    before = other.sem_seg_head.predictor.class_embed.weight.clone()
    DIMaskDINOCheckpointer(other, strict=False).load(str(path))
    assert torch.equal(other.sem_seg_head.predictor.class_embed.weight, before)  # skipped
    assert torch.equal(other.sem_seg_head.predictor.mask_embed.layers[0].weight,
                       source.sem_seg_head.predictor.mask_embed.layers[0].weight)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "rcnn.pth"
    torch.save({"model": {"roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 1024),
                          "proposal_generator.rpn_head.conv.weight": torch.zeros(256, 256, 3, 3)}}, path)
    model = build_model(tiny_config())
    with pytest.raises(ValueError, match=r"missing keys: .*unexpected keys: .*roi_heads"):
        DIMaskDINOCheckpointer(model).load(str(path))


def test_aliases_with_different_values_are_an_error():
    a, b = torch.zeros(4, 4), torch.ones(4, 4)
    with pytest.raises(ValueError, match=r"_bbox_embed.layers.0.weight.*bbox_embed.0.layers.0.weight"):
        convert_authors_state_dict({
            "sem_seg_head.predictor._bbox_embed.layers.0.weight": a,
            "sem_seg_head.predictor.bbox_embed.0.layers.0.weight": b,
        })


def test_our_names_pass_through_unchanged():
    model = build_model(tiny_config())
    state = model.state_dict()
    converted = convert_authors_state_dict(state, keep=state.keys())
    assert list(converted.keys()) == list(state.keys())


class _Payload:
    """Pickled with a reduce that would create a file if it ever ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"backbone.x": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    model = build_model(tiny_config())
    with pytest.raises(ValueError, match="weights-only"):
        DIMaskDINOCheckpointer(model).load(str(path))
    assert not marker.exists()


def test_pkl_with_arbitrary_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": _Payload(marker)}, "__author__": "x"}))
    model = build_model(tiny_config())
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        DIMaskDINOCheckpointer(model).load(str(path))
    assert not marker.exists()


def test_detectron2_pkl_backbone_weights_load(tmp_path):
    model = build_model(tiny_config())
    weights = {k[len("backbone."):]: v.numpy().copy() + 1.0
               for k, v in model.state_dict().items() if k.startswith("backbone.")}
    path = tmp_path / "R-50-tiny.pkl"
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "test", "matching_heuristics": True}))
    DIMaskDINOCheckpointer(model).load(str(path))  # heuristic name matching, not strict
    conv = model.backbone.stem.conv1.weight
    assert np.allclose(conv.detach().numpy(), weights["stem.conv1.weight"])


def test_swin_checkpoints_in_the_authors_layout_are_moved_to_timm(tmp_path):
    from test_swin import swin_config

    torch.manual_seed(0)
    model = build_model(swin_config())
    state = model.state_dict()
    authors = {}
    for key, value in state.items():
        if key.startswith("backbone.layers.") and ".downsample." in key:
            stage = int(key.split(".")[2])
            key = key.replace(f"backbone.layers.{stage}.", f"backbone.layers.{stage - 1}.", 1)
        authors[key] = value
    authors["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    path = tmp_path / "swin_authors.pth"
    torch.save({"model": authors}, path)
    torch.manual_seed(1)
    fresh = build_model(swin_config())
    DIMaskDINOCheckpointer(fresh).load(str(path))
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
