"""Training: the trainer used by train_net.py, its optimizer, the finite-loss check, the device
check and the runner shared by yaml and LazyConfig files (``dimaskdino.engine.runner``)."""
from .devices import check_device
from .optimizer import build_optimizer, build_optimizer_from_cfg, get_param_groups
from .train_loop import add_finite_loss_check, check_losses_finite
from .trainer import DIMaskDINOTrainer

__all__ = [
    "DIMaskDINOTrainer",
    "add_finite_loss_check",
    "build_optimizer",
    "build_optimizer_from_cfg",
    "check_device",
    "check_losses_finite",
    "get_param_groups",
]
