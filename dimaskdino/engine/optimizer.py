"""Optimizer of DI-MaskDINO: AdamW (or SGD) with a backbone learning-rate multiplier, no weight
decay on normalisation layers and embeddings, and gradient clipping over the whole model."""
import itertools
import logging
from typing import Any, Dict, List, Type

import torch
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

__all__ = ["build_optimizer", "get_param_groups", "NORM_MODULE_TYPES"]

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Swin parameters that act like embeddings (no weight decay, as the authors).
EMBEDDING_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def _is_backbone(module_name: str) -> bool:
    return "backbone" in module_name.split(".")


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    backbone_multiplier: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups: one per distinct (lr, weight_decay), each trainable parameter
    in exactly one group.

    * parameters under a module named "backbone": lr = base_lr * backbone_multiplier;
    * parameters of normalisation layers: weight_decay_norm;
    * parameters of ``nn.Embedding`` and Swin's position tables: weight_decay_embed.
    """
    groups = []
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, decay = base_lr, weight_decay
            if _is_backbone(module_name):
                lr = base_lr * backbone_multiplier
            if isinstance(module, NORM_MODULE_TYPES):
                decay = weight_decay_norm
            if isinstance(module, nn.Embedding) or param_name in EMBEDDING_PARAM_NAMES:
                decay = weight_decay_embed
            groups.append({"params": [param], "lr": lr, "weight_decay": decay})
    return reduce_param_groups(groups)


def _with_full_model_clipping(optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float):
    """A subclass of ``optimizer_type`` whose step first clips the gradient norm of all its
    parameters together."""

    class FullModelGradientClipping(optimizer_type):
        def step(self, closure=None):
            params = itertools.chain.from_iterable(group["params"] for group in self.param_groups)
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = f"{optimizer_type.__name__}WithFullModelGradientClipping"
    return FullModelGradientClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer from SOLVER.{OPTIMIZER, BASE_LR, WEIGHT_DECAY, WEIGHT_DECAY_NORM,
    WEIGHT_DECAY_EMBED, BACKBONE_MULTIPLIER, MOMENTUM, CLIP_GRADIENTS}.

    CLIP_GRADIENTS with CLIP_TYPE "full_model" clips the norm of all gradients together to
    CLIP_VALUE; other clip types are detectron2's per-parameter clipping.
    """
    solver = cfg.SOLVER
    param_groups = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
    )
    name = solver.OPTIMIZER
    if name == "ADAMW":
        # On the CPU torch's default AdamW loops over the tensors one by one; its fused kernel is
        # several times faster. (On CUDA the default multi-tensor path is kept, as the authors'.)
        on_cpu = all(p.device.type == "cpu" for group in param_groups for p in group["params"])
        optimizer_type, kwargs = torch.optim.AdamW, ({"fused": True} if on_cpu else {})
    elif name == "SGD":
        optimizer_type, kwargs = torch.optim.SGD, {"momentum": solver.MOMENTUM, "nesterov": solver.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {name!r}")

    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        if clip.CLIP_VALUE <= 0:
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be positive, got {clip.CLIP_VALUE}")
        optimizer_type = _with_full_model_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    optimizer = optimizer_type(param_groups, lr=solver.BASE_LR, **kwargs)
    logger.info(f"Optimizer {type(optimizer).__name__} with {len(param_groups)} parameter groups")
    return optimizer
