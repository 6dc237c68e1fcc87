"""An exponential moving average (EMA) of the model's weights, kept during training.

``MODEL_EMA.ENABLED`` / ``MODEL_EMA.DECAY`` (yaml; LazyConfig: ``train.model_ema.enabled`` /
``decay``). After every optimizer step the average moves towards the new weights::

    average <- d * average + (1 - d) * weights,   d = min(DECAY, (1 + n) / (10 + n))

for the n-th update (the ramp lets the first updates follow the weights closely instead of being
dominated by the random initialisation). Every floating-point entry of the state dict is averaged,
BatchNorm statistics included; integer entries (``num_batches_tracked``) are copied.

How the average is used (:class:`EMAHook`): periodic evaluations during training evaluate the
averaged weights; at the end of the last iteration they replace the model's own, so that
``model_final.pth``, the final evaluation and every tool that loads the final checkpoint see the
average. Checkpoints keep the average in the trainer state, and the final one keeps the raw weights
there too: ``--resume`` (after a crash, or with more iterations after the end) puts the raw weights
back and continues both exactly.
"""
import logging
from contextlib import contextmanager
from typing import Dict

import torch
from detectron2.engine import HookBase, hooks
from torch import nn

__all__ = ["EMAHook", "WeightAverage", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _cloned_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A detached copy of the state dict of ``model`` (unwrapped from DDP)."""
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}


class WeightAverage:
    """The running average of a model's state dict (a detached copy, on the model's devices)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL_EMA.DECAY must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.average: Dict[str, torch.Tensor] = {}
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start the average afresh from ``model``'s current weights."""
        self.updates = 0
        self.average = _cloned_state(model)

    def current_decay(self) -> float:
        """The decay of the next update (the ramp towards ``decay``)."""
        return min(self.decay, (1.0 + self.updates + 1) / (10.0 + self.updates + 1))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        floats_avg, floats_new = [], []
        for key, value in unwrap_model(model).state_dict().items():
            kept = self.average[key]
            if kept.is_floating_point():
                floats_avg.append(kept)
                floats_new.append(value.detach())
            else:
                kept.copy_(value)
        if floats_avg:
            # one fused call over all tensors: avg + (1 - decay) * (new - avg)
            torch._foreach_lerp_(floats_avg, floats_new, 1.0 - decay)

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (in place)."""
        unwrap_model(model).load_state_dict(self.average)

    @contextmanager
    def swapped_into(self, model: nn.Module):
        """Within the block ``model`` holds the averaged weights; its own are restored after."""
        module = unwrap_model(model)
        own = _cloned_state(module)
        module.load_state_dict(self.average)
        try:
            yield model
        finally:
            module.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.average) - set(state["average"])
        if missing:
            raise KeyError(f"the checkpointed weight average lacks {len(missing)} entries, e.g. {sorted(missing)[:3]}")
        for key, value in state["average"].items():
            if key in self.average:
                self.average[key].copy_(value)
        self.updates = int(state["updates"])


class EMAHook(HookBase):
    """Updates a :class:`WeightAverage` after every step and puts it into the model after the last.

    Register it before the checkpointer and the evaluation hooks, so that at the last iteration
    they see the averaged weights. Its state is part of the trainer's checkpointed state.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model = model
        self.average = WeightAverage(model, decay)
        self._restored = False
        self._raw_weights = None  # the model's own weights once the average replaced them

    def before_train(self):
        if not self._restored:  # start from the weights training starts from (MODEL.WEIGHTS loaded)
            self.average.reset(self.model)
        self._raw_weights = None
        logger.info(f"Exponential moving average of the weights: decay {self.average.decay}, "
                    f"{self.average.updates} updates so far")

    def after_step(self):
        self.average.update(self.model)
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._raw_weights = _cloned_state(self.model)
            self.average.copy_to(self.model)
            logger.info("Last iteration: the model now holds the averaged weights")

    def state_dict(self) -> dict:
        state = self.average.state_dict()
        if self._raw_weights is not None:
            state["raw_weights"] = self._raw_weights
        return state

    def load_state_dict(self, state: dict) -> None:
        """Called by the checkpointer after it loaded the model: a final checkpoint's model holds
        the average, so its raw weights go back into the model to continue training."""
        self.average.load_state_dict(state)
        if "raw_weights" in state:
            unwrap_model(self.model).load_state_dict(state["raw_weights"])
        self._restored = True


def with_weight_average(hook_list: list, ema_hook: EMAHook, eval_period: int, evaluate) -> list:
    """``hook_list`` with ``ema_hook`` placed before the first checkpointer or evaluation hook and
    every ``EvalHook`` replaced by one that runs ``evaluate()`` on the averaged weights."""

    def evaluate_average():
        with ema_hook.average.swapped_into(ema_hook.model):
            return evaluate()

    out, placed = [], False
    for hook in hook_list:
        if not placed and isinstance(hook, (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)):
            out.append(ema_hook)
            placed = True
        out.append(hooks.EvalHook(eval_period, evaluate_average) if isinstance(hook, hooks.EvalHook) else hook)
    if not placed:
        out.append(ema_hook)
    return out
