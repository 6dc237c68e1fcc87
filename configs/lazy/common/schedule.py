"""
Learning-rate factor schedules: constant with linear warm-up, x0.1 at each step.

The scheduler sees the training progress as a fraction of ``train.max_iter``: overriding
``train.max_iter`` on the command line stretches or shrinks the whole schedule (warm-up and
steps) in proportion.
"""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler


def step_schedule(max_iter: int, steps, warmup_iters: int = 10, warmup_factor: float = 1.0):
    """The lr factor of detectron2's WarmupMultiStepLR (SOLVER.STEPS, WARMUP_ITERS, WARMUP_FACTOR)."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[0.1**k for k in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )
