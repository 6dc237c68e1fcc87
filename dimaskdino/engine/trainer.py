"""``DIMaskDINOTrainer``: detectron2's DefaultTrainer with the authors' optimizer, schedule and
dataset mappers, mixed precision via SOLVER.AMP.ENABLED, an optional average of the weights
(MODEL_EMA) and a stop on non-finite losses."""
import os
import weakref

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils import comm

from ..checkpoint import DIMaskDINOCheckpointer
from ..data.mappers import DETRInstanceDatasetMapper, build_train_mapper
from ..data.resume import continue_data_stream
from .ddp import ddp_on_any_device, with_statistics_hook
from .devices import check_device
from .ema import EMAHook, with_weight_average
from .optimizer import build_optimizer_from_cfg
from .precision import add_cpu_autocast, uses_cpu_autocast
from .progressive_resize import add_progressive_resize
from .train_loop import add_finite_loss_check

__all__ = ["DIMaskDINOTrainer"]


class DIMaskDINOTrainer(DefaultTrainer):
    """The trainer train_net.py uses.

    Built by ``DefaultTrainer`` itself (its classmethods below choose the optimizer, schedule and
    data); on top of it, every loss term is checked for NaN/inf before the backward pass (naming the
    term and iteration when it stops), checkpoints hold the optimizer state, and MODEL.WEIGHTS may be
    one of the authors' published checkpoints (renamed by ``dimaskdino.checkpoint``).
    """

    def __init__(self, cfg):
        check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
        cpu_amp = uses_cpu_autocast(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE)
        if cpu_amp:  # DefaultTrainer would build detectron2's CUDA-only AMPTrainer
            cfg = _with_amp(cfg, False)
        with ddp_on_any_device():  # DefaultTrainer wraps the model for several processes
            super().__init__(cfg)
        if cpu_amp:
            add_cpu_autocast(self._trainer.model)
            self.cfg = _with_amp(self.cfg, True)
        add_finite_loss_check(self, self.model)
        progressive = cfg.INPUT.get("PROGRESSIVE_RESIZE")  # absent without add_dimaskdino_config
        if progressive is not None:
            add_progressive_resize(self, self.model, progressive.SCALE, progressive.UNTIL_ITER)

    def build_hooks(self):
        """DefaultTrainer's hooks, with our checkpointer: it reads the authors' published weights too,
        non-strict so that a checkpoint trained on another class set can initialise fine-tuning
        (mismatched heads are skipped with a warning); with several processes, BatchNorm
        statistics are averaged over them after every step, before the checkpointer and the
        evaluation. DefaultTrainer calls this at the end of its construction, before anything is
        loaded or saved."""
        self.checkpointer = DIMaskDINOCheckpointer(
            self.model, self.cfg.OUTPUT_DIR, strict=False, trainer=weakref.proxy(self)
        )
        hook_list = super().build_hooks()
        ema = self.cfg.get("MODEL_EMA")  # absent from configs built without add_dimaskdino_config
        if ema is not None and ema.ENABLED:
            hook_list = with_weight_average(hook_list, EMAHook(self.model, ema.DECAY),
                                            self.cfg.TEST.EVAL_PERIOD, self._evaluate_and_keep)
        return with_statistics_hook(hook_list, self.model)

    def _evaluate_and_keep(self):
        """DefaultTrainer's evaluation function: evaluate and keep the results for train()."""
        self._last_eval_results = self.test(self.cfg, self.model)
        return self._last_eval_results

    def resume_or_load(self, resume=True):
        """detectron2's, then the training sampler skipped past the samples consumed before the
        checkpoint, so that the data order continues (``dimaskdino.data.resume``)."""
        super().resume_or_load(resume=resume)
        continue_data_stream(self._trainer, self.start_iter, self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())

    def state_dict(self):
        """Checkpointed trainer state, including the optimizer (and AMP grad scaler) state, which
        detectron2 v0.6's DefaultTrainer leaves out, so that --resume continues AdamW exactly."""
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer_from_cfg(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """detectron2's schedulers, plus "WarmupPolyLR" (SOLVER.POLY_LR_*) from its DeepLab project."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """Training batches mapped by the mapper named in INPUT.DATASET_MAPPER_NAME."""
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with the DETR mapper's evaluation mode (the same shorter-side
        resize as detectron2's DatasetMapper), which reads 16-bit images correctly."""
        return build_detection_test_loader(cfg, dataset_name, mapper=DETRInstanceDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import build_evaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)


def _with_amp(cfg, enabled: bool):
    """A frozen copy of ``cfg`` with SOLVER.AMP.ENABLED set to ``enabled``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = enabled
    cfg.freeze()
    return cfg
