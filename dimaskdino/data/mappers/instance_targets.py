"""Turning an image's transformed annotations into the training ``Instances`` of DI-MaskDINO."""
from typing import List, Tuple

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, PolygonMasks

from ..image_io import read_image

__all__ = ["attach_instances", "instances_from_annotations", "read_and_augment"]


def read_and_augment(dataset_dict: dict, augmentations: T.AugmentationList, image_format: str):
    """Read the image of ``dataset_dict``, apply the augmentations and store it as its "image"
    (3, H, W) uint8 tensor (in place). Returns the transforms applied."""
    image = read_image(dataset_dict["file_name"], format=image_format)
    utils.check_image_size(dataset_dict, image)
    aug_input = T.AugInput(image)
    transforms = augmentations(aug_input)
    dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    return transforms


def _all_polygons(annotations: List[dict]) -> bool:
    return all(isinstance(obj["segmentation"], list) for obj in annotations)


def instances_from_annotations(
    annotations: List[dict],
    transforms: T.TransformList,
    image_shape: Tuple[int, int],
    *,
    boxes_from_masks: bool,
    file_name: str = "<unknown>",
) -> Instances:
    """Transform the non-crowd annotations of one image and build its ``Instances``.

    Args:
        annotations: the image's annotations in detectron2's dataset format; each needs a
            "segmentation" (polygons, COCO RLE or a binary mask array).
        transforms: the transforms applied to the image.
        image_shape: (H, W) of the transformed image.
        boxes_from_masks: recompute each box as the tight box of its transformed mask (what the
            authors' LSJ mapper does, so that cropping gives tight boxes); otherwise keep the
            transformed annotation box.
        file_name: named in the error raised for an annotation without a segmentation.
    Returns:
        Instances with gt_boxes (Boxes, absolute XYXY), gt_classes (N,) int64 and gt_masks
        (BitMasks of (N, H, W)), without empty instances; N may be 0.
    """
    annotations = [obj for obj in annotations if obj.get("iscrowd", 0) == 0]
    missing = [i for i, obj in enumerate(annotations) if "segmentation" not in obj]
    if missing:
        raise ValueError(
            f"{file_name}: annotation(s) {missing} have no 'segmentation'; instance-segmentation "
            "training needs a mask for every instance"
        )
    annotations = [
        utils.transform_instance_annotations(obj, transforms, image_shape) for obj in annotations
    ]
    # Polygons keep sub-pixel box extents through the transforms (as the authors' mapper);
    # RLE and mask arrays are already rasterised.
    mask_format = "polygon" if _all_polygons(annotations) else "bitmask"
    instances = utils.annotations_to_instances(annotations, image_shape, mask_format=mask_format)
    if not instances.has("gt_masks"):  # no annotation at all
        instances.gt_masks = BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
    if boxes_from_masks:
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances = utils.filter_empty_instances(instances)
    if isinstance(instances.gt_masks, PolygonMasks):
        instances.gt_masks = BitMasks.from_polygon_masks(instances.gt_masks, *image_shape)
    return instances


def attach_instances(dataset_dict: dict, transforms: T.TransformList, boxes_from_masks: bool) -> dict:
    """Replace the "annotations" of a mapped ``dataset_dict`` (its "image" already stored) by
    training "instances" (in place; nothing to do without annotations). Returns ``dataset_dict``."""
    if "annotations" in dataset_dict:
        dataset_dict["instances"] = instances_from_annotations(
            dataset_dict.pop("annotations"),
            transforms,
            tuple(dataset_dict["image"].shape[1:]),
            boxes_from_masks=boxes_from_masks,
            file_name=dataset_dict["file_name"],
        )
    return dataset_dict
