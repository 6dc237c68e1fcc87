"""The exported network: a normalised, padded image batch in, the final stage's raw head outputs out.

Resizing, normalisation and padding happen before it, and post-processing
(``dimaskdino.modeling.postprocess.postprocess_prediction``) after it, in :class:`ExportedPredictor`.
"""
import math
from typing import Tuple

import torch
from torch import nn

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "InferenceNetwork", "check_exportable", "minimum_input_side"]

INPUT_NAME = "images"
OUTPUT_NAMES = ("pred_logits", "pred_boxes", "pred_masks")


def check_exportable(model: nn.Module) -> None:
    """Raise a ValueError naming the part of ``model`` that the exported network cannot hold."""
    from ..modeling import DIMaskDINO

    if not isinstance(model, DIMaskDINO):
        raise ValueError(f"only the DIMaskDINO meta-architecture (MODEL.META_ARCHITECTURE 'DIMaskDINO' or "
                         f"'MaskDINO') can be exported, got {type(model).__name__}")
    if model.size_divisibility < 1:
        raise ValueError(f"MODEL.MaskDINO.SIZE_DIVISIBILITY resolves to {model.size_divisibility}: the export "
                         "needs a positive divisibility to pad images to (e.g. 32)")
    if model.pixel_mean.numel() != 3:
        raise ValueError(f"MODEL.PIXEL_MEAN has {model.pixel_mean.numel()} channels: only 3-channel images "
                         "can be exported")


class InferenceNetwork(nn.Module):
    """backbone + pixel decoder + predictor of a DIMaskDINO in eval mode, with tensor outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        check_exportable(model)
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head
        self.eval()

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            images: (B, 3, H, W) float32, normalised by the pixel mean and std, padded with zeros to a
                multiple of the size divisibility
        Returns:
            pred_logits: (B, Q, K) class logits; pred_boxes: (B, Q, 4) sigmoid cxcywh relative to (H, W);
            pred_masks: (B, Q, H/4, W/4) mask logits
        """
        final = self.sem_seg_head(self.backbone(images)).final  # a StagePrediction
        return final.logits, final.boxes, final.masks


def _encoder_strides(model: nn.Module):
    """Strides of the pixel decoder's encoder levels (backbone levels, then the extra stride-2 ones)."""
    decoder = model.sem_seg_head.pixel_decoder
    shapes = model.backbone.output_shape()
    strides = [shapes[name].stride for name in decoder.projected_features]
    extra = decoder.total_num_feature_levels - len(strides)
    coarsest = shapes[decoder.extra_source].stride
    return strides + [coarsest * 2 ** (k + 1) for k in range(extra)]


def minimum_input_side(model: nn.Module) -> int:
    """Smallest side (a multiple of the size divisibility) whose square image gives the query selection
    enough encoder tokens: the lower bound of the dynamic height and width."""
    divisibility = model.size_divisibility
    predictor = model.sem_seg_head.predictor
    needed = predictor.query_selection.num_selected
    strides = _encoder_strides(model)
    side = divisibility
    while sum(math.ceil(side / s) ** 2 for s in strides) < needed:
        side += divisibility
    return side
