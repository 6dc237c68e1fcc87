"""Large-scale-jitter (LSJ) instance mapper, the authors' "coco_instance_lsj".

Training-time only: a random flip, a resize of the image by a random factor in
[MIN_SCALE, MAX_SCALE] of an IMAGE_SIZE x IMAGE_SIZE square (aspect ratio kept), then a random
IMAGE_SIZE x IMAGE_SIZE crop, padded when the image is smaller. Boxes are recomputed from the
transformed masks so that they stay tight after the crop.
"""
import copy
import logging
from typing import List

from detectron2.config import configurable
from detectron2.data import transforms as T

from .instance_targets import attach_instances, read_and_augment

__all__ = ["COCOInstanceLSJDatasetMapper", "build_lsj_augmentation"]

logger = logging.getLogger(__name__)


def build_flip(random_flip: str) -> List[T.Augmentation]:
    """INPUT.RANDOM_FLIP: "none", "horizontal" or "vertical"."""
    if random_flip not in ("none", "horizontal", "vertical"):
        raise ValueError(
            f"INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {random_flip!r}"
        )
    if random_flip == "none":
        return []
    return [T.RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")]


def build_lsj_augmentation(cfg) -> List[T.Augmentation]:
    """Flip, ResizeScale and FixedSizeCrop from INPUT.RANDOM_FLIP, IMAGE_SIZE, MIN/MAX_SCALE."""
    size = cfg.INPUT.IMAGE_SIZE
    if not 0 < cfg.INPUT.MIN_SCALE <= cfg.INPUT.MAX_SCALE:
        raise ValueError(
            "INPUT.MIN_SCALE and INPUT.MAX_SCALE must satisfy 0 < MIN_SCALE <= MAX_SCALE, got "
            f"{cfg.INPUT.MIN_SCALE} and {cfg.INPUT.MAX_SCALE}"
        )
    return build_flip(cfg.INPUT.RANDOM_FLIP) + [
        T.ResizeScale(
            min_scale=cfg.INPUT.MIN_SCALE,
            max_scale=cfg.INPUT.MAX_SCALE,
            target_height=size,
            target_width=size,
        ),
        T.FixedSizeCrop(crop_size=(size, size)),
    ]


class COCOInstanceLSJDatasetMapper:
    """Maps a dataset dict to the model's training input with LSJ augmentation.

    The output dict has "image" (3, H, W) uint8 in ``image_format`` and, when the input has
    "annotations", "instances" with gt_boxes, gt_classes and gt_masks (BitMasks); images whose
    instances are all cropped away (or that have none) get empty Instances.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List[T.Augmentation], image_format: str):
        if not is_train:
            raise ValueError(
                "COCOInstanceLSJDatasetMapper is a training mapper (is_train=True); evaluation "
                "uses detectron2's DatasetMapper"
            )
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        logger.info(f"[COCOInstanceLSJDatasetMapper] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_lsj_augmentation(cfg),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        transforms = read_and_augment(dataset_dict, self.augmentations, self.image_format)
        return attach_instances(dataset_dict, transforms, boxes_from_masks=True)
