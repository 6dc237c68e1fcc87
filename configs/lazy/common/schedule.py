"""
Learning-rate factor schedules: constant with linear warm-up, x0.1 at each step.

Steps and warm-up are iteration numbers, as SOLVER.STEPS / WARMUP_ITERS in the yaml configs:
overriding ``train.max_iter`` does not move them (steps past the end are dropped with a warning).
To move the steps as well, override ``lr_multiplier.steps`` (e.g. ``lr_multiplier.steps=[90]``).
"""
from detectron2.config import LazyCall as L

from dimaskdino.engine.lr_schedule import build_step_schedule


def step_schedule(steps, warmup_iters: int = 10, warmup_factor: float = 1.0, max_iter="${train.max_iter}"):
    """The lr factor of detectron2's WarmupMultiStepLR (SOLVER.STEPS, WARMUP_ITERS, WARMUP_FACTOR);
    ``max_iter`` follows ``train.max_iter``, overrides included."""
    return L(build_step_schedule)(
        max_iter=max_iter, steps=list(steps), warmup_iters=warmup_iters, warmup_factor=warmup_factor
    )
