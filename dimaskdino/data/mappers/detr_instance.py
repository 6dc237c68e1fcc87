"""DETR-style instance mapper, the authors' "coco_instance_detr".

Training: a random flip, then a resize of the shorter side to one of INPUT.MIN_SIZE_TRAIN (longer
side at most MAX_SIZE_TRAIN); with INPUT.CROP.ENABLED, half of the images are first resized to a
shorter side of 400/500/600 and randomly cropped (INPUT.CROP.TYPE/SIZE) before that final resize.
Evaluation: the shorter-side resize with MIN/MAX_SIZE_TEST only. Boxes are the transformed
annotation boxes (clipped to the image), not recomputed from the masks.
"""
import copy
import logging
from typing import List

from detectron2.config import configurable
from detectron2.data import transforms as T

from .coco_instance_lsj import build_flip
from .instance_targets import attach_instances, read_and_augment

__all__ = ["DETRInstanceDatasetMapper", "build_detr_augmentation"]

logger = logging.getLogger(__name__)

# The authors' intermediate resize before the random crop (from DETR).
CROP_PRE_RESIZE_SIZES = (400, 500, 600)


def build_detr_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    min_sizes = cfg.INPUT.MIN_SIZE_TRAIN
    if sample_style == "range" and len(min_sizes) != 2:
        raise ValueError(
            f"INPUT.MIN_SIZE_TRAIN must hold 2 sizes with MIN_SIZE_TRAIN_SAMPLING='range', got {min_sizes}"
        )
    resize = T.ResizeShortestEdge(min_sizes, cfg.INPUT.MAX_SIZE_TRAIN, sample_style)
    augmentations = build_flip(cfg.INPUT.RANDOM_FLIP)
    if cfg.INPUT.CROP.ENABLED:
        resize_and_crop = T.AugmentationList(
            [
                T.ResizeShortestEdge(list(CROP_PRE_RESIZE_SIZES), sample_style="choice"),
                T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
            ]
        )
        augmentations.append(T.RandomApply(resize_and_crop, prob=0.5))
    return augmentations + [resize]


class DETRInstanceDatasetMapper:
    """Maps a dataset dict to the model's input with DETR-style resizing.

    The output dict has "image" (3, H, W) uint8 and, in training, "instances" with gt_boxes,
    gt_classes and gt_masks (BitMasks), without empty instances.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List[T.Augmentation], image_format: str):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        mode = "training" if is_train else "inference"
        logger.info(f"[DETRInstanceDatasetMapper] augmentations in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_detr_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        transforms = read_and_augment(dataset_dict, self.augmentations, self.image_format)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        return attach_instances(dataset_dict, transforms, boxes_from_masks=False)
