"""A per-term check that every loss is finite, hooked onto the model of detectron2's training loops."""
import weakref
from typing import Mapping

import torch
from detectron2.engine import TrainerBase
from torch import nn

__all__ = ["add_finite_loss_check", "check_losses_finite"]


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


def add_finite_loss_check(trainer: TrainerBase, model: nn.Module):
    """Stop training at the first non-finite loss term, naming it and ``trainer.iter``.

    A forward hook on ``model``: in training mode its loss dict is checked right after the forward
    pass, before the backward pass and the optimizer step, on every worker. detectron2's inner loops
    (SimpleTrainer, AMPTrainer) are used unchanged.

    Returns:
        the hook's handle (``.remove()`` undoes it)
    """
    trainer_ref = weakref.ref(trainer)

    def check(module, inputs, output):
        if module.training and isinstance(output, Mapping):
            owner = trainer_ref()
            check_losses_finite(output, owner.iter if owner is not None else -1)

    return model.register_forward_hook(check)
