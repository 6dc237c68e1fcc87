"""
Training and evaluation from Python LazyConfig files (``configs/**/*.py``).

A LazyConfig file defines, as in detectron2's model zoo:

- ``model``: the model (``L(DIMaskDINO)(backbone=..., sem_seg_head=..., criterion=...)``)
- ``dataloader.train``, ``dataloader.test``, ``dataloader.evaluator``
- ``optimizer``: e.g. ``L(build_lazy_optimizer)(model=None, ...)``; ``model`` is filled in here
- ``lr_multiplier``: an fvcore ParamScheduler of the learning-rate factor
- ``train``: output_dir, init_checkpoint, max_iter, device, seed, log_period, eval_period,
  checkpointer (period, max_to_keep), amp.enabled, ddp (DistributedDataParallel arguments)

The loop is the yaml path's: the same NaN/inf check, checkpointing, ETA printing,
metrics.json and evaluation with an inference benchmark.
"""
import json
import logging
import os
from typing import List, Optional, Sequence

from detectron2.config import get_cfg, instantiate
from detectron2.engine import default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import print_csv_format
from detectron2.utils import comm

from ..data import check_datasets
from ..evaluation import inference_with_benchmark
from ..checkpoint import DIMaskDINOCheckpointer
from .config_files import load_lazy_config, setup_run
from .weights import check_weights_file, load_weights

__all__ = ["build", "build_lazy_optimizer", "do_test", "do_train", "main"]

logger = logging.getLogger("dimaskdino")


def build_lazy_optimizer(
    model,
    *,
    optimizer: str = "ADAMW",
    base_lr: float,
    weight_decay: float,
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    momentum: float = 0.9,
    clip_gradients: Optional[dict] = None,
):
    """
    The yaml path's optimizer (``dimaskdino.engine.build_optimizer``) from keyword arguments,
    so both config kinds train with the same parameter groups and gradient clipping.

    Args:
        clip_gradients: e.g. ``dict(clip_type="full_model", clip_value=0.01, norm_type=2.0)``;
            None disables clipping.
    """
    from ..engine import build_optimizer

    cfg = get_cfg()
    solver = cfg.SOLVER
    solver.OPTIMIZER = optimizer
    solver.BASE_LR = base_lr
    solver.WEIGHT_DECAY = weight_decay
    solver.WEIGHT_DECAY_NORM = weight_decay_norm
    solver.WEIGHT_DECAY_EMBED = weight_decay_embed
    solver.BACKBONE_MULTIPLIER = backbone_multiplier
    solver.MOMENTUM = momentum
    solver.CLIP_GRADIENTS.ENABLED = clip_gradients is not None
    if clip_gradients is not None:
        solver.CLIP_GRADIENTS.CLIP_TYPE = clip_gradients.get("clip_type", "full_model")
        solver.CLIP_GRADIENTS.CLIP_VALUE = clip_gradients.get("clip_value", 0.01)
        solver.CLIP_GRADIENTS.NORM_TYPE = clip_gradients.get("norm_type", 2.0)
    return build_optimizer(cfg, model)


def build(cfg, what: str):
    """``"model"`` (on train.device), ``"optimizer_for"`` (a function of the model),
    ``"train_loader"`` or ``"test_loader"`` from a LazyConfig."""
    if what == "model":
        return instantiate(cfg.model).to(cfg.train.device)
    if what == "optimizer_for":

        def optimizer_for(model):
            cfg.optimizer.model = model
            return instantiate(cfg.optimizer)

        return optimizer_for
    if what == "train_loader":
        return instantiate(cfg.dataloader.train)
    if what == "test_loader":
        return instantiate(cfg.dataloader.test)
    raise ValueError(f"unknown part {what!r}: expected model, optimizer_for, train_loader or test_loader")


def _names(names) -> List[str]:
    return [names] if isinstance(names, str) else list(names)


def dataset_names(cfg, train: bool = True) -> List[str]:
    names = []
    if train and "train" in cfg.dataloader:
        names += _names(cfg.dataloader.train.dataset.names)
    if "test" in cfg.dataloader:
        names += _names(cfg.dataloader.test.dataset.names)
    return names


def check_config(cfg, eval_only: bool) -> None:
    """The dataset/class-count, device and weight-file checks of the yaml path."""
    num_classes = cfg.model.sem_seg_head.num_classes
    check_datasets(dataset_names(cfg, train=not eval_only), num_classes, key="model.sem_seg_head.num_classes")
    check_weights_file(cfg.train.init_checkpoint, "train.init_checkpoint")
    device = str(cfg.train.device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device is '{device}' but no CUDA device is visible; set train.device=cpu.")
    elif cfg.train.amp.enabled:
        raise ValueError(f"train.amp.enabled=True needs a CUDA device, but train.device={device!r}.")


def do_test(cfg, model):
    """Evaluate on ``dataloader.test`` with ``dataloader.evaluator``; prints the COCO tables and
    the inference benchmark."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results, report = inference_with_benchmark(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
        print(f"Inference benchmark:\n{report.table()}", flush=True)
        path = os.path.join(cfg.train.output_dir, "inference_benchmark.json")
        with open(path, "w") as f:
            json.dump(report.as_dict(), f, indent=2)
    return results


def do_train(cfg, resume: bool):
    from ..engine import FiniteLossAMPTrainer, FiniteLossSimpleTrainer

    model = build(cfg, "model")
    logger.info(f"Model:\n{model}")
    optimizer = build(cfg, "optimizer_for")(model)
    train_loader = build(cfg, "train_loader")
    model = create_ddp_model(model, **cfg.train.ddp)
    loop = FiniteLossAMPTrainer if cfg.train.amp.enabled else FiniteLossSimpleTrainer
    trainer = loop(model, train_loader, optimizer)
    checkpointer = DIMaskDINOCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # a checkpoint stores the iteration that finished: continue with the next one
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args, opts: Optional[Sequence[str]] = None):
    """train_net.py's entry point for a LazyConfig file."""
    cfg = load_lazy_config(args.config_file, args.opts if opts is None else opts)
    setup_run(cfg, args)
    check_config(cfg, args.eval_only)
    if args.eval_only:
        model = build(cfg, "model")
        load_weights(model, cfg.train.init_checkpoint, save_dir=cfg.train.output_dir, resume=args.resume,
                     key="train.init_checkpoint")
        return do_test(cfg, create_ddp_model(model))
    return do_train(cfg, args.resume)
