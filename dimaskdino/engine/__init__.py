"""Training: the trainer used by train_net.py, its optimizer and its inner loop."""
from .optimizer import build_optimizer, get_param_groups
from .train_loop import FiniteLossAMPTrainer, FiniteLossSimpleTrainer, check_losses_finite
from .trainer import DIMaskDINOTrainer

__all__ = [
    "DIMaskDINOTrainer",
    "FiniteLossAMPTrainer",
    "FiniteLossSimpleTrainer",
    "build_optimizer",
    "check_losses_finite",
    "get_param_groups",
]
