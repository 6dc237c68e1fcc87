"""Loading model weights for evaluation and prediction, with errors that name the file."""
import os

from ..checkpoint import DIMaskDINOCheckpointer

__all__ = ["check_weights_file", "load_weights"]


def check_weights_file(path: str, key: str = "MODEL.WEIGHTS") -> None:
    """A local weights file must exist (URLs and detectron2:// paths are resolved when loading)."""
    if path and "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path} (given by {key}).")


def load_weights(model, path: str, *, save_dir: str = "", resume: bool = False, key: str = "MODEL.WEIGHTS"):
    """
    Load ``path`` (ours or the authors' published checkpoint) into ``model``; with ``resume``
    the last checkpoint in ``save_dir`` wins (or the newest intact one, with a warning, when it
    cannot be read). A full-model checkpoint that does not fit the
    model (another architecture, other class count, ...) raises a ValueError naming the file.
    """
    checkpointer = DIMaskDINOCheckpointer(model, save_dir)
    if resume and checkpointer.has_checkpoint():
        # the checkpointer's fallback: an unreadable last checkpoint gives way to the newest intact one
        checkpointer.resume_or_load(path, resume=True)
        return checkpointer
    if not path:
        raise ValueError(f"No weights to load: set {key} to a checkpoint file.")
    check_weights_file(path, key)
    try:
        checkpointer.load(path)
    except ValueError as e:
        raise ValueError(f"Cannot load weights from {path}: {e}") from e
    return checkpointer
