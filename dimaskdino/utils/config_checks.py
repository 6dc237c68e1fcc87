"""Value and type checks of the run settings, done before any model or data is built, so that a
batch size of 0 or ``train.max_iter=abc`` fails at once with the key, the value and what is expected
(instead of detectron2's "Total batch size (0) must be divisible by the number of gpus (1)" or a
TypeError at the first iteration).

yacs already refuses values of the wrong type (it names the key and both types); LazyConfig files
accept anything, so their known keys are checked against :data:`LAZY_SCHEMA` here, and a
command-line override must keep the type of the value it replaces.
"""
import ast
from numbers import Real
from typing import Sequence

from omegaconf import OmegaConf

__all__ = [
    "LAZY_SCHEMA",
    "check_config_values",
    "check_lazy_config_values",
    "check_lazy_override_types",
    "check_yaml_config_values",
]

_MISSING = object()

# key -> (expected type, bound: None, "positive" or "non-negative"); float keys accept ints
LAZY_SCHEMA = {
    "train.max_iter": (int, "positive"),
    "train.checkpointer.period": (int, "positive"),
    "train.checkpointer.max_to_keep": (int, "positive"),
    "train.eval_period": (int, "non-negative"),
    "train.log_period": (int, "positive"),
    "train.seed": (int, None),
    "train.output_dir": (str, None),
    "train.init_checkpoint": (str, None),
    "train.device": (str, None),
    "train.amp.enabled": (bool, None),
    "dataloader.train.total_batch_size": (int, "positive"),
    "dataloader.train.num_workers": (int, "non-negative"),
    "dataloader.test.num_workers": (int, "non-negative"),
    "optimizer.base_lr": (float, "positive"),
}

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}


def _has_type(value, expected: type) -> bool:
    if expected is float:
        return isinstance(value, Real) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def check_value(key: str, value, expected: type, bound=None) -> None:
    """Raise naming ``key``, ``value`` and what was expected when the value does not fit.

    Args:
        bound: None, "positive" (> 0) or "non-negative" (>= 0)
    """
    if not _has_type(value, expected):
        raise TypeError(
            f"Config key {key} must be {_TYPE_NAMES[expected]}, got {value!r} ({type(value).__name__})."
        )
    if (bound == "positive" and value <= 0) or (bound == "non-negative" and value < 0):
        raise ValueError(f"Config key {key} must be {bound}, got {value!r}.")


def check_yaml_config_values(cfg, training: bool, world_size: int = 1) -> None:
    """Run-setting values of a yacs config that yacs' own type check lets through."""
    if not training:
        return
    solver = cfg.SOLVER
    check_value("SOLVER.IMS_PER_BATCH", solver.IMS_PER_BATCH, int, "positive")
    if solver.IMS_PER_BATCH % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={solver.IMS_PER_BATCH} (images per batch over all GPUs) must be divisible "
            f"by the number of GPUs ({world_size})."
        )
    check_value("SOLVER.MAX_ITER", solver.MAX_ITER, int, "positive")
    check_value("SOLVER.CHECKPOINT_PERIOD", solver.CHECKPOINT_PERIOD, int, "positive")
    check_value("SOLVER.BASE_LR", solver.BASE_LR, float, "positive")
    check_value("DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, int, "non-negative")
    check_value("TEST.EVAL_PERIOD", cfg.TEST.EVAL_PERIOD, int, "non-negative")


def check_lazy_config_values(cfg, training: bool, world_size: int = 1) -> None:
    """Types and ranges of the LazyConfig keys in :data:`LAZY_SCHEMA` that the config has."""
    for key, (expected, minimum) in LAZY_SCHEMA.items():
        if not training and not key.startswith(("train.device", "train.output_dir", "dataloader.test")):
            continue
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING:
            check_value(key, value, expected, minimum)
    batch = OmegaConf.select(cfg, "dataloader.train.total_batch_size", default=None)
    if training and batch is not None and batch % world_size:
        raise ValueError(
            f"dataloader.train.total_batch_size={batch} must be divisible by the number of GPUs ({world_size})."
        )


def check_config_values(cfg, training: bool, world_size: int = 1) -> None:
    """:func:`check_yaml_config_values` for a yacs CfgNode, else :func:`check_lazy_config_values`."""
    from detectron2.config import CfgNode

    if isinstance(cfg, CfgNode):
        check_yaml_config_values(cfg, training, world_size)
    else:
        check_lazy_config_values(cfg, training, world_size)


def _parse_override(text: str):
    # the parsing detectron2's LazyConfig.apply_overrides applies to the right-hand side
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_lazy_override_types(cfg, overrides: Sequence[str]) -> None:
    """A ``key=value`` override of a number or boolean must be a number or boolean too."""
    for override in overrides:
        key, _, text = override.partition("=")
        key = key.lstrip("+")
        old = OmegaConf.select(cfg, key, default=None)
        new = _parse_override(text)
        if isinstance(old, bool) and not isinstance(new, bool):
            raise TypeError(f"Override {override!r}: {key} must be True or False, got {new!r}.")
        if isinstance(old, Real) and not isinstance(old, bool) and not _has_type(new, float):
            raise TypeError(f"Override {override!r}: {key} must be a number (like {old!r}), got {new!r}.")
