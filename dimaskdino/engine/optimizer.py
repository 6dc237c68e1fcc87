"""Optimizer of DI-MaskDINO: AdamW (or SGD) with a backbone learning-rate multiplier, no weight
decay on normalisation layers and embeddings, and gradient clipping over the whole model.

:func:`build_optimizer` takes plain arguments (LazyConfig files call it directly);
:func:`build_optimizer_from_cfg` reads them from a yacs config's SOLVER keys.
"""
import itertools
import logging
from typing import Any, Dict, List, Optional, Type

import torch
from detectron2.solver.build import reduce_param_groups
from torch import nn

__all__ = ["build_optimizer", "build_optimizer_from_cfg", "get_param_groups", "NORM_MODULE_TYPES"]

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


CLIP_TYPES = ("full_model", "norm", "value")


def _with_gradient_clipping(optimizer_type: Type[torch.optim.Optimizer], clip_type: str, clip_value: float,
                            norm_type: float):
    """A subclass of ``optimizer_type`` whose step first clips the gradients: "full_model" clips the
    norm of all its parameters' gradients together, "norm" each parameter's gradient norm on its own,
    "value" every gradient entry to [-clip_value, clip_value]."""

    def clip(params):
        if clip_type == "full_model":
            torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type=norm_type)
        elif clip_type == "norm":
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, clip_value, norm_type=norm_type)
        else:
            torch.nn.utils.clip_grad_value_(params, clip_value)

    class GradientClipping(optimizer_type):
        def step(self, closure=None):
            clip(list(itertools.chain.from_iterable(group["params"] for group in self.param_groups)))
            return super().step(closure=closure)

    GradientClipping.__name__ = f"{optimizer_type.__name__}With{clip_type.title().replace('_', '')}GradientClipping"
    return GradientClipping


def _optimizer_type(optimizer: str, param_groups, momentum: float, nesterov: bool):
    if optimizer == "ADAMW":
        # On the CPU torch's default AdamW loops over the tensors one by one; its fused kernel is
        # several times faster. (On CUDA the default multi-tensor path is kept, as the authors'.)
        on_cpu = all(p.device.type == "cpu" for group in param_groups for p in group["params"])
        return torch.optim.AdamW, ({"fused": True} if on_cpu else {})
    if optimizer == "SGD":
        return torch.optim.SGD, {"momentum": momentum, "nesterov": nesterov}
    raise ValueError(f"SOLVER.OPTIMIZER (optimizer) must be 'ADAMW' or 'SGD', got {optimizer!r}")


def build_optimizer(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    optimizer: str = "ADAMW",
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    clip_gradients: Optional[Dict[str, Any]] = None,
) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`get_param_groups`, optionally with gradient clipping.

    Args:
        optimizer: "ADAMW" or "SGD" (momentum, nesterov: SGD only)
        clip_gradients: None (no clipping) or ``dict(clip_type=..., clip_value=..., norm_type=2.0)``
            with clip_type "full_model" (the norm of all gradients together), "norm" (per parameter)
            or "value"
    """
    param_groups = get_param_groups(
        model, base_lr=base_lr, weight_decay=weight_decay, backbone_multiplier=backbone_multiplier,
        weight_decay_norm=weight_decay_norm, weight_decay_embed=weight_decay_embed,
    )
    optimizer_type, kwargs = _optimizer_type(optimizer, param_groups, momentum, nesterov)
    if clip_gradients is not None:
        clip_type = clip_gradients.get("clip_type", "full_model")
        clip_value = clip_gradients.get("clip_value", 0.01)
        if clip_type not in CLIP_TYPES:
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of {CLIP_TYPES}, got {clip_type!r}")
        if clip_value <= 0:
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be positive, got {clip_value}")
        optimizer_type = _with_gradient_clipping(optimizer_type, clip_type, clip_value,
                                                 clip_gradients.get("norm_type", 2.0))
    result = optimizer_type(param_groups, lr=base_lr, **kwargs)
    logger.info(f"Optimizer {type(result).__name__} with {len(param_groups)} parameter groups")
    return result


def build_optimizer_from_cfg(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """:func:`build_optimizer` from SOLVER.{OPTIMIZER, BASE_LR, WEIGHT_DECAY, WEIGHT_DECAY_NORM,
    WEIGHT_DECAY_EMBED, BACKBONE_MULTIPLIER, MOMENTUM, NESTEROV, CLIP_GRADIENTS}."""
    solver = cfg.SOLVER
    clip = solver.CLIP_GRADIENTS
    return build_optimizer(
        model,
        optimizer=solver.OPTIMIZER,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        momentum=solver.MOMENTUM,
        nesterov=solver.NESTEROV,
        clip_gradients=(
            {"clip_type": clip.CLIP_TYPE, "clip_value": clip.CLIP_VALUE, "norm_type": clip.NORM_TYPE}
            if clip.ENABLED else None
        ),
    )
