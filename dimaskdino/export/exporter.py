"""``export_model``: a predictor (model + test-time resize + input format + metadata) to an export folder
holding the model file of one format and its JSON sidecar."""
import logging
import os
import time
from typing import Optional, Sequence

import torch
from detectron2.data import transforms as T

from .formats import FILE_NAMES, FORMATS, MAX_SIDE, dynamic_shapes, onnx_opset, save_format
from .network import INPUT_NAME, OUTPUT_NAMES, InferenceNetwork, minimum_input_side
from .sidecar import ExportSidecar, write_sidecar

__all__ = ["export_model"]

logger = logging.getLogger(__name__)


def _resize_of(augmentation):
    """(short_edge_length, max_size) of the test-time ResizeShortestEdge, or (None, None)."""
    augs = augmentation.augs if isinstance(augmentation, T.AugmentationList) else [augmentation]
    others = [type(a).__name__ for a in augs if not isinstance(a, T.ResizeShortestEdge)]
    if others:
        raise ValueError(f"the test-time augmentations {others} cannot be described in the export sidecar: only "
                         "ResizeShortestEdge is supported")
    resizes = [a for a in augs if isinstance(a, T.ResizeShortestEdge)]
    if not resizes:
        return None, None
    lengths = resizes[0].short_edge_length
    return (int(lengths[0]), int(lengths[-1])), int(resizes[0].max_size)


def _example_size(model, image_size: Optional[Sequence[int]], default_side: int) -> tuple:
    """(H, W) of the tracing example: ``image_size``, or a square of ``default_side`` rounded up."""
    divisibility = model.size_divisibility
    if image_size is not None:
        height, width = (int(s) for s in image_size)
        if height % divisibility or width % divisibility:
            raise ValueError(f"--image-size {height} {width} must be multiples of the size divisibility "
                             f"{divisibility} (the network takes padded images)")
        return height, width
    side = -(-default_side // divisibility) * divisibility
    return side, side


def _class_names(metadata, num_classes: int):
    names = list(getattr(metadata, "thing_classes", None) or [])
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def export_model(predictor, fmt: str, output_dir: str, image_size: Optional[Sequence[int]] = None,
                 dynamic: bool = False, config_text: str = "") -> str:
    """Export ``predictor.model`` (a :class:`dimaskdino.utils.visualize.Predictor`'s) and write the sidecar.

    Args:
        fmt: "torch_export", "aoti" or "onnx"
        image_size: (H, W) padded input size of a static export, or of the tracing example of a dynamic one
        dynamic: batch, height and width free (height and width in multiples of the size divisibility)
    Returns:
        the path of the model file
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    if image_size is None and not dynamic:
        raise ValueError("give the input size of a static export (--image-size H W) or export with --dynamic")
    model = predictor.model.eval()
    network = InferenceNetwork(model)
    resize_short_edge, resize_max_size = _resize_of(predictor.augmentation)
    min_side = minimum_input_side(model)
    height, width = _example_size(model, image_size, max(min_side, resize_short_edge[1] if resize_short_edge else 0))
    shapes = dynamic_shapes(model.size_divisibility, min_side) if dynamic else None
    example = torch.zeros((2 if dynamic else 1, 3, height, width), device=model.device)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAMES[fmt])
    start = time.perf_counter()
    logger.info(f"exporting {fmt} ({'dynamic' if dynamic else 'static'} input, traced at {height}x{width}) to {path}")
    save_format(fmt, network, example, shapes, path)
    logger.info(f"exported in {time.perf_counter() - start:.0f} s")
    predictor_head = model.sem_seg_head.predictor
    sidecar = ExportSidecar(
        format=fmt, file=FILE_NAMES[fmt], device="cpu" if fmt == "onnx" else str(model.device),
        input_format=predictor.input_format,
        pixel_mean=model.pixel_mean.flatten().tolist(), pixel_std=model.pixel_std.flatten().tolist(),
        size_divisibility=model.size_divisibility, dynamic=dynamic,
        image_size=None if dynamic else (height, width), min_side=min_side if dynamic else height,
        max_side=MAX_SIDE if dynamic else max(height, width),
        resize_short_edge=resize_short_edge, resize_max_size=resize_max_size,
        class_names=_class_names(predictor.metadata, predictor_head.num_classes),
        num_classes=predictor_head.num_classes, max_detections=model.test_topk_per_image,
        score_from_box_only=model.focus_on_box, input_name=INPUT_NAME, output_names=list(OUTPUT_NAMES),
        opset=onnx_opset(path) if fmt == "onnx" else None, torch_version=torch.__version__, config=config_text,
    )
    write_sidecar(sidecar, output_dir)
    return path
