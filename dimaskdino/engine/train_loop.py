"""detectron2's inner training loops with a per-term check that every loss is finite."""
from typing import Mapping

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

__all__ = ["check_losses_finite", "FiniteLossSimpleTrainer", "FiniteLossAMPTrainer"]


def check_losses_finite(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
    """Raise FloatingPointError naming the iteration and every loss term that is NaN or inf."""
    if not loss_dict:
        return
    names = list(loss_dict)
    values = torch.stack([loss_dict[name].detach().float().reshape(()) for name in names])
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = [f"{name}={value:g}" for name, value, ok in zip(names, values.tolist(), finite.tolist()) if not ok]
    raise FloatingPointError(
        f"Loss became NaN or infinite at iteration {iteration}: {', '.join(bad)}. Training stopped "
        "before the optimizer step; lower SOLVER.BASE_LR or check the data of this iteration."
    )


class _FiniteLossCheck:
    """Checks the losses after the backward pass and before the optimizer step, on every worker.

    It hooks into ``_write_metrics``, which detectron2's loops call exactly there.
    """

    def _write_metrics(self, loss_dict, data_time, *args, **kwargs):
        check_losses_finite(loss_dict, self.iter)
        super()._write_metrics(loss_dict, data_time, *args, **kwargs)


class FiniteLossSimpleTrainer(_FiniteLossCheck, SimpleTrainer):
    """detectron2's SimpleTrainer that stops on the first non-finite loss term."""


class FiniteLossAMPTrainer(_FiniteLossCheck, AMPTrainer):
    """detectron2's AMPTrainer (mixed precision) that stops on the first non-finite loss term."""
