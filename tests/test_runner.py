"""dimaskdino.engine.runner: one path for yaml and LazyConfig runs; the device check; the optimizer
from plain arguments."""
import os

import pytest
import torch
from torch import nn

import dimaskdino.data  # noqa: F401
import dimaskdino.modeling  # noqa: F401
from dimaskdino.engine import build_optimizer, build_optimizer_from_cfg, check_device
from dimaskdino.engine.runner import LazyRun, YamlRun, load_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML = os.path.join(REPO, "configs/embedded/dimaskdino_r18_embedded.yaml")
LAZY = os.path.join(REPO, "configs/lazy/dimaskdino_r18_embedded.py")


def test_both_config_kinds_give_the_same_run_settings(tmp_path):
    y = load_run(YAML, ["OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"])
    lz = load_run(LAZY, [f"train.output_dir={tmp_path}", "train.device=cpu"])
    assert isinstance(y, YamlRun) and isinstance(lz, LazyRun)
    for name in ("output_dir", "device", "amp", "weights", "seed"):
        assert getattr(y, name) == getattr(lz, name), name
    assert (y.device_key, lz.device_key) == ("MODEL.DEVICE", "train.device")
    assert [name for name, _, _ in y.test_sets()] == [name for name, _, _ in lz.test_sets()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a CUDA device")
def test_device_check_names_the_key():
    with pytest.raises(RuntimeError, match="train.device is 'cuda' but no CUDA device is visible"):
        check_device("cuda", "train.device")
    check_device("cpu", "MODEL.DEVICE")


def _toy():
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model.head = nn.Linear(4, 2)
    return model


def test_plain_arguments_and_yacs_adapter_build_the_same_optimizer():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY = "ADAMW", 1e-3, 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM, cfg.SOLVER.WEIGHT_DECAY_EMBED, cfg.SOLVER.BACKBONE_MULTIPLIER = 0.0, 0.0, 0.1
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    model = _toy()
    a = build_optimizer_from_cfg(cfg, model)
    b = build_optimizer(model, base_lr=1e-3, weight_decay=0.05)
    assert type(a) is type(b)
    groups = lambda o: sorted((g["lr"], g["weight_decay"], len(g["params"])) for g in o.param_groups)  # noqa: E731
    assert groups(a) == groups(b) == [(1e-4, 0.0, 2), (1e-4, 0.05, 2), (1e-3, 0.05, 2)]
    with pytest.raises(TypeError):  # the old (cfg, model) call: keyword arguments only after the model
        build_optimizer(cfg, model)


def test_per_parameter_norm_clipping():
    model = _toy()
    optimizer = build_optimizer(model, optimizer="SGD", base_lr=0.0, weight_decay=0.0, momentum=0.0,
                                clip_gradients={"clip_type": "norm", "clip_value": 0.1})
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    optimizer.step()
    assert all(float(p.grad.norm()) == pytest.approx(0.1, rel=1e-4) for p in model.parameters())
