"""The step learning-rate schedule of the LazyConfig files, with the yaml path's rule.

One rule for both config kinds (detectron2's yaml rule): SOLVER.STEPS / ``steps`` and
SOLVER.WARMUP_ITERS / ``warmup_iters`` are iteration numbers. Overriding the number of iterations
(SOLVER.MAX_ITER or ``train.max_iter``) changes neither; steps at or past the last iteration are
dropped with a warning. To stretch a schedule, override the steps too (SOLVER.STEPS or
``lr_multiplier.steps``).
"""
import logging
from typing import Sequence

from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

__all__ = ["build_step_schedule"]

logger = logging.getLogger(__name__)


def build_step_schedule(
    max_iter: int, steps: Sequence[int], warmup_iters: int = 10, warmup_factor: float = 1.0, gamma: float = 0.1
) -> WarmupParamScheduler:
    """The LR factor of detectron2's WarmupMultiStepLR as a function of the training progress
    (iteration / ``max_iter``): linear warm-up over ``warmup_iters`` iterations, then x ``gamma``
    at each of ``steps``."""
    kept = [int(s) for s in steps if s < max_iter]
    if len(kept) != len(steps):
        logger.warning(f"LR steps {list(steps)} include iterations at or past max_iter={max_iter}; "
                       f"they are ignored (steps used: {kept}).")
    return WarmupParamScheduler(
        MultiStepParamScheduler(values=[gamma**k for k in range(len(kept) + 1)], milestones=kept,
                                num_updates=max_iter),
        warmup_factor,
        min(warmup_iters / max_iter, 1.0),
        "linear",
    )
