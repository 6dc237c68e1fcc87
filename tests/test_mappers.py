"""The training dataset mappers on synthetic images whose objects are painted in distinct colours,
so that each output mask can be checked against the pixels of its object in the output image."""
import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, BoxMode

from dimaskdino.data.mappers import (
    COCOInstanceLSJDatasetMapper,
    DETRInstanceDatasetMapper,
    build_train_mapper,
)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _cfg(mapper="coco_instance_lsj", image_size=128, min_scale=1.0, max_scale=1.0, flip="none"):
    cfg = get_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = mapper
    cfg.INPUT.IMAGE_SIZE = image_size
    cfg.INPUT.MIN_SCALE = min_scale
    cfg.INPUT.MAX_SCALE = max_scale
    cfg.INPUT.RANDOM_FLIP = flip
    cfg.INPUT.FORMAT = "RGB"
    return cfg


def _scene(tmp_path, size=64):
    """An image with a polygon square, an RLE disk and a crowd region, each in its own colour."""
    image = np.zeros((size, size, 3), np.uint8)
    square = [8.0, 8.0, 28.0, 8.0, 28.0, 28.0, 8.0, 28.0]
    cv2.rectangle(image, (8, 8), (27, 27), COLORS[0], thickness=-1)
    disk = np.zeros((size, size), np.uint8)
    cv2.circle(disk, (44, 40), 10, 1, thickness=-1)
    image[disk > 0] = COLORS[1]
    crowd = np.zeros((size, size), np.uint8)
    crowd[50:60, 5:15] = 1
    image[crowd > 0] = COLORS[2]
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), image[:, :, ::-1])

    def rle(mask):
        encoded = mask_util.encode(np.asfortranarray(mask))
        encoded["counts"] = encoded["counts"].decode()
        return encoded

    def annotation(xywh, category, segmentation, **extra):
        return {"bbox": xywh, "bbox_mode": BoxMode.XYWH_ABS, "category_id": category,
                "segmentation": segmentation, **extra}

    annotations = [
        annotation([8.0, 8.0, 20.0, 20.0], 0, [square]),
        annotation([34.0, 30.0, 21.0, 21.0], 1, rle(disk)),
        annotation([5.0, 50.0, 10.0, 10.0], 2, rle(crowd), iscrowd=1),
    ]
    return {"file_name": str(path), "height": size, "width": size, "image_id": 0, "annotations": annotations}


def _colour_region(image, colour):
    """(H, W) bool: pixels of the CHW uint8 image close to the colour."""
    diff = (image.permute(1, 2, 0).int() - torch.tensor(colour)).abs().sum(-1)
    return diff < 60


def _iou(a, b):
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def _check_instances_match_image(out):
    instances = out["instances"]
    image = out["image"]
    assert isinstance(instances.gt_masks, BitMasks)
    assert instances.gt_masks.tensor.shape[1:] == image.shape[1:]
    assert instances.gt_classes.dtype == torch.int64
    for box, label, mask in zip(instances.gt_boxes.tensor, instances.gt_classes, instances.gt_masks.tensor):
        if mask.sum() < 30:  # a sliver left by the crop: its colour is blurred by the resize
            continue
        region = _colour_region(image, COLORS[int(label)])
        assert _iou(mask, region) > 0.85
        ys, xs = torch.nonzero(mask, as_tuple=True)
        tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float)
        assert torch.allclose(box, tight, atol=1.5), (box, tight)


def test_lsj_mapper_scales_pads_and_keeps_masks_and_tight_boxes(tmp_path):
    out = COCOInstanceLSJDatasetMapper(_cfg(image_size=128), is_train=True)(_scene(tmp_path))
    assert out["image"].shape == (3, 128, 128) and out["image"].dtype == torch.uint8
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [0, 1]  # the crowd region is dropped
    # The polygon square [8, 28] scaled by 2: its box comes from the polygon, exactly.
    assert instances.gt_boxes.tensor[0].tolist() == [16.0, 16.0, 56.0, 56.0]
    _check_instances_match_image(out)


@pytest.mark.parametrize("seed", range(6))
def test_lsj_mapper_random_crop_and_flip(tmp_path, seed):
    np.random.seed(seed)
    mapper = COCOInstanceLSJDatasetMapper(
        _cfg(image_size=64, min_scale=1.5, max_scale=2.0, flip="horizontal"), is_train=True
    )
    out = mapper(_scene(tmp_path))
    assert out["image"].shape == (3, 64, 64)
    instances = out["instances"]
    # Objects cropped away are gone; the visible ones are kept with their pixels.
    for label in (0, 1):
        visible_pixels = _colour_region(out["image"], COLORS[label]).sum().item()
        kept = label in instances.gt_classes.tolist()
        assert kept or visible_pixels < 5
    assert instances.gt_masks.tensor.flatten(1).any(1).all()
    _check_instances_match_image(out)


def test_lsj_mapper_zero_instance_image(tmp_path):
    scene = _scene(tmp_path)
    scene["annotations"] = []
    out = COCOInstanceLSJDatasetMapper(_cfg(), is_train=True)(scene)
    instances = out["instances"]
    assert len(instances) == 0
    assert instances.gt_masks.tensor.shape == (0, 128, 128)
    assert instances.gt_boxes.tensor.shape == (0, 4)


def test_lsj_mapper_refuses_inference_and_missing_segmentation(tmp_path):
    with pytest.raises(ValueError, match="training mapper"):
        COCOInstanceLSJDatasetMapper(_cfg(), is_train=False)
    scene = _scene(tmp_path)
    del scene["annotations"][0]["segmentation"]
    with pytest.raises(ValueError, match="segmentation"):
        COCOInstanceLSJDatasetMapper(_cfg(), is_train=True)(scene)


def test_detr_mapper_resizes_shorter_side_and_keeps_annotation_boxes(tmp_path):
    cfg = _cfg(mapper="coco_instance_detr")
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    out = DETRInstanceDatasetMapper(cfg, is_train=True)(_scene(tmp_path))
    assert out["image"].shape == (3, 96, 96)
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [0, 1]
    # Annotation boxes scaled by 1.5, not recomputed from the masks.
    assert instances.gt_boxes.tensor[0].tolist() == [12.0, 12.0, 42.0, 42.0]
    assert instances.gt_boxes.tensor[1].tolist() == [51.0, 45.0, 82.5, 76.5]
    _check_instances_match_image(out)


def test_detr_mapper_with_crop_and_in_inference(tmp_path):
    cfg = _cfg(mapper="coco_instance_detr", flip="horizontal")
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [300, 300]
    mapper = DETRInstanceDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    for _ in range(4):
        out = mapper(_scene(tmp_path))
        assert min(out["image"].shape[1:]) == 64
        assert out["instances"].gt_masks.tensor.shape[1:] == out["image"].shape[1:]
    cfg.INPUT.MIN_SIZE_TEST = 32
    out = DETRInstanceDatasetMapper(cfg, is_train=False)(_scene(tmp_path))
    assert out["image"].shape == (3, 32, 32)
    assert "instances" not in out and "annotations" not in out


def test_build_train_mapper_by_name():
    assert isinstance(build_train_mapper(_cfg("coco_instance_lsj")), COCOInstanceLSJDatasetMapper)
    assert isinstance(build_train_mapper(_cfg("coco_instance_detr")), DETRInstanceDatasetMapper)
    with pytest.raises(ValueError, match="DATASET_MAPPER_NAME"):
        build_train_mapper(_cfg("MaskDINO_semantic"))
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        build_train_mapper(_cfg(flip="diagonal"))


def _random_rle_annotations(rng, count, size):
    """``count`` random COCO-RLE objects (discs and rectangles, some overlapping, some at the
    border) of a size x size image, boxes in XYWH or XYXY."""
    annotations = []
    for k in range(count):
        mask = np.zeros((size, size), np.uint8)
        if k % 2:
            cv2.circle(mask, tuple(int(v) for v in rng.integers(0, size, 2)), int(rng.integers(2, size // 3)), 1, -1)
        else:
            x0, y0 = rng.integers(-5, size - 4, 2)
            mask[max(y0, 0):y0 + rng.integers(3, size // 2), max(x0, 0):x0 + rng.integers(3, size // 2)] = 1
        encoded = mask_util.encode(np.asfortranarray(mask))
        if k % 3:
            encoded["counts"] = encoded["counts"].decode()
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs) else (0.0,) * 4
        xyxy = k % 4 == 3
        annotations.append({
            "bbox": [x0, y0, x1, y1] if xyxy else [x0, y0, x1 - x0, y1 - y0],
            "bbox_mode": BoxMode.XYXY_ABS if xyxy else BoxMode.XYWH_ABS,
            "category_id": int(rng.integers(0, 4)), "segmentation": encoded,
        })
    return annotations


@pytest.mark.parametrize("count", [1, 3, 8, 9, 17])
@pytest.mark.parametrize("boxes_from_masks", [True, False])
def test_rle_masks_transformed_together_equal_detectron2_one_by_one(count, boxes_from_masks, monkeypatch):
    """The packed-bits path (all masks of an image transformed in one go) against detectron2's
    per-annotation transform, over random LSJ draws with flips, crops and padding."""
    import copy

    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    from dimaskdino.data.mappers import instance_targets
    from dimaskdino.data.mappers.coco_instance_lsj import build_lsj_augmentation

    rng = np.random.default_rng(count)
    augmentation = T.AugmentationList(build_lsj_augmentation(_cfg(image_size=64, min_scale=0.5, max_scale=1.6, flip="horizontal")))
    one_by_one = utils.transform_instance_annotations
    kept = 0
    for trial in range(6):
        annotations = _random_rle_annotations(rng, count, size=80)
        aug_input = T.AugInput(np.zeros((80, 80, 3), np.uint8))
        transforms = augmentation(aug_input)
        shape = aug_input.image.shape[:2]

        reference = [one_by_one(copy.deepcopy(obj), transforms, shape) for obj in annotations]
        expected = utils.annotations_to_instances(reference, shape, mask_format="bitmask")
        if boxes_from_masks:
            expected.gt_boxes = expected.gt_masks.get_bounding_boxes()
        expected = utils.filter_empty_instances(expected)

        def refuse(*args, **kwargs):
            raise AssertionError("RLE annotations were transformed one by one")

        monkeypatch.setattr(instance_targets.utils, "transform_instance_annotations", refuse)
        got = instance_targets.instances_from_annotations(
            copy.deepcopy(annotations), transforms, shape, boxes_from_masks=boxes_from_masks
        )
        monkeypatch.setattr(instance_targets.utils, "transform_instance_annotations", one_by_one)
        assert len(got) == len(expected), trial
        kept += len(got)
        assert torch.equal(got.gt_masks.tensor, expected.gt_masks.tensor), trial
        assert torch.equal(got.gt_boxes.tensor, expected.gt_boxes.tensor), trial
        assert torch.equal(got.gt_classes, expected.gt_classes), trial
    assert kept >= count  # the crops left objects to compare


def test_mixed_polygon_and_rle_annotations_still_transformed_one_by_one(tmp_path):
    """A polygon among the RLEs: the whole image goes through detectron2's per-annotation path
    (polygons keep sub-pixel boxes there), with the same result as before."""
    from detectron2.data import transforms as T

    from dimaskdino.data.mappers.instance_targets import _transform_annotations_together

    annotations = _scene(tmp_path)["annotations"][:2]
    transforms = T.TransformList([T.NoOpTransform()])
    assert _transform_annotations_together(annotations, transforms, (64, 64)) is None
    assert _transform_annotations_together(annotations[1:], transforms, (64, 64)) is not None
    assert _transform_annotations_together(annotations[1:], T.TransformList([T.RotationTransform(64, 64, 10)]), (64, 64)) is None
