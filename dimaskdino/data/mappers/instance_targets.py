"""Turning an image's transformed annotations into the training ``Instances`` of DI-MaskDINO."""
from typing import List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, Instances, PolygonMasks

from ..image_io import read_image

__all__ = ["attach_instances", "instances_from_annotations", "read_and_augment", "transform_packed_masks"]


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


def _moves_mask_values_unchanged(transform) -> bool:
    """True for the transforms whose ``apply_segmentation`` only moves, copies or drops pixels
    (nearest-neighbour resize, crop, zero padding, flips), so that a pixel's value, whatever its
    bits, ends up unchanged wherever it lands."""
    if type(transform) is T.PadTransform:
        return transform.seg_pad_value == 0
    # Exact types: a subclass may transform segmentations otherwise.
    return type(transform) in (
        T.ResizeTransform, T.CropTransform, T.HFlipTransform, T.VFlipTransform, T.NoOpTransform
    )


def _decode_compressed_rles(annotations: List[dict]) -> Optional[np.ndarray]:
    """(H, W, N) uint8 masks of ``annotations`` in one decoding call when every segmentation is a
    compressed COCO RLE and all have the same size; None otherwise (polygons, uncompressed RLE)."""
    segms = [obj["segmentation"] for obj in annotations]
    if not all(isinstance(s, dict) and isinstance(s.get("counts"), (str, bytes)) for s in segms):
        return None
    if len({tuple(s["size"]) for s in segms}) != 1:
        return None
    return mask_util.decode(segms)


def transform_packed_masks(masks: np.ndarray, transforms: T.TransformList) -> np.ndarray:
    """(H, W, N) 0/1 uint8 masks -> (N, h, w) uint8, eight masks per ``apply_segmentation`` call:
    mask k of a group is bit k of one uint8 image (numpy's packbits is slower at these sizes)."""
    planes = []
    for start in range(0, masks.shape[2], 8):
        group = masks[:, :, start:start + 8]
        packed = np.zeros(group.shape[:2], np.uint8)
        for bit in range(group.shape[2]):
            packed |= group[:, :, bit] << bit
        moved = transforms.apply_segmentation(packed)
        planes.append((moved[None] >> np.arange(group.shape[2], dtype=np.uint8)[:, None, None]) & 1)
    return np.concatenate(planes)


def _transform_annotations_together(
    annotations: List[dict], transforms: T.TransformList, image_shape: Tuple[int, int]
) -> Optional[List[dict]]:
    """What ``detectron2.data.detection_utils.transform_instance_annotations`` gives for each
    annotation (in place, the same list), in a few calls for the whole image, when every
    segmentation is a compressed RLE; None where that would not be exact (keypoints, polygons,
    transforms that mix pixel values), for the caller to transform them one by one.

    The masks travel as bits: up to 8 masks are packed into one uint8 image (mask k in bit k),
    transformed once and unpacked, which is exact because every transform accepted here moves
    pixel values without mixing them (``_moves_mask_values_unchanged``).
    """
    if not annotations or any("keypoints" in obj for obj in annotations):
        return None
    if not all(_moves_mask_values_unchanged(t) for t in transforms.transforms):
        return None
    masks = _decode_compressed_rles(annotations)
    if masks is None:
        return None
    masks = transform_packed_masks(masks, transforms)
    if masks.shape[1:] != tuple(image_shape):
        return None  # detectron2's own path raises for this

    # Boxes as detectron2 converts them (each on its own, in float32), then moved together.
    boxes = np.array([BoxMode.convert(obj["bbox"], obj["bbox_mode"], BoxMode.XYXY_ABS) for obj in annotations],
                     dtype=np.float64)
    boxes = np.minimum(transforms.apply_box(boxes).clip(min=0), list(image_shape + image_shape)[::-1])
    for obj, box, mask in zip(annotations, boxes, masks):
        obj.update(bbox=box, bbox_mode=BoxMode.XYXY_ABS, segmentation=mask)
    return annotations


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
    together = _transform_annotations_together(annotations, transforms, image_shape)
    annotations = together if together is not None else [
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
