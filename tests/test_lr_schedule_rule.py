"""One learning-rate rule for both config kinds: steps and warm-up are iteration numbers, so
overriding the iteration count gives the same LR at every iteration in yaml and LazyConfig."""
import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.solver import LRMultiplier

from dimaskdino.engine import DIMaskDINOTrainer
from dimaskdino.utils.config_files import load_lazy_config, load_yaml_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML = os.path.join(REPO, "configs", "embedded", "dimaskdino_r18_embedded.yaml")
LAZY = os.path.join(REPO, "configs", "lazy", "dimaskdino_r18_embedded.py")


def _lrs(scheduler, optimizer, iterations):
    lrs = []
    for _ in range(iterations):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize("max_iter", [100, 900, 1100])
def test_max_iter_override_gives_the_same_lr_in_yaml_and_lazy(max_iter):
    yaml_cfg = load_yaml_config(YAML, ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.BASE_LR", "1.0"])
    optimizer = _optimizer()
    yaml_lrs = _lrs(DIMaskDINOTrainer.build_lr_scheduler(yaml_cfg, optimizer), optimizer, max_iter)

    lazy_cfg = load_lazy_config(LAZY, [f"train.max_iter={max_iter}"])
    optimizer = _optimizer()
    lazy_lrs = _lrs(LRMultiplier(optimizer, instantiate(lazy_cfg.lr_multiplier), max_iter), optimizer, max_iter)
    assert lazy_lrs == pytest.approx(yaml_lrs, rel=1e-9, abs=1e-12)
    # the rule by hand (WARMUP_FACTOR is 1.0: no warm-up ramp): x0.1 from the configured step
    # iteration (not moved by the MAX_ITER override), if reached
    (step,) = yaml_cfg.SOLVER.STEPS
    assert 900 < step < 1100  # the overrides end before and after it
    assert lazy_lrs[:min(max_iter, step)] == pytest.approx([1.0] * min(max_iter, step))
    if max_iter > step:
        assert lazy_lrs[step:] == pytest.approx([0.1] * (max_iter - step))


def test_lazy_steps_can_be_moved_with_an_override():
    cfg = load_lazy_config(LAZY, ["train.max_iter=100", "lr_multiplier.steps=[90]"])
    optimizer = _optimizer()
    lrs = _lrs(LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), 100), optimizer, 100)
    assert lrs[89] == pytest.approx(1.0) and lrs[90] == pytest.approx(0.1)
