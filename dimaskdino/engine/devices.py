"""The one check of a run's device settings, for both config kinds."""
import torch

__all__ = ["check_device", "cuda_visible"]


def cuda_visible() -> bool:
    return torch.cuda.is_available()


def check_device(device: str, key: str, amp: bool = False, amp_key: str = "") -> None:
    """Fail early, naming the config key, when a CUDA device is asked for but none is visible, or
    when mixed precision is asked for off CUDA."""
    device = str(device)
    if device.startswith("cuda") and not cuda_visible():
        raise RuntimeError(f"{key} is '{device}' but no CUDA device is visible; set {key} to 'cpu'.")
    if amp and not device.startswith("cuda"):
        raise ValueError(f"{amp_key}=True needs a CUDA device, but {key}={device!r}; set {amp_key} to False "
                         "to train on the CPU.")
