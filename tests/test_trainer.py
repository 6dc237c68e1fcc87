"""DIMaskDINOTrainer: optimizer parameter groups, gradient clipping, the non-finite loss stop and
resuming, with a tiny stand-in model trained on a few synthetic images through the LSJ mapper."""
import math

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BoxMode
from torch import nn

from dimaskdino.engine import DIMaskDINOTrainer, build_optimizer_from_cfg, check_losses_finite


class _ToyModel(nn.Module):
    """Modules of every kind the optimizer treats differently."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.ModuleDict(
            {
                "fc": nn.Linear(4, 2),
                "norm": nn.LayerNorm(2),
                "gn": nn.GroupNorm(2, 4),
                "embed": nn.Embedding(5, 2),
            }
        )
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _solver_cfg(optimizer="ADAMW", clip_type="full_model", clip_value=0.01):
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    return cfg


def _hyperparams(optimizer):
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_param_groups_backbone_lr_and_no_decay_on_norms_and_embeddings():
    model = _ToyModel()
    optimizer = build_optimizer_from_cfg(_solver_cfg(), model)
    got = _hyperparams(optimizer)
    expected = {
        model.backbone[0].weight: (1e-5, 0.05),
        model.backbone[0].bias: (1e-5, 0.05),
        model.backbone[1].weight: (1e-5, 0.0),  # backbone norm: lr x 0.1 and no decay
        model.backbone[1].bias: (1e-5, 0.0),
        model.head["fc"].weight: (1e-4, 0.05),
        model.head["fc"].bias: (1e-4, 0.05),
        model.head["norm"].weight: (1e-4, 0.0),
        model.head["norm"].bias: (1e-4, 0.0),
        model.head["gn"].weight: (1e-4, 0.0),
        model.head["gn"].bias: (1e-4, 0.0),
        model.head["embed"].weight: (1e-4, 0.0),
    }
    assert len(got) == len(expected)  # every trainable parameter once, frozen ones not at all
    for param, (lr, decay) in expected.items():
        assert got[id(param)][0] == pytest.approx(lr) and got[id(param)][1] == decay
    assert isinstance(optimizer, torch.optim.AdamW)
    assert len(optimizer.param_groups) == 4  # merged by (lr, weight_decay)


def _gradients(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    return params


def test_full_model_clipping_scales_all_gradients_together():
    model = _ToyModel()
    cfg = _solver_cfg(optimizer="SGD", clip_value=0.01)
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    optimizer = build_optimizer_from_cfg(cfg, model)
    params = _gradients(model)
    before = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    total_norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    optimizer.step()
    # Plain SGD with lr 1: the update is the gradient scaled by 0.01 / (total norm). The update
    # (~1e-3) is read back as a difference of float32 parameters of size ~1, exact to ~1e-7 only,
    # so compare at 1e-6: unclipped or per-parameter clipping would be off by far more.
    for p, p0, g in zip(params, before, grads):
        assert torch.allclose(p0 - p.detach(), g * 0.01 / total_norm, atol=1e-6, rtol=0)


def test_full_model_clipping_with_adamw_and_per_parameter_clipping():
    model = _ToyModel()
    optimizer = build_optimizer_from_cfg(_solver_cfg(clip_value=0.01), model)
    params = _gradients(model)
    optimizer.step()
    clipped_norm = math.sqrt(sum(float((p.grad**2).sum()) for p in params))
    assert clipped_norm == pytest.approx(0.01, rel=1e-4)

    # Other clip types are detectron2's per-parameter clipping.
    model = _ToyModel()
    optimizer = build_optimizer_from_cfg(_solver_cfg(clip_type="value", clip_value=0.5), model)
    params = _gradients(model)
    optimizer.step()
    assert max(float(p.grad.abs().max()) for p in params) <= 0.5


def test_bad_optimizer_name_is_an_error():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer_from_cfg(_solver_cfg(optimizer="LAMB"), _ToyModel())


def test_check_losses_finite_names_terms_and_iteration():
    check_losses_finite({"loss_ce": torch.tensor(1.0)}, 3)
    losses = {
        "loss_ce": torch.tensor(1.0),
        "loss_giou_2": torch.tensor(float("nan")),
        "loss_dice": torch.tensor(float("inf")),
    }
    with pytest.raises(FloatingPointError, match=r"iteration 7: loss_giou_2=nan, loss_dice=inf"):
        check_losses_finite(losses, 7)


# ---------------------------------------------------------------- end to end with a toy model
@META_ARCH_REGISTRY.register()
class _TrainerTestModel(nn.Module):
    """Regresses the mean colour of the image and the number of instances; returns NaN for
    "loss_count" at iteration NAN_AT."""

    NAN_AT = -1

    def __init__(self, cfg):
        super().__init__()
        self.backbone = nn.Conv2d(3, 2, 1)
        self.norm = nn.GroupNorm(1, 2)
        self.head = nn.Linear(2, 1)
        self.register_buffer("device_anchor", torch.zeros(()), persistent=False)
        self.calls = 0

    def forward(self, batched_inputs):
        images = torch.stack([x["image"].float() / 255 for x in batched_inputs])
        features = self.norm(self.backbone(images)).mean((2, 3))
        counts = torch.tensor([float(len(x["instances"])) for x in batched_inputs])
        count_loss = (self.head(features).squeeze(1) - counts).pow(2).mean()
        if self.calls == self.NAN_AT:
            count_loss = count_loss * float("nan")
        self.calls += 1
        return {"loss_colour": self.backbone(images).mean().pow(2), "loss_count": count_loss}


def _register_images(tmp_path, name="_trainer_test_train", count=4):
    records = []
    for i in range(count):
        image = np.full((32, 32, 3), 40 * i, np.uint8)
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), image)
        square = [4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]
        records.append(
            {
                "file_name": str(path), "height": 32, "width": 32, "image_id": i,
                "annotations": [
                    {"bbox": [4.0, 4.0, 16.0, 16.0], "bbox_mode": BoxMode.XYWH_ABS,
                     "category_id": 0, "segmentation": [square]}
                ],
            }
        )
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).thing_classes = ["square"]
    return name


def _trainer_cfg(tmp_path, max_iter):
    cfg = _solver_cfg()
    cfg.MODEL.META_ARCHITECTURE = "_TrainerTestModel"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.DATASETS.TRAIN = (_register_images(tmp_path),)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.DATASET_MAPPER_NAME = "coco_instance_lsj"
    cfg.INPUT.IMAGE_SIZE = 32
    cfg.INPUT.MIN_SCALE = 0.8
    cfg.INPUT.MAX_SCALE = 1.2
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = (4,)
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.AMP.ENABLED = False
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    return cfg


def test_trainer_trains_checkpoints_and_resumes(tmp_path):
    _TrainerTestModel.NAN_AT = -1
    trainer = DIMaskDINOTrainer(_trainer_cfg(tmp_path, max_iter=3))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 3
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert (tmp_path / "output" / "model_final.pth").exists()
    assert {round(g["lr"], 12) for g in trainer.optimizer.param_groups} == {1e-5, 1e-4}

    resumed = DIMaskDINOTrainer(_trainer_cfg(tmp_path, max_iter=6))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # AdamW's moments come back too (detectron2 v0.6 alone would restart them): 3 steps taken.
    adam_state = resumed.optimizer.state_dict()["state"]
    assert adam_state and all(int(s["step"]) == 3 for s in adam_state.values())
    resumed.train()
    assert resumed.iter == 6
    # Past SOLVER.STEPS=(4,) the learning rate is multiplied by GAMMA=0.1.
    assert {round(g["lr"], 12) for g in resumed.optimizer.param_groups} == {1e-6, 1e-5}


def test_trainer_stops_on_nan_loss_naming_term_and_iteration(tmp_path):
    _TrainerTestModel.NAN_AT = 1
    try:
        trainer = DIMaskDINOTrainer(_trainer_cfg(tmp_path, max_iter=5))
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        with pytest.raises(FloatingPointError, match=r"iteration 1: loss_count=nan"):
            trainer.train()
        # The first step updated the weights; the NaN step did not reach the optimizer.
        after = trainer.model.state_dict()
        assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
        assert not torch.equal(before["backbone.weight"], after["backbone.weight"])
    finally:
        _TrainerTestModel.NAN_AT = -1


def test_amp_on_cpu_trains_under_bfloat16_autocast(tmp_path):
    """SOLVER.AMP.ENABLED on the CPU: detectron2's SimpleTrainer (its AMPTrainer needs CUDA) with
    the forward pass under bfloat16 autocast; the config still says AMP; the weights stay float32."""
    from detectron2.engine import AMPTrainer

    _TrainerTestModel.NAN_AT = -1
    cfg = _trainer_cfg(tmp_path, max_iter=2)
    cfg.SOLVER.AMP.ENABLED = True
    trainer = DIMaskDINOTrainer(cfg)
    assert not isinstance(trainer._trainer, AMPTrainer) and trainer.cfg.SOLVER.AMP.ENABLED
    seen = []
    trainer.model.backbone.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 2 and seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_build_evaluator_delegates_to_the_project_evaluator(tmp_path, monkeypatch):
    import dimaskdino.evaluation as evaluation

    calls = []
    def fake_build_evaluator(cfg, name, folder):
        calls.append((name, folder))
        return "evaluator"

    monkeypatch.setattr(evaluation, "build_evaluator", fake_build_evaluator)
    cfg = _trainer_cfg(tmp_path, max_iter=1)
    assert DIMaskDINOTrainer.build_evaluator(cfg, "some_dataset") == "evaluator"
    assert calls == [("some_dataset", str(tmp_path / "output" / "inference"))]
