"""
Loading the two kinds of config file the tools accept: detectron2 yaml configs (yacs, with
``_BASE_`` inheritance and ``KEY VALUE`` overrides) and Python LazyConfig files (``key=value``
overrides). Errors name the file or key at fault.
"""
import logging
import os
from typing import Sequence

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf
from tabulate import tabulate

__all__ = ["is_lazy_config", "load_config", "load_lazy_config", "load_yaml_config", "setup_run"]

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
    return LazyConfig.apply_overrides(cfg, list(opts))


def load_config(path: str, opts: Sequence[str] = ()):
    """A yacs CfgNode for .yaml files, an omegaconf DictConfig for .py LazyConfig files."""
    return load_lazy_config(path, opts) if is_lazy_config(path) else load_yaml_config(path, opts)


def _get(cfg, yacs_key: str, lazy_key: str, default=None):
    if isinstance(cfg, CfgNode):
        node = cfg
        for part in yacs_key.split("."):
            if part not in node:
                return default
            node = node[part]
        return node
    return OmegaConf.select(cfg, lazy_key, default=default)


def setup_run(cfg, args) -> logging.Logger:
    """
    detectron2's ``default_setup`` for both config kinds, with dimaskdino's environment report
    (detectron2's own needs compiled ops that a detectron2 without ``_C`` lacks): output folder,
    loggers (console + ``log.txt``), environment / arguments / config in the log, the full config
    saved as ``config.yaml``, seeds (SEED / train.seed, per rank) and cudnn benchmarking.
    """
    from ..collect_env import collect_env_info

    output_dir = _get(cfg, "OUTPUT_DIR", "train.output_dir")
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    for name in ("fvcore", "detectron2", "dimaskdino"):
        logger = setup_logger(output_dir, distributed_rank=rank, name=name)
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + tabulate(collect_env_info(), tablefmt="plain"))
    logger.info(f"Command line arguments: {args}")
    if getattr(args, "config_file", ""):
        with PathManager.open(args.config_file, "r") as f:
            logger.info(f"Contents of {args.config_file}:\n{f.read()}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        if isinstance(cfg, CfgNode):
            logger.info(f"Running with full config:\n{cfg.dump()}")
            with PathManager.open(path, "w") as f:
                f.write(cfg.dump())
        else:
            LazyConfig.save(cfg, path)
        logger.info(f"Full config saved to {path}")
    seed = _get(cfg, "SEED", "train.seed", default=-1)
    seed_all_rng(None if seed < 0 else seed + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = bool(_get(cfg, "CUDNN_BENCHMARK", "train.cudnn_benchmark", default=False))
    return logger
