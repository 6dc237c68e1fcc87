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
"""
import collections
import pickle
import re
from typing import Dict, Iterable, List, Tuple

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

__all__ = ["AUTHORS_TO_OURS", "DROPPED_KEYS", "DIMaskDINOCheckpointer", "convert_authors_state_dict"]

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


class DIMaskDINOCheckpointer(DetectionCheckpointer):
    """detectron2 checkpointer that also reads the authors' published DI-MaskDINO/MaskDINO weights.

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``
        strict: full-model checkpoints must match the model exactly (see the module docstring)
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, strict: bool = True, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.strict = strict

    def _load_file(self, filename: str) -> dict:
        if filename.endswith(".pkl"):
            return _load_pkl(filename)
        with PathManager.open(filename, "rb") as f:
            try:
                loaded = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
            except pickle.UnpicklingError as error:
                raise ValueError(
                    f"{filename}: refusing to unpickle objects outside torch's weights-only allow-list "
                    f"({error}). Only load files you trust; a trusted file can be re-saved as a plain state dict."
                ) from error
        if not isinstance(loaded, dict):
            raise ValueError(f"{filename}: expected a dict (a state dict or {{'model': state_dict}}), "
                             f"got {type(loaded).__name__}")
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
