"""Loading the published DI-MaskDINO / MaskDINO checkpoints and our own, safely.

The authors' state dicts name the DI module ``oldm``, BATO ``query_guide_feature_update`` and register
each shared head several times (e.g. the box head as ``_bbox_embed``, ``bbox_embed.{i}`` and
``decoder.bbox_embed.{i}``). ``AUTHORS_TO_OURS`` is the one table that renames them; aliases of one
tensor collapse into one key (they must hold equal values). Our own checkpoints use our names and pass
through unchanged.

Files are read without running untrusted code: ``.pth`` with ``torch.load(weights_only=True)``,
detectron2 ``.pkl`` model-zoo files with an unpickler that only rebuilds numpy arrays and plain
containers. Our training checkpoints (model, optimizer, LR scheduler, iteration) hold only tensors and
plain Python values, which the weights-only loader accepts without any allow-listed global.

A full-model checkpoint (any key outside ``backbone.``) must fit the model exactly: otherwise loading
raises a ValueError naming the missing, unexpected and wrongly shaped keys (pass ``strict=False`` to get
detectron2's behaviour, which skips them with a warning, e.g. to fine-tune on another class set).
Backbone-only checkpoints (ImageNet initialisation) load non-strictly.

Saving is crash-safe: every checkpoint and ``last_checkpoint`` is written to a temporary file in the
same folder, flushed to disk and renamed into place (``dimaskdino.utils.atomic_io``), so a kill leaves
the previous file or the new one, never a truncated one under a real name. ``resume_or_load`` with
``resume=True`` falls back to the newest intact checkpoint of the folder (with a warning naming both
files) when the one ``last_checkpoint`` names cannot be read. An empty, truncated or non-checkpoint
file raises :class:`UnreadableCheckpointError` naming the file.
"""
import collections
import logging
import os
import pickle
import re
from typing import Dict, Iterable, List, Tuple

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .utils.atomic_io import AtomicPathManager, remove_stale_temporaries

__all__ = [
    "AUTHORS_TO_OURS",
    "DROPPED_KEYS",
    "DIMaskDINOCheckpointer",
    "UnreadableCheckpointError",
    "convert_authors_state_dict",
    "read_torch_file",
]

logger = logging.getLogger(__name__)

_P = "sem_seg_head.predictor."
_PD = "sem_seg_head.pixel_decoder."

# (pattern matched at the start of a key, replacement of the matched prefix), first match wins
AUTHORS_TO_OURS: Tuple[Tuple[str, str], ...] = (
    # pixel decoder
    (r"sem_seg_head\.pixel_decoder\.transformer\.level_embed$", _PD + "encoder.level_embed"),
    (r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.", _PD + "encoder.layers."),
    # heads shared by the encoder proposals, the DI module and every decoder layer
    (r"sem_seg_head\.predictor\.(?:_bbox_embed|bbox_embed\.\d+|decoder\.bbox_embed\.\d+)\.", _P + "box_embed."),
    (r"sem_seg_head\.predictor\.(?:decoder|oldm)\.class_embed\.", _P + "class_embed."),
    (r"sem_seg_head\.predictor\.decoder\.mask_embed\.", _P + "mask_embed."),
    (r"sem_seg_head\.predictor\.decoder\.norm\.", _P + "decoder_norm."),
    # two-stage query selection
    (r"sem_seg_head\.predictor\.enc_output\.", _P + "query_selection.enc_output."),
    (r"sem_seg_head\.predictor\.enc_output_norm\.", _P + "query_selection.enc_output_norm."),
    # denoising label embedding
    (r"sem_seg_head\.predictor\.label_enc\.", _P + "denoising.label_enc."),
    # De-Imbalance module
    (r"sem_seg_head\.predictor\.(?:oldm_norm|oldm\.norm)\.", _P + "di_module.norm."),
    (r"sem_seg_head\.predictor\.(?:_oldm_bbox_embed|oldm_bbox_embed\.\d+|oldm\.bbox_embed\.\d+)\.",
     _P + "di_module.box_embed."),
    (r"sem_seg_head\.predictor\.oldm\.", _P + "di_module."),
    # Balance-Aware Tokens Optimization
    (r"sem_seg_head\.predictor\.(?:decoder\.)?query_guide_feature_update\.", _P + "bato."),
    (r"sem_seg_head\.predictor\.decoder\.mask_output_conv\.", _P + "bato.mask_output_conv."),
)

# keys of the published checkpoints that hold no model weight: the no-object class weight of the
# authors' softmax criterion (our criterion uses the focal loss and has none)
DROPPED_KEYS: Tuple[str, ...] = (r"criterion\.empty_weight$",)

_COMPILED = tuple((re.compile("^" + p), r) for p, r in AUTHORS_TO_OURS)
_DROPPED = tuple(re.compile("^" + p) for p in DROPPED_KEYS)


def _same_values(a, b) -> bool:
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    return a.shape == b.shape and torch.equal(a, b)


def convert_authors_state_dict(state_dict: Dict[str, object], keep: Iterable[str] = ()) -> Dict[str, object]:
    """Rename the authors' keys to ours, collapse aliases and drop non-weights.

    Args:
        state_dict: name -> tensor (or numpy array), in the authors' or our naming
        keep: keys that the model does have and that must not be dropped
    Returns:
        a new dict in our naming
    Raises:
        ValueError if two aliases of one weight hold different values
    """
    keep = set(keep)
    converted: Dict[str, object] = {}
    source_of: Dict[str, str] = {}
    for key, value in state_dict.items():
        if key not in keep and any(p.match(key) for p in _DROPPED):
            continue
        new_key = key
        for pattern, replacement in _COMPILED:
            match = pattern.match(key)
            if match:
                new_key = replacement + key[match.end():]
                break
        if new_key in converted:
            if not _same_values(converted[new_key], value):
                raise ValueError(
                    f"checkpoint keys {source_of[new_key]!r} and {key!r} are the same weight ({new_key!r}) "
                    "but hold different values"
                )
            continue
        converted[new_key] = value
        source_of[new_key] = key
    return converted


_SWIN_DOWNSAMPLE = re.compile(r"^((?:backbone\.)?layers\.)(\d+)(\.downsample\.)")


def _convert_swin_layout(state_dict: Dict[str, object], model_keys) -> Dict[str, object]:
    """Move Swin patch-merging weights from the end of stage i (authors) to the start of stage i + 1
    (timm), and drop the relative-position index buffers timm rebuilds itself."""
    if not any(k.startswith("backbone.layers.") and ".blocks." in k for k in model_keys):
        return state_dict
    if not any(re.match(r"^(?:backbone\.)?layers\.0\.downsample\.", k) for k in state_dict):
        return state_dict
    converted = {}
    for key, value in state_dict.items():
        if key.endswith("relative_position_index") and key not in model_keys:
            continue
        match = _SWIN_DOWNSAMPLE.match(key)
        if match:
            key = f"{match.group(1)}{int(match.group(2)) + 1}{match.group(3)}{key[match.end():]}"
        converted[key] = value
    return converted


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists and scalars; refuses every other global."""

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
            return getattr(multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(np.dtypes, name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a .pkl checkpoint may only hold numpy arrays and plain containers"
        )


def _load_pkl(filename: str) -> dict:
    with PathManager.open(filename, "rb") as f:
        data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(data, dict):
        raise ValueError(f"{filename}: expected a dict in the .pkl file, got {type(data).__name__}")
    if "model" in data and "__author__" in data:
        return data  # detectron2 model-zoo format
    if "blobs" in data:
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


class UnreadableCheckpointError(ValueError):
    """A weights/checkpoint file that is empty, truncated, not a checkpoint, or holds objects the
    weights-only loader refuses; the message names the file."""


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _describe_unpickling_error(filename: str, error: Exception) -> str:
    # torch's message advises weights_only=False (arbitrary code execution): never repeat it
    found = _UNSUPPORTED_GLOBAL.search(str(error))
    if found:
        return (f"{filename}: holds a {found.group(1)} object, which the safe weights-only loader refuses. "
                "Only tensors and plain Python values are read; re-save a trusted file as a plain state dict.")
    return f"{filename}: is not a PyTorch checkpoint (not a zip archive nor a weights-only pickle)."


def read_torch_file(filename: str) -> object:
    """``torch.load(weights_only=True)`` of a local or PathManager file, to CPU.

    Raises:
        UnreadableCheckpointError naming the file when it is empty, truncated, not a checkpoint
        or holds objects outside torch's weights-only allow-list.
    """
    with PathManager.open(filename, "rb") as f:
        if f.seekable() and f.seek(0, os.SEEK_END) == 0:
            raise UnreadableCheckpointError(f"{filename}: is empty (0 bytes): it was never written completely.")
        f.seek(0)
        try:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as error:
            raise UnreadableCheckpointError(_describe_unpickling_error(filename, error)) from None
        except Exception as error:  # torch raises RuntimeError, EOFError, KeyError, IndexError, ...
            size = f.seek(0, os.SEEK_END) if f.seekable() else "?"
            raise UnreadableCheckpointError(
                f"{filename}: is truncated or not a PyTorch checkpoint ({size} bytes; "
                f"{type(error).__name__} while reading it)."
            ) from None


class DIMaskDINOCheckpointer(DetectionCheckpointer):
    """detectron2 checkpointer that also reads the authors' published DI-MaskDINO/MaskDINO weights,
    saves crash-safely and resumes from the newest intact checkpoint.

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``
        strict: full-model checkpoints must match the model exactly (see the module docstring)
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, strict: bool = True, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.strict = strict
        # detectron2's save() and tag_last_checkpoint() write through this manager: make them atomic
        self.path_manager = AtomicPathManager(self.path_manager)

    def save(self, name: str, **kwargs) -> None:
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            for stale in remove_stale_temporaries(self.save_dir, "*.pth") + remove_stale_temporaries(
                self.save_dir, "last_checkpoint"
            ):
                self.logger.warning(f"Removed {stale}, left by a checkpoint save that was interrupted.")
        super().save(name, **kwargs)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        """As detectron2's, except that an unreadable last checkpoint falls back to the newest
        intact ``.pth`` file in ``save_dir`` (by modification time), with a warning."""
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=False)
        named = self.get_checkpoint_file()
        others = sorted(
            (f for f in self.get_all_checkpoint_files() if os.path.abspath(f) != os.path.abspath(named)),
            key=os.path.getmtime,
            reverse=True,
        )
        failures = []
        for candidate in [named] + others:
            if not os.path.isfile(candidate):
                failures.append(f"{candidate}: not found.")
                continue
            try:
                loaded = self.load(candidate)
            except UnreadableCheckpointError as error:
                failures.append(str(error))
                continue
            if candidate != named:
                self.logger.warning(
                    f"Could not resume from {named}, the checkpoint named in last_checkpoint "
                    f"({failures[0]}); resumed from {candidate}, the newest intact checkpoint, instead."
                )
            return loaded
        raise UnreadableCheckpointError(
            f"Cannot resume from {self.save_dir}: no checkpoint in it is readable. " + " ".join(failures)
        )

    def _load_file(self, filename: str) -> dict:
        if filename.endswith(".pkl"):
            return _load_pkl(filename)
        loaded = read_torch_file(filename)
        if not isinstance(loaded, dict):
            raise UnreadableCheckpointError(
                f"{filename}: expected a dict (a state dict or {{'model': state_dict}}), got {type(loaded).__name__}"
            )
        if filename.endswith(".pyth"):
            if "model_state" not in loaded:
                raise ValueError(f"{filename}: pycls checkpoints must contain 'model_state'")
            return {"model": loaded["model_state"], "__author__": "pycls", "matching_heuristics": True}
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded

    def _load_model(self, checkpoint):
        model_keys = set(self.model.state_dict().keys())
        weights = _convert_swin_layout(checkpoint["model"], model_keys)
        checkpoint["model"] = convert_authors_state_dict(weights, keep=model_keys)
        full_model = not checkpoint.get("matching_heuristics", False) and any(
            not k.startswith("backbone.") for k in checkpoint["model"]
        )
        incompatible = super()._load_model(checkpoint)
        if self.strict and full_model:
            _raise_if_incompatible(incompatible)
        return incompatible


def _raise_if_incompatible(incompatible) -> None:
    problems: List[str] = []
    if incompatible.missing_keys:
        problems.append(f"{len(incompatible.missing_keys)} missing keys: {_preview(incompatible.missing_keys)}")
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} unexpected keys: {_preview(incompatible.unexpected_keys)}"
        )
    if incompatible.incorrect_shapes:
        shapes = [f"{k} (checkpoint {tuple(a)}, model {tuple(b)})" for k, a, b in incompatible.incorrect_shapes]
        problems.append(f"{len(shapes)} keys with another shape: {_preview(shapes)}")
    if problems:
        raise ValueError(
            "the checkpoint does not fit this model: " + "; ".join(problems) + ". Check that the config matches "
            "the checkpoint (architecture, MODEL.MaskDINO.DI_ENABLED / BATO_ENABLED, NUM_CLASSES, HIDDEN_DIM, "
            "layer counts), or load with strict=False to skip these keys."
        )


def _preview(keys, limit: int = 10) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
