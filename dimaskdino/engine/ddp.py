"""DistributedDataParallel for the trainers: on any device, with BatchNorm statistics kept equal
on every rank."""
import contextlib
from typing import Iterator, List

import detectron2.engine.defaults as detectron2_defaults
import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch import nn

__all__ = [
    "AverageBatchNormStatistics",
    "average_batchnorm_statistics",
    "create_ddp_model",
    "ddp_on_any_device",
    "with_statistics_hook",
]

_DETECTRON2_CREATE_DDP_MODEL = detectron2_defaults.create_ddp_model


def create_ddp_model(model: nn.Module, **ddp_kwargs) -> nn.Module:
    """detectron2's ``create_ddp_model`` (the model itself in a single process) on any device: a
    model on the CPU gets ``device_ids=None``, as DistributedDataParallel requires there.

    ``find_unused_parameters`` stays False (no extra graph traversal per step): every parameter
    takes part in every loss, even on a rank whose images have no instance and hence no
    denoising query (the predictor then adds ``0 * label_enc`` to its logits), so every rank
    reduces the same gradient buckets.
    """
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and "device_ids" not in ddp_kwargs:
        ddp_kwargs["device_ids"] = None
    return _DETECTRON2_CREATE_DDP_MODEL(model, **ddp_kwargs)


@contextlib.contextmanager
def ddp_on_any_device() -> Iterator[None]:
    """Within it, ``DefaultTrainer.__init__`` wraps the model with :func:`create_ddp_model`:
    detectron2's own always passes ``device_ids=[local rank]``, which DDP rejects for a model on
    the CPU. (DefaultTrainer has no hook for this; it looks the function up in its module.)"""
    detectron2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        detectron2_defaults.create_ddp_model = _DETECTRON2_CREATE_DDP_MODEL


def _running_statistics(model: nn.Module) -> List[torch.Tensor]:
    """Running mean and variance of every BatchNorm that keeps them per rank (not SyncBatchNorm)."""
    stats = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
            stats += [t for t in (module.running_mean, module.running_var) if t is not None]
    return stats


@torch.no_grad()
def average_batchnorm_statistics(model: nn.Module) -> None:
    """Replace every rank's BatchNorm running statistics by their mean over the ranks.

    The trainers wrap the model with ``broadcast_buffers=False``, so plain BatchNorm (e.g. the
    embedded config's ResNet-18) updates its statistics from each rank's own images: without
    this, rank 1 would evaluate with other statistics than the ones rank 0 saves.
    """
    stats = _running_statistics(model)
    if comm.get_world_size() == 1 or not stats:
        return
    flat = torch.cat([t.flatten() for t in stats])
    dist.all_reduce(flat)
    flat /= comm.get_world_size()
    for tensor, averaged in zip(stats, flat.split([t.numel() for t in stats])):
        tensor.copy_(averaged.view_as(tensor))


class AverageBatchNormStatistics(HookBase):
    """After every step, before the checkpointer and the evaluation hooks: the ranks' BatchNorm
    running statistics are averaged, so what is saved is what every rank evaluates."""

    def __init__(self, model: nn.Module):
        self._model = model

    def after_step(self):
        average_batchnorm_statistics(self._model)


def with_statistics_hook(hooks: list, model: nn.Module) -> list:
    """``hooks`` with :class:`AverageBatchNormStatistics` first (when several ranks train)."""
    if comm.get_world_size() == 1:
        return hooks
    return [AverageBatchNormStatistics(model)] + list(hooks)
