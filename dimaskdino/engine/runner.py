"""Training and evaluation runs from either kind of config file, one path for both.

A yaml (yacs) file and a Python LazyConfig file are each wrapped in a run view (:class:`YamlRun`,
:class:`LazyRun`) that answers the same questions: where outputs go, which device, which weights,
which datasets, how to build the model, its optimizer and the test sets. :func:`main` then does the
same steps for both:

    load -> setup_run (loggers, environment, config backup, seeds) -> check_run (device, datasets,
    weights) -> evaluate(run, model) with --eval-only, else run.train(resume)

yaml runs train with :class:`DIMaskDINOTrainer` (detectron2's DefaultTrainer); LazyConfig runs with
detectron2's SimpleTrainer/AMPTrainer and the hooks of its LazyConfig training script, built from
the file's ``model``, ``optimizer``, ``dataloader``, ``lr_multiplier`` and ``train`` entries (see
``configs/lazy/``).
"""
import json
import logging
import os
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import print_csv_format, verify_results
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from ..checkpoint import DIMaskDINOCheckpointer
from ..data import check_config_datasets, check_datasets
from ..data.resume import continue_data_stream
from ..evaluation import inference_with_benchmark
from ..utils.config_checks import check_config_values
from ..utils.config_files import is_lazy_config, load_lazy_config, load_yaml_config
from ..utils.weights import check_weights_file, load_weights
from .ddp import create_ddp_model, with_statistics_hook
from .devices import check_device
from .ema import EMAHook, with_weight_average
from .precision import build_train_loop
from .progressive_resize import add_progressive_resize
from .train_loop import add_finite_loss_check
from .trainer import DIMaskDINOTrainer

__all__ = ["LazyRun", "YamlRun", "check_run", "evaluate", "load_run", "main", "prepare", "setup_run"]

logger = logging.getLogger("dimaskdino")

# (dataset name, test loader factory, evaluator factory)
TestSet = Tuple[str, Callable, Callable]


class YamlRun:
    """A yacs config (detectron2 keys + ``add_dimaskdino_config``) seen by the runner."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.output_dir, self.seed = cfg.OUTPUT_DIR, cfg.SEED
        self.device, self.device_key = cfg.MODEL.DEVICE, "MODEL.DEVICE"
        self.amp = cfg.SOLVER.AMP.ENABLED
        self.weights, self.weights_key = cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS"
        self.cudnn_benchmark = cfg.CUDNN_BENCHMARK

    def check_datasets(self, eval_only: bool) -> None:
        check_config_datasets(self.cfg, list(self.cfg.DATASETS.TEST) if eval_only else None)

    def save_config(self, path: str) -> None:
        with PathManager.open(path, "w") as f:
            f.write(self.cfg.dump())

    def build_model(self) -> torch.nn.Module:
        return DIMaskDINOTrainer.build_model(self.cfg)

    def build_optimizer(self, model) -> torch.optim.Optimizer:
        return DIMaskDINOTrainer.build_optimizer(self.cfg, model)

    def build_train_loader(self):
        return DIMaskDINOTrainer.build_train_loader(self.cfg)

    def test_sets(self) -> List[TestSet]:
        return [(name, partial(DIMaskDINOTrainer.build_test_loader, self.cfg, name),
                 partial(DIMaskDINOTrainer.build_evaluator, self.cfg, name,
                         os.path.join(self.output_dir, "inference", name)))
                for name in self.cfg.DATASETS.TEST]

    def verify(self, results) -> None:
        verify_results(self.cfg, results)

    def train(self, resume: bool):
        trainer = DIMaskDINOTrainer(self.cfg)
        trainer.resume_or_load(resume=resume)
        return trainer.train()


class LazyRun:
    """A LazyConfig (``model``, ``optimizer``, ``dataloader``, ``lr_multiplier``, ``train``) seen by
    the runner."""

    def __init__(self, cfg):
        self.cfg = cfg
        train = cfg.train
        self.output_dir, self.seed = train.output_dir, train.get("seed", -1)
        self.device, self.device_key = str(train.device), "train.device"
        self.amp = bool(train.amp.enabled)
        self.weights, self.weights_key = train.init_checkpoint, "train.init_checkpoint"
        self.cudnn_benchmark = bool(train.get("cudnn_benchmark", False))

    def dataset_names(self, eval_only: bool) -> List[str]:
        loaders = [] if eval_only else ["train"]
        names = []
        for part in loaders + ["test"]:
            if part in self.cfg.dataloader:
                value = self.cfg.dataloader[part].dataset.names
                names += [value] if isinstance(value, str) else list(value)
        return names

    def check_datasets(self, eval_only: bool) -> None:
        num_classes = self.cfg.model.sem_seg_head.num_classes
        check_datasets(self.dataset_names(eval_only), num_classes, key="model.sem_seg_head.num_classes")

    def save_config(self, path: str) -> None:
        LazyConfig.save(self.cfg, path)

    def build_model(self) -> torch.nn.Module:
        return instantiate(self.cfg.model).to(self.device)

    def build_optimizer(self, model) -> torch.optim.Optimizer:
        self.cfg.optimizer.model = model
        return instantiate(self.cfg.optimizer)

    def build_train_loader(self):
        return instantiate(self.cfg.dataloader.train)

    def test_sets(self) -> List[TestSet]:
        if "evaluator" not in self.cfg.dataloader:
            return []
        names = self.dataset_names(eval_only=True)
        name = names[0] if len(names) == 1 else "test"
        return [(name, lambda: instantiate(self.cfg.dataloader.test), lambda: instantiate(self.cfg.dataloader.evaluator))]

    def verify(self, results) -> None:
        pass  # LazyConfig files have no expected results

    def train(self, resume: bool):
        """detectron2's SimpleTrainer (with train.amp.enabled: AMPTrainer on CUDA, bfloat16 autocast on
        the CPU) with the finite-loss check, our checkpointer and the hooks below, from iteration 0 or
        the one after the last checkpoint."""
        model = self.build_model()
        logger.info(f"Model:\n{model}")
        optimizer = self.build_optimizer(model)
        model = create_ddp_model(model, **self.cfg.train.ddp)
        trainer = build_train_loop(model, self.build_train_loader(), optimizer, self.amp, self.device)
        add_finite_loss_check(trainer, model)
        progressive = self.cfg.train.get("progressive_resize", {})
        add_progressive_resize(trainer, model, progressive.get("scale", 1.0), progressive.get("until_iter", 0))
        checkpointer = DIMaskDINOCheckpointer(model, self.output_dir, trainer=trainer)
        trainer.register_hooks(with_statistics_hook(self._hooks(checkpointer, model), model))
        checkpointer.resume_or_load(self.weights, resume=resume)
        # a checkpoint stores the iteration that finished: continue with the next one
        start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
        continue_data_stream(trainer, start_iter, self.cfg.dataloader.train.total_batch_size // comm.get_world_size())
        trainer.train(start_iter, self.cfg.train.max_iter)

    def _hooks(self, checkpointer, model) -> list:
        """Timing and the learning-rate schedule on every worker; periodic checkpoints (before the
        evaluation, so that a failing evaluation leaves one) and metric writers (last, to include the
        evaluation) on the main process only."""
        train = self.cfg.train
        on_main = comm.is_main_process()
        schedule = [hooks.IterationTimer(), hooks.LRScheduler(scheduler=instantiate(self.cfg.lr_multiplier))]
        saving = [hooks.PeriodicCheckpointer(checkpointer, **train.checkpointer)] if on_main else []
        evaluation = [hooks.EvalHook(train.eval_period, lambda: evaluate(self, model))]
        writing = [hooks.PeriodicWriter(default_writers(self.output_dir, train.max_iter), period=train.log_period)]
        hook_list = schedule + saving + evaluation + (writing if on_main else [])
        ema = train.get("model_ema", {})
        if ema.get("enabled", False):
            hook_list = with_weight_average(hook_list, EMAHook(model, ema.get("decay", 0.999)), train.eval_period,
                                            lambda: evaluate(self, model))
        return hook_list


def load_run(path: str, opts: Sequence[str] = ()):
    """The run view of a config file (``.py``: LazyConfig with key=value overrides, else yaml with
    KEY VALUE overrides)."""
    if is_lazy_config(path):
        return LazyRun(load_lazy_config(path, opts))
    cfg = load_yaml_config(path, opts)
    cfg.freeze()
    return YamlRun(cfg)


def setup_run(run, args) -> None:
    """Start-of-run bookkeeping: output folder, loggers (console + ``log.txt``), the environment and
    arguments in the log, the full config saved as ``config.yaml``, seeds (per rank), cudnn."""
    from ..collect_env import collect_env_info  # dimaskdino's: detectron2's needs its compiled ops

    rank = comm.get_rank()
    if comm.is_main_process() and run.output_dir:
        PathManager.mkdirs(run.output_dir)
    for name in ("fvcore", "detectron2", "dimaskdino"):
        setup_logger(run.output_dir, distributed_rank=rank, name=name)
    logger.info(f"Rank {rank} of {comm.get_world_size()}; arguments: {args}")
    logger.info("Environment info:\n" + tabulate(collect_env_info(), tablefmt="plain"))
    if comm.is_main_process() and run.output_dir:
        path = os.path.join(run.output_dir, "config.yaml")
        run.save_config(path)
        logger.info(f"Full config saved to {path}")
    seed_all_rng(None if run.seed < 0 else run.seed + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = run.cudnn_benchmark


def check_run(run, eval_only: bool) -> None:
    """Fail before any work on bad run settings (batch size, types), a bad device, a dataset problem
    (class count, missing files, bad annotations) or a missing weight file."""
    check_config_values(run.cfg, training=not eval_only, world_size=comm.get_world_size())
    check_device(run.device, run.device_key)
    run.check_datasets(eval_only)
    check_weights_file(run.weights, run.weights_key)


def _save_benchmark(output_dir: str, dataset_name: str, report) -> None:
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, f"inference_benchmark_{dataset_name}.json")
        with PathManager.open(path, "w") as f:
            json.dump(report.as_dict(), f, indent=2)


def evaluate(run, model):
    """COCO box + mask AP on every test set of the run, with an inference benchmark (printed and
    saved as ``inference_benchmark_<dataset>.json``)."""
    results = {}
    for name, loader, evaluator in run.test_sets():
        results[name], report = inference_with_benchmark(model, loader(), evaluator())
        if comm.is_main_process():
            logger.info(f"Evaluation results for {name} in csv format:")
            print_csv_format(results[name])
            print(f"Inference benchmark on {name}:\n{report.table()}", flush=True)
            _save_benchmark(run.output_dir, name, report)
    if len(results) == 1:
        results = next(iter(results.values()))
    if comm.is_main_process() and results:
        run.verify(results)
    return results


def prepare(args, opts: Optional[Sequence[str]] = None):
    """The checked run view of ``args.config_file`` with ``opts`` (default ``args.opts``), set up."""
    run = load_run(args.config_file, args.opts if opts is None else opts)
    setup_run(run, args)
    check_run(run, args.eval_only)
    return run


def main(args, opts: Optional[Sequence[str]] = None):
    """train_net.py's entry point: train, or evaluate with ``args.eval_only``."""
    run = prepare(args, opts)
    if not args.eval_only:
        return run.train(args.resume)
    model = run.build_model()
    load_weights(model, run.weights, save_dir=run.output_dir, resume=args.resume, key=run.weights_key)
    return evaluate(run, create_ddp_model(model))
