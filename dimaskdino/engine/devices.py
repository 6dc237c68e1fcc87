"""The one check of a run's device settings, for both config kinds."""
import torch

__all__ = ["check_device", "cuda_visible"]


def cuda_visible() -> bool:
    return torch.cuda.is_available()


def check_device(device: str, key: str) -> None:
    """Fail early, naming the config key, when a CUDA device is asked for but none is visible.
    (Mixed precision needs no check: it runs on either device, see ``engine/precision.py``.)"""
    device = str(device)
    if device.startswith("cuda") and not cuda_visible():
        raise RuntimeError(f"{key} is '{device}' but no CUDA device is visible; set {key} to 'cpu'.")
