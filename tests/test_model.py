"""The DI-MaskDINO model: published state-dict layout, module contracts, switches and inference."""
from pathlib import Path

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.checkpoint import convert_authors_state_dict
from dimaskdino.config import add_dimaskdino_config
from dimaskdino.layers.box_ops import box_xyxy_to_cxcywh
from dimaskdino.modeling.denoising import DenoisingQueryGenerator, denoising_attention_mask
from dimaskdino.modeling.query_selection import TwoStageQuerySelection, encoder_anchor_boxes

REPO = Path(__file__).resolve().parents[1]
STATE_DICT_TSV = Path("/work/shared/reference/dimaskdino_r50_state_dict.tsv")
needs_reference = pytest.mark.skipif(not STATE_DICT_TSV.exists(), reason="shared reference files not available")

DI_KEYS = ("sem_seg_head.predictor.oldm", "sem_seg_head.predictor._oldm_bbox_embed")
BATO_KEYS = (
    "sem_seg_head.predictor.query_guide_feature_update",
    "sem_seg_head.predictor.decoder.query_guide_feature_update",
    "sem_seg_head.predictor.decoder.mask_output_conv",
)


def published_shapes():
    shapes = {}
    for line in STATE_DICT_TSV.read_text().splitlines():
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return shapes


def config(path="dimaskdino_r50_4scale_bs16_12ep.yaml", *opts):
    cfg = get_cfg()
    add_dimaskdino_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / path))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def tiny_config(*opts):
    """A small ResNet-50-shaped model with hidden dim 64: fast on CPU."""
    return config(
        "dimaskdino_r50_4scale_bs16_12ep.yaml",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
        "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
        "MODEL.MaskDINO.HIDDEN_DIM", 64, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64, "MODEL.SEM_SEG_HEAD.MASK_DIM", 64,
        "MODEL.MaskDINO.NHEADS", 4, "MODEL.MaskDINO.DIM_FEEDFORWARD", 128, "MODEL.SEM_SEG_HEAD.DIM_FEEDFORWARD", 128,
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1, "MODEL.MaskDINO.DEC_LAYERS", 3, "MODEL.MaskDINO.TI_LAYERS", 2,
        "MODEL.MaskDINO.NUM_OBJECT_QUERIES", 20, "MODEL.MaskDINO.FIRST_SELECTED_QUERIES", 40,
        "MODEL.MaskDINO.NUM_GUIDING_TOKENS", 5, "MODEL.MaskDINO.DN_NUM", 20, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5,
        "TEST.DETECTIONS_PER_IMAGE", 30, "MODEL.WEIGHTS", "", "MODEL.MaskDINO.TRAIN_NUM_POINTS", 256,
        *opts,
    )


def tiny_model(*opts, seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_config(*opts))
    # the zero-initialised box heads would hide box refinement: give every weight a value
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("box_embed.layers.2.weight"):
                p.normal_(0, 0.02)
    return model.eval()


def smooth_image(seed, h, w):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (img * 255).round().to(torch.uint8)


# --------------------------------------------------------------------------------------------------
# published checkpoint layout


@needs_reference
def test_r50_model_state_dict_is_the_published_one():
    model = build_model(config())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    published = published_shapes()
    assert len(published) == 717
    converted = convert_authors_state_dict({k: torch.zeros(s) for k, s in published.items()}, keep=ours)
    assert sorted(set(ours) - set(converted)) == []
    assert sorted(set(converted) - set(ours)) == []
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours


@needs_reference
def test_maskdino_keys_are_the_dimaskdino_keys_without_di_and_bato():
    model = build_model(config("maskdino_baseline/maskdino_r50_4scale_bs16_12ep.yaml"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    published = {k: s for k, s in published_shapes().items() if not k.startswith(DI_KEYS + BATO_KEYS)}
    # MaskDINO registers the class and mask heads only on the predictor, not on its decoder
    published = {k: s for k, s in published.items()
                 if not k.startswith(("sem_seg_head.predictor.decoder.class_embed",
                                      "sem_seg_head.predictor.decoder.mask_embed"))}
    converted = convert_authors_state_dict({k: torch.zeros(s) for k, s in published.items()}, keep=ours)
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert not any("di_module" in k or "bato" in k for k in ours)


@pytest.mark.parametrize("di, bato", [(True, True), (True, False), (False, True), (False, False)])
def test_switches_change_the_module_set(di, bato):
    model = tiny_model("MODEL.MaskDINO.DI_ENABLED", di, "MODEL.MaskDINO.BATO_ENABLED", bato)
    predictor = model.sem_seg_head.predictor
    keys = model.state_dict().keys()
    assert (predictor.di_module is not None) == di
    assert (predictor.bato is not None) == bato
    assert any(".di_module." in k for k in keys) == di
    assert any(".bato." in k for k in keys) == bato
    # the first selection keeps FIRST_SELECTED_QUERIES tokens for DI, NUM_OBJECT_QUERIES without
    assert predictor.query_selection.num_selected == (40 if di else 20)


def test_maskdino_decoder_name_builds_plain_maskdino():
    model = tiny_model("MODEL.MaskDINO.TRANSFORMER_DECODER_NAME", "MaskDINODecoder")
    assert model.sem_seg_head.predictor.di_module is None and model.sem_seg_head.predictor.bato is None


def test_meta_architecture_names():
    assert type(build_model(tiny_config())).__name__ == "DIMaskDINO"
    assert type(build_model(tiny_config("MODEL.META_ARCHITECTURE", "DIMaskDINO"))).__name__ == "DIMaskDINO"


# --------------------------------------------------------------------------------------------------
# module contracts


def test_anchor_boxes_by_hand():
    anchors, valid = encoder_anchor_boxes(torch.tensor([[2, 2], [1, 4]]), "cpu")
    assert anchors.shape == (8, 4)
    first = anchors[0].sigmoid()
    assert torch.allclose(first, torch.tensor([0.25, 0.25, 0.05, 0.05]), atol=1e-6)
    assert torch.allclose(anchors[4].sigmoid(), torch.tensor([0.125, 0.5, 0.1, 0.1]), atol=1e-6)  # level 1: 0.05 * 2
    assert valid.all()
    # border anchors of a fine grid fall outside (0.01, 0.99): +inf box
    anchors, valid = encoder_anchor_boxes(torch.tensor([[1, 64]]), "cpu")
    assert not valid[0] and not valid[63] and valid[1:63].all()
    assert torch.isinf(anchors[0]).all() and torch.isfinite(anchors[1]).all()


def test_first_selection_takes_top_tokens_by_best_class_score():
    torch.manual_seed(0)
    selection = TwoStageQuerySelection(hidden_dim=8, num_selected=3)
    class_head = torch.nn.Linear(8, 4)
    box_head = torch.nn.Linear(8, 4)
    memory = torch.randn(2, 12, 8)
    shapes = torch.tensor([[3, 4]])
    out = selection(memory, shapes, class_head, box_head)
    assert out.queries.shape == (2, 3, 8) and out.boxes_unsigmoid.shape == (2, 3, 4)
    anchors, valid = encoder_anchor_boxes(shapes, "cpu")
    tokens = selection.enc_output_norm(selection.enc_output(memory * valid[None, :, None]))
    for b in range(2):
        best = class_head(tokens[b]).max(-1).values
        order = sorted(range(12), key=lambda i: -best[i].item())[:3]
        assert torch.allclose(out.queries[b], tokens[b, order])
        assert torch.allclose(out.boxes_unsigmoid[b], box_head(tokens[b, order]) + anchors[order])


def test_first_selection_needs_enough_tokens():
    selection = TwoStageQuerySelection(hidden_dim=8, num_selected=30)
    with pytest.raises(ValueError, match="FIRST_SELECTED_QUERIES"):
        selection(torch.randn(1, 12, 8), torch.tensor([[3, 4]]), torch.nn.Linear(8, 2), torch.nn.Linear(8, 4))


def test_denoising_attention_mask_against_its_definition():
    groups, pad, queries = 3, 2, 4
    mask = denoising_attention_mask(groups, pad, queries)
    size = groups * pad + queries
    for i in range(size):
        for j in range(size):
            i_dn, j_dn = i < groups * pad, j < groups * pad
            if not i_dn:
                blocked = j_dn  # matching queries never see denoising queries
            else:
                blocked = j_dn and i // pad != j // pad  # groups do not see each other
            assert mask[i, j].item() == blocked, (i, j)


def test_denoising_queries_layout_without_noise():
    torch.manual_seed(0)
    generator = DenoisingQueryGenerator(num_classes=5, hidden_dim=6, dn_num=7, noise_scale=0.0)
    targets = [
        {"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.4]])},
        {"labels": torch.tensor([2, 0, 3]), "boxes": torch.rand(3, 4) * 0.5 + 0.25},
    ]
    dn = generator(targets, num_queries=10)
    assert (dn.single_pad, dn.num_groups, dn.pad_size) == (3, 2, 6)  # 7 // 3 groups of 3 slots
    assert dn.content.shape == (2, 6, 6) and dn.attn_mask.shape == (16, 16)
    for image, target in enumerate(targets):
        n = len(target["labels"])
        for g in range(2):
            for j in range(3):
                slot = g * 3 + j
                if j < n:
                    assert torch.equal(dn.content[image, slot], generator.label_enc.weight[target["labels"][j]])
                    assert torch.allclose(dn.boxes_unsigmoid[image, slot].sigmoid(), target["boxes"][j], atol=1e-6)
                else:
                    assert not dn.content[image, slot].any() and not dn.boxes_unsigmoid[image, slot].any()
    assert generator([{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}], 10) is None


def test_denoising_noise_stays_in_range():
    torch.manual_seed(0)
    generator = DenoisingQueryGenerator(num_classes=5, hidden_dim=6, dn_num=100, noise_scale=0.4)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    dn = generator([{"labels": torch.tensor([3]), "boxes": boxes}], num_queries=4)
    noised = dn.boxes_unsigmoid[0].sigmoid()
    assert dn.num_groups == 100
    # centres move by at most 0.4 * w/2 (h/2), sizes by at most 0.4 * w (h)
    assert ((noised[:, 0] - 0.5).abs() <= 0.04 + 1e-5).all() and ((noised[:, 1] - 0.5).abs() <= 0.08 + 1e-5).all()
    assert ((noised[:, 2] - 0.2).abs() <= 0.08 + 1e-5).all() and ((noised[:, 3] - 0.4).abs() <= 0.16 + 1e-5).all()
    labels = dn.content[0] @ generator.label_enc.weight.T
    changed = (labels.argmax(-1) != 3).float().mean().item()
    assert 0.05 < changed < 0.4  # about noise_scale / 2 * (4/5) of the labels change


def training_targets(h=128, w=160):
    boxes = torch.tensor([[10.0, 20.0, 90.0, 100.0], [40.0, 30.0, 150.0, 120.0]])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    return Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 3]), gt_masks=masks)


def head_training_outputs(model, image, instances):
    from detectron2.structures import ImageList

    images = ImageList.from_tensors(model.normalized_images([{"image": image}]), model.size_divisibility)
    targets = model.prepare_targets([instances], images)
    features = model.backbone(images.tensor)
    return model.sem_seg_head(features, targets=targets), targets


def test_training_outputs_follow_the_criterion_contract():
    model = tiny_model().train()
    outputs, targets = head_training_outputs(model, smooth_image(0, 128, 160), training_targets())
    b, q, k, q1 = 1, 20, 5, 40
    assert outputs.final.logits.shape == (b, q, k)
    assert outputs.final.boxes.shape == (b, q, 4)
    assert outputs.final.masks.shape == (b, q, 32, 40)
    assert len(outputs.aux) == 3  # the initial prediction, decoder layers 0 and 1
    for aux in outputs.aux:
        assert aux.logits.shape == (b, q, k) and aux.masks.shape == (b, q, 32, 40)
    assert outputs.interm.logits.shape == (b, q1, k)
    assert outputs.interm.masks.shape == (b, q1, 32, 40)
    assert len(outputs.ti) == 2
    for ti in outputs.ti:
        assert ti.masks is None
        assert ti.logits.shape == (b, q1, k) and ti.boxes.shape == (b, q1, 4)
    dn = outputs.denoising
    assert dn.single_pad == 2 and dn.num_groups == 10 and dn.pad_size == 20
    assert dn.final.logits.shape == (b, 20, k)
    assert len(dn.aux) == 3
    # targets: boxes normalised by the (unpadded) image size, masks padded to the batch tensor
    assert torch.allclose(targets[0]["boxes"][0], torch.tensor([50 / 160, 60 / 128, 80 / 160, 80 / 128]))
    assert targets[0]["masks"].shape == (2, 128, 160)


def test_bato_sees_only_the_matching_queries():
    model = tiny_model().train()
    seen = {}
    bato = model.sem_seg_head.predictor.bato
    select = bato.select_guiding_tokens

    def record_selection(queries, *args):
        seen["queries"] = queries.shape
        return select(queries, *args)

    bato.select_guiding_tokens = record_selection
    bato.register_forward_hook(lambda module, args, result: seen.update(index=result.guide_index))
    outputs, _ = head_training_outputs(model, smooth_image(0, 128, 160), training_targets())
    assert outputs.denoising.pad_size == 20
    assert seen["queries"] == (1, 20, 64)  # 20 matching queries, not the 20 + 20 with denoising ones
    assert seen["index"].shape == (1, 5) and (seen["index"] < 20).all()


def test_decoder_layers_after_bato_use_the_updated_mask_features():
    model = tiny_model().train()
    predictor = model.sem_seg_head.predictor
    captured = {}
    predictor.bato.register_forward_hook(lambda m, a, r: captured.update(updated=r.mask_features, original=a[-1]))
    predictor.decoder.register_forward_hook(lambda m, a, r: captured.update(hidden=r.hidden_states))
    outputs, _ = head_training_outputs(model, smooth_image(0, 128, 160), training_targets())
    pad = outputs.denoising.pad_size

    def masks(hidden, features):
        embedding = predictor.mask_embed(predictor.decoder_norm(hidden))
        return torch.einsum("bqc,bchw->bqhw", embedding, features)[:, pad:]

    per_layer = [a.masks for a in outputs.aux[1:]] + [outputs.final.masks]
    assert torch.allclose(per_layer[0], masks(captured["hidden"][0], captured["original"]), atol=1e-4)
    for i in (1, 2):
        assert torch.allclose(per_layer[i], masks(captured["hidden"][i], captured["updated"]), atol=1e-4)
        assert not torch.allclose(per_layer[i], masks(captured["hidden"][i], captured["original"]), atol=1e-2)


def test_training_step_reaches_every_module():
    model = tiny_model().train()
    inputs = [{"image": smooth_image(0, 128, 160), "instances": training_targets()}]
    losses = model(inputs)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for part in ("di_module.layers.0", "bato.multihead_attn", "bato.mask_output_conv", "decoder.layers.2",
                 "query_selection.enc_output", "pixel_decoder.encoder.layers.0", "backbone.res5"):
        grads = [p.grad for n, p in model.named_parameters() if part in n and p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), part


# --------------------------------------------------------------------------------------------------
# inference


def test_inference_returns_instances_in_the_requested_size():
    model = tiny_model()
    with torch.no_grad():
        out = model([{"image": smooth_image(1, 100, 150), "height": 200, "width": 300}])
    inst = out[0]["instances"]
    assert inst.image_size == (200, 300)
    assert len(inst) == 30
    assert set(inst.get_fields()) == {"pred_masks", "pred_boxes", "scores", "pred_classes"}
    assert inst.pred_masks.shape == (30, 200, 300)
    assert set(inst.pred_masks.unique().tolist()) <= {0.0, 1.0}
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    assert inst.pred_classes.dtype == torch.int64 and (inst.pred_classes < 5).all()
    # boxes are relative to the padded input (128 x 160), rescaled by output / image size
    assert inst.pred_boxes.tensor.shape == (30, 4)


def test_instance_scores_are_class_times_mask_quality():
    model = tiny_model()
    x = {"image": smooth_image(2, 128, 160)}
    with torch.no_grad():
        inst = model([x])[0]["instances"]
        from detectron2.structures import ImageList

        images = ImageList.from_tensors(model.normalized_images([x]), 32)
        outputs = model.sem_seg_head(model.backbone(images.tensor)).final
    probs = outputs.logits[0].sigmoid()  # (Q, K)
    masks = torch.nn.functional.interpolate(outputs.masks, size=(128, 160), mode="bilinear",
                                            align_corners=False)[0]
    top = probs.flatten().topk(30)
    expected = {}
    for value, index in zip(top.values.tolist(), top.indices.tolist()):
        q, c = divmod(index, 5)
        inside = masks[q] > 0
        quality = (masks[q].sigmoid() * inside).sum() / (inside.sum() + 1e-6)
        expected[(q, c)] = value * quality.item()
    got = sorted(inst.scores.tolist(), reverse=True)
    assert got == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-5)


def test_eval_is_deterministic():
    model = tiny_model()
    x = [{"image": smooth_image(3, 128, 160)}]
    with torch.no_grad():
        a = model(x)[0]["instances"]
        b = model(x)[0]["instances"]
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_masks, b.pred_masks)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_a_batch_gives_the_instances_of_each_image_alone():
    model = tiny_model()
    # the first two share a padded size (128 x 160), the third does not
    inputs = [{"image": smooth_image(4, 128, 160)}, {"image": smooth_image(5, 100, 150), "height": 90, "width": 140},
              {"image": smooth_image(6, 96, 96)}]
    with torch.no_grad():
        batched = model(inputs)
        single = [model([x])[0] for x in inputs]
    for got, expected in zip(batched, single):
        g, e = got["instances"], expected["instances"]
        assert g.image_size == e.image_size
        assert torch.equal(g.pred_classes, e.pred_classes)
        assert torch.allclose(g.scores, e.scores, atol=1e-5)
        assert torch.allclose(g.pred_boxes.tensor, e.pred_boxes.tensor, atol=1e-3)
        assert (g.pred_masks != e.pred_masks).float().mean() < 1e-3


def test_padding_changes_single_image_outputs():
    """Why batching groups images by padded size: padding is not masked, so it changes the output."""
    from detectron2.structures import ImageList

    model = tiny_model()
    image = {"image": smooth_image(7, 96, 96)}
    larger = {"image": torch.zeros(3, 128, 160, dtype=torch.uint8)}
    with torch.no_grad():
        alone = ImageList.from_tensors(model.normalized_images([image]), 32)
        together = ImageList.from_tensors(model.normalized_images([image, larger]), 32)
        logits_alone = model.sem_seg_head(model.backbone(alone.tensor)).final.logits[0]
        logits_padded = model.sem_seg_head(model.backbone(together.tensor)).final.logits[0]
    assert alone.tensor.shape[-2:] == (96, 96) and together.tensor.shape[-2:] == (128, 160)
    assert not torch.allclose(logits_alone, logits_padded, atol=1e-3)


@pytest.mark.slow
def test_r50_cpu_inference_on_a_real_sized_image():
    torch.manual_seed(0)
    model = build_model(config()).eval()
    with torch.no_grad():
        out = model([{"image": smooth_image(8, 800, 1216), "height": 480, "width": 730}])
    inst = out[0]["instances"]
    assert len(inst) == 100 and inst.image_size == (480, 730)
    assert inst.pred_masks.shape == (100, 480, 730)
    assert torch.isfinite(inst.scores).all() and torch.isfinite(inst.pred_boxes.tensor).all()


def test_prepare_targets_normalises_by_the_image_size():
    model = tiny_model()
    inst = training_targets(100, 150)
    from detectron2.structures import ImageList

    images = ImageList.from_tensors([torch.zeros(3, 100, 150)], 32)
    targets = model.prepare_targets([inst], images)
    expected = box_xyxy_to_cxcywh(inst.gt_boxes.tensor) / torch.tensor([150.0, 100.0, 150.0, 100.0])
    assert torch.allclose(targets[0]["boxes"], expected)
    assert targets[0]["masks"].shape == (2, 128, 160)
    assert not targets[0]["masks"][:, 100:].any() and not targets[0]["masks"][:, :, 150:].any()
    assert targets[0]["labels"].tolist() == [1, 3]


def test_denoising_join_and_split_by_hand():
    """P = 4 denoising queries go first; splitting every stage gives back the two parts."""
    from dimaskdino.modeling.denoising import DenoisingQueries, join_denoising, split_denoising
    from dimaskdino.modeling.outputs import StagePrediction

    dn = DenoisingQueries(content=torch.ones(1, 4, 3), boxes_unsigmoid=torch.full((1, 4, 4), 2.0),
                          attn_mask=denoising_attention_mask(2, 2, 5), num_groups=2, single_pad=2, pad_size=4)
    queries, boxes = join_denoising(dn, torch.zeros(1, 5, 3), torch.zeros(1, 5, 4))
    assert queries.shape == (1, 9, 3) and queries[0, :4].eq(1).all() and queries[0, 4:].eq(0).all()
    assert boxes[0, :4].eq(2).all() and boxes[0, 4:].eq(0).all()
    stage = StagePrediction(torch.arange(9.0).view(1, 9, 1), torch.zeros(1, 9, 4), torch.zeros(1, 9, 2, 2))
    matching, denoised = split_denoising([stage, stage], dn)
    assert [m.logits.flatten().tolist() for m in matching] == [[4.0, 5.0, 6.0, 7.0, 8.0]] * 2
    assert denoised.final.logits.flatten().tolist() == [0.0, 1.0, 2.0, 3.0] and len(denoised.aux) == 1
    assert (denoised.num_groups, denoised.single_pad, denoised.pad_size) == (2, 2, 4)
    assert split_denoising([stage], None) == ([stage], None)
