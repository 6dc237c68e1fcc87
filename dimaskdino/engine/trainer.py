"""``DIMaskDINOTrainer``: detectron2's DefaultTrainer with the authors' optimizer, schedule and
dataset mappers, mixed precision via SOLVER.AMP.ENABLED and a stop on non-finite losses."""
import logging
import os
import weakref

from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import DIMaskDINOCheckpointer
from ..data.mappers import build_train_mapper
from .optimizer import build_optimizer
from .train_loop import FiniteLossAMPTrainer, FiniteLossSimpleTrainer

__all__ = ["DIMaskDINOTrainer"]


def check_amp_device(cfg) -> None:
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ValueError(
            f"SOLVER.AMP.ENABLED=True needs a CUDA device, but MODEL.DEVICE={cfg.MODEL.DEVICE!r}; "
            "set SOLVER.AMP.ENABLED False to train on the CPU"
        )


class DIMaskDINOTrainer(DefaultTrainer):
    """The trainer train_net.py uses.

    Same construction as ``DefaultTrainer``, except that the inner loop checks every loss term
    for NaN/inf before each optimizer step (and names the term and iteration when it stops), that
    checkpoints hold the optimizer state, and that MODEL.WEIGHTS may be one of the authors'
    published checkpoints (renamed by ``dimaskdino.checkpoint``).
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ hard-codes its inner loop classes; this mirrors it with ours.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_amp_device(cfg)

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        loop_type = FiniteLossAMPTrainer if cfg.SOLVER.AMP.ENABLED else FiniteLossSimpleTrainer
        self._trainer = loop_type(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Reads the authors' published weights too; non-strict so that a checkpoint trained on
        # another class set can initialise fine-tuning (mismatched heads are skipped with a warning).
        self.checkpointer = DIMaskDINOCheckpointer(
            model, cfg.OUTPUT_DIR, strict=False, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """detectron2's schedulers, plus "WarmupPolyLR" (SOLVER.POLY_LR_*) from its DeepLab project."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """Training batches mapped by the mapper named in INPUT.DATASET_MAPPER_NAME."""
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import build_evaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)
