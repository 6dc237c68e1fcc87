"""The embedded shapes dataset: determinism, annotation consistency, registration, caching."""
import filecmp
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from dimaskdino.data.datasets.embedded import (
    EMBEDDED_CLASSES,
    EMBEDDED_SPLITS,
    EMBEDDED_VERSION,
    generate_embedded_shapes,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"train": 24, "val": 12}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes_a"))
    generate_embedded_shapes(out, SMALL, processes=2)
    return out


def _load(out, split):
    with open(os.path.join(out, "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_generation_is_byte_identical(small_dataset, tmp_path):
    # the fixture rendered on several processes (the default), this one on one
    generate_embedded_shapes(str(tmp_path), SMALL, processes=1)
    files = _all_files(small_dataset)
    assert files == _all_files(str(tmp_path))
    assert len(files) == 2 + SMALL["train"] + SMALL["val"]
    match, mismatch, errors = filecmp.cmpfiles(small_dataset, str(tmp_path), files, shallow=False)
    assert not mismatch and not errors


def test_images_do_not_depend_on_split_size(small_dataset, tmp_path):
    # each image has its own random stream: the first images of a longer split are the same
    generate_embedded_shapes(str(tmp_path), {"val": 3})
    for i in range(3):
        name = f"val/{i:06d}.png"
        assert filecmp.cmp(os.path.join(small_dataset, name), os.path.join(str(tmp_path), name), shallow=False)


def test_masks_match_boxes_and_areas(small_dataset):
    coco = _load(small_dataset, "train")
    assert [c["name"] for c in coco["categories"]] == list(EMBEDDED_CLASSES)
    assert len(coco["annotations"]) > SMALL["train"]  # several shapes per image on average
    for ann in coco["annotations"]:
        mask = mask_util.decode(ann["segmentation"])
        ys, xs = np.nonzero(mask)
        expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["bbox"] == [float(v) for v in expected]
        assert ann["area"] == len(xs)
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(EMBEDDED_CLASSES)


def test_visible_masks_are_disjoint_and_follow_the_pixels(small_dataset):
    """Visible masks never overlap, and each one covers a region whose colour differs from
    the pixels just outside it (the mask follows what is drawn)."""
    coco = _load(small_dataset, "val")
    contrasts = []
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        if not anns:
            continue
        pixels = cv2.imread(os.path.join(small_dataset, image["file_name"]))[:, :, ::-1].astype(float)
        assert pixels.shape == (image["height"], image["width"], 3)
        masks = np.stack([mask_util.decode(a["segmentation"]) for a in anns])
        assert masks.sum(0).max() == 1
        union = masks.max(0)
        for mask in masks:
            ring = cv2.dilate(mask, np.ones((5, 5), np.uint8)) - mask
            ring = ring & (1 - union)
            inner = cv2.erode(mask, np.ones((3, 3), np.uint8))
            if ring.sum() < 10 or inner.sum() < 10:
                continue
            inside = pixels[inner.astype(bool)].mean(0)
            outside = pixels[ring.astype(bool)].mean(0)
            contrasts.append(np.abs(inside - outside).sum())
    assert len(contrasts) > 10
    assert np.median(contrasts) > 60


def test_some_images_have_occlusions_and_some_are_empty(tmp_path):
    generate_embedded_shapes(str(tmp_path), {"train": 120})
    coco = _load(str(tmp_path), "train")
    per_image = {img["id"]: 0 for img in coco["images"]}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] += 1
    assert min(per_image.values()) == 0 and max(per_image.values()) >= 5
    # an occluded shape is not convex-like any more: its mask area is well below its box area
    fill = [a["area"] / (a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"]]
    assert min(fill) < 0.35
    sizes = [max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"]]
    assert min(sizes) < 20 and max(sizes) > 50


def _run(code, cache):
    env = dict(os.environ, DIMASKDINO_CACHE=cache, PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_registration_and_concurrent_first_use(tmp_path):
    """Two processes requesting the dataset at once: one generates it, both read the same."""
    code = (
        "import dimaskdino.data\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "d = DatasetCatalog.get('embedded_shapes_val')\n"
        "m = MetadataCatalog.get('embedded_shapes_val')\n"
        "print(len(d), sum(len(r['annotations']) for r in d), m.thing_classes, m.json_file)\n"
    )
    procs = [_run(code, str(tmp_path)) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    lines = [out.strip().splitlines()[-1] for out, _ in outs]
    assert lines[0] == lines[1]
    dataset_dir = os.path.join(str(tmp_path), "embedded_shapes", EMBEDDED_VERSION)
    num_val = EMBEDDED_SPLITS["embedded_shapes_val"][1]
    assert lines[0].startswith(f"{num_val} ")
    assert str(list(EMBEDDED_CLASSES)) in lines[0]
    assert os.path.join(dataset_dir, "annotations", "instances_val.json") in lines[0]
    # no temporary folder left behind, all images present
    assert sorted(os.listdir(os.path.dirname(dataset_dir))) == [f".{EMBEDDED_VERSION}.lock", EMBEDDED_VERSION]
    assert len(os.listdir(os.path.join(dataset_dir, "val"))) == num_val
    assert len(os.listdir(os.path.join(dataset_dir, "train"))) == EMBEDDED_SPLITS["embedded_shapes_train"][1]
