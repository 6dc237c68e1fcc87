"""
Loading the two kinds of config file the tools accept: detectron2 yaml configs (yacs, with
``_BASE_`` inheritance and ``KEY VALUE`` overrides) and Python LazyConfig files (``key=value``
overrides). Errors name the file or key at fault.
"""
import os
from typing import Sequence

from detectron2.config import CfgNode, LazyConfig, get_cfg
from omegaconf import OmegaConf

from .config_checks import check_lazy_override_types

__all__ = ["is_lazy_config", "load_config", "load_lazy_config", "load_yaml_config"]

_MISSING = object()


def is_lazy_config(path: str) -> bool:
    return path.endswith(".py")


def _check_config_file(path: str) -> None:
    if not path:
        raise ValueError("No config file given: pass --config-file <file.yaml or file.py>.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    if not path.endswith((".yaml", ".yml", ".py")):
        raise ValueError(f"Config file {path} must be a .yaml (yacs) or .py (LazyConfig) file.")


def load_yaml_config(path: str, opts: Sequence[str] = ()) -> CfgNode:
    """detectron2 defaults + the DI-MaskDINO keys, then ``path``, then ``opts`` (KEY VALUE ...)."""
    from dimaskdino.config import add_dimaskdino_config

    _check_config_file(path)
    cfg = get_cfg()
    add_dimaskdino_config(cfg)
    try:
        cfg.merge_from_file(path)
    except KeyError as e:
        raise KeyError(f"{e.args[0] if e.args else e} (in config file {path})") from e
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except AssertionError as e:  # yacs asserts on an unknown key given on the command line
        raise KeyError(f"{e} (a command-line override of config file {path})") from e
    return cfg


def load_lazy_config(path: str, opts: Sequence[str] = ()):
    """A LazyConfig file with ``key=value`` overrides; an override of a key the config does
    not have is an error (a typo would otherwise be silently added)."""
    _check_config_file(path)
    cfg = LazyConfig.load(path)
    for override in opts:
        key = override.split("=", 1)[0].lstrip("+")
        if "=" not in override:
            raise ValueError(f"LazyConfig overrides must be key=value, got {override!r}")
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise KeyError(f"Non-existent config key: {key} (not in LazyConfig file {path})")
    check_lazy_override_types(cfg, opts)
    return LazyConfig.apply_overrides(cfg, list(opts))


def load_config(path: str, opts: Sequence[str] = ()):
    """A yacs CfgNode for .yaml files, an omegaconf DictConfig for .py LazyConfig files."""
    return load_lazy_config(path, opts) if is_lazy_config(path) else load_yaml_config(path, opts)
