"""``ExportedPredictor``: an exported model file + its sidecar -> detectron2 ``Instances`` for an image,
pre-processed like ``dimaskdino.utils.visualize.Predictor`` and post-processed by the same
``postprocess_prediction`` as ``DIMaskDINO.inference``."""
from typing import Tuple

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.structures import ImageList, Instances

from ..modeling.outputs import StagePrediction
from ..modeling.postprocess import postprocess_prediction
from .formats import load_runner
from .sidecar import ExportSidecar, read_sidecar

__all__ = ["ExportedPredictor", "instances_from_outputs"]


def instances_from_outputs(outputs, index: int, padded_size, image_size, output_size,
                           sidecar: ExportSidecar) -> Instances:
    """Instances of image ``index`` of a batch from the network's (pred_logits, pred_boxes, pred_masks), by
    the post-processing of ``DIMaskDINO.inference`` (``postprocess_prediction``)."""
    logits, boxes, masks = outputs
    prediction = StagePrediction(logits=logits, boxes=boxes, masks=masks).image(index)
    return postprocess_prediction(prediction, tuple(padded_size), tuple(image_size), tuple(output_size),
                                  max_detections=sidecar.max_detections,
                                  score_from_box_only=sidecar.score_from_box_only)


def _check_image(image) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"ExportedPredictor: the image must be a numpy array (H, W, 3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"ExportedPredictor: the image must be (H, W, 3) with 3 colour channels in RGB order, got "
                         f"shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"ExportedPredictor: the image must be uint8 (0-255), got {image.dtype}")


class ExportedPredictor:
    """Runs an export of ``tools/export_model.py`` (any format) on single RGB images (H, W, 3) uint8.

    Args:
        path: the export folder, or its model file (the sidecar ``export.json`` sits next to it)
    """

    def __init__(self, path: str):
        self.sidecar, self.model_file = read_sidecar(path)
        self.device = torch.device(self.sidecar.device)
        self.run = load_runner(self.sidecar.format, self.model_file)
        self.input_format = self.sidecar.input_format
        self.augmentation = (
            T.ResizeShortestEdge(list(self.sidecar.resize_short_edge), self.sidecar.resize_max_size)
            if self.sidecar.resize_short_edge else None
        )
        self.metadata = Metadata(name="exported", thing_classes=list(self.sidecar.class_names))
        self.pixel_mean = torch.tensor(self.sidecar.pixel_mean, device=self.device).view(-1, 1, 1)
        self.pixel_std = torch.tensor(self.sidecar.pixel_std, device=self.device).view(-1, 1, 1)

    def _padded(self, image: torch.Tensor) -> torch.Tensor:
        """(3, h, w) normalised -> (1, 3, H, W) zero-padded to what the exported network takes."""
        s = self.sidecar
        if s.dynamic:
            batch = ImageList.from_tensors([image], s.size_divisibility).tensor
            h, w = batch.shape[-2:]
            if max(h, w) > s.max_side:
                raise ValueError(f"ExportedPredictor: the image is {tuple(image.shape[-2:])} after resizing, more "
                                 f"than the exported maximum side {s.max_side}")
            # below the exported minimum the network has too few tokens to select queries from: pad up
            return F.pad(batch, (0, max(0, s.min_side - w), 0, max(0, s.min_side - h)))
        height, width = s.image_size
        if image.shape[-2] > height or image.shape[-1] > width:
            raise ValueError(f"ExportedPredictor: the image is {tuple(image.shape[-2:])} after resizing, larger than "
                             f"the static exported input size {(height, width)}; export with --dynamic or a larger "
                             "--image-size")
        return F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))[None]

    @torch.no_grad()
    def predict_tensor(self, image: torch.Tensor, output_size: Tuple[int, int]) -> Instances:
        """Instances of size ``output_size`` for a (3, h, w) image in the sidecar's input format, already
        resized (as a detectron2 mapper gives it to ``DIMaskDINO``)."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"ExportedPredictor: the image tensor must be (3, H, W), got shape {tuple(image.shape)}")
        normalised = (image.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std
        batch = self._padded(normalised)
        outputs = self.run(batch)
        return instances_from_outputs(outputs, 0, batch.shape[-2:], image.shape[-2:], output_size, self.sidecar)

    def __call__(self, image_rgb: np.ndarray):
        """{"instances": Instances} in the image's size for an RGB (H, W, 3) uint8 image."""
        _check_image(image_rgb)
        height, width = image_rgb.shape[:2]
        image = image_rgb[:, :, ::-1] if self.input_format == "BGR" else image_rgb
        if self.augmentation is not None:
            image = self.augmentation.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"instances": self.predict_tensor(tensor, (height, width))}
