"""``sem_seg_head``: the pixel decoder followed by the query predictor.

Registered in detectron2's ``SEM_SEG_HEADS_REGISTRY`` as "MaskDINOHead", the name in the authors' yaml.
"""
from typing import Dict

from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .pixel_decoder import build_pixel_decoder
from .predictor import build_transformer_decoder

__all__ = ["MaskDINOHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class MaskDINOHead(nn.Module):
    """Holds ``pixel_decoder`` and ``predictor`` (the published checkpoints' module names)."""

    @configurable
    def __init__(self, *, num_classes: int, pixel_decoder: nn.Module, predictor: nn.Module):
        super().__init__()
        self.num_classes = num_classes
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "predictor": build_transformer_decoder(cfg),
        }

    def forward(self, features, targets=None, all_stages: bool = False):
        """
        Args:
            features: backbone outputs, name -> (B, C, H, W)
            targets: training targets (see ``DIMaskDINO.prepare_targets``) or None
            all_stages: outside training, also predict every intermediate stage
        Returns:
            the predictor's :class:`dimaskdino.modeling.outputs.PredictorOutput`
        """
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.predictor(multi_scale_features, mask_features, targets=targets, all_stages=all_stages)
