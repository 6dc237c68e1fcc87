"""BDD100K instance segmentation: Scalabel fixture -> detectron2 dicts -> COCO evaluation."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances

import dimaskdino.data  # noqa: F401  (registers the datasets)
from dimaskdino.data.datasets.bdd100k import (
    BDD100K_INS_SEG_CLASSES,
    load_bdd100k_ins_seg,
    register_bdd100k_ins_seg,
)
from dimaskdino.evaluation import build_evaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 48, 64


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box_mask(x0, y0, x1, y1):
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _write_fixture(root, split="val"):
    """A 3-frame Scalabel file in the official layout; returns (masks by label id, label file)."""
    img_dir = os.path.join(root, "images", "10k", split)
    lbl_dir = os.path.join(root, "labels", "ins_seg", "rles")
    os.makedirs(img_dir)
    os.makedirs(lbl_dir)
    blob = np.zeros((H, W), np.uint8)
    cv2.circle(blob, (40, 20), 9, 1, -1)
    masks = {
        "car": _box_mask(3, 5, 20, 30),
        "person": blob,  # alias of pedestrian
        "otherveh": _box_mask(45, 30, 60, 44),  # ignored region, counted as a crowd car
        "crowdbike": _box_mask(22, 34, 34, 46),  # bicycle with the crowd attribute
        "light": _box_mask(0, 0, 5, 5),  # not an instance category: skipped
        "bus": _box_mask(10, 10, 50, 40),
    }
    frames = [
        {
            "name": "a.jpg",
            "attributes": {"weather": "clear"},
            "labels": [
                {"id": "1", "category": "car", "attributes": {"crowd": False}, "rle": _rle(masks["car"])},
                {"id": "2", "category": "person", "attributes": {}, "rle": _rle(masks["person"])},
                {"id": "3", "category": "other vehicle", "rle": _rle(masks["otherveh"])},
                {"id": "4", "category": "bicycle", "attributes": {"crowd": True}, "rle": _rle(masks["crowdbike"])},
                {"id": "5", "category": "traffic light", "rle": _rle(masks["light"])},
                {"id": "6", "category": "car", "rle": _rle(np.zeros((H, W), np.uint8))},  # empty mask
            ],
        },
        {"name": "b.jpg", "labels": None},  # no instances
        {"name": "c.jpg", "labels": [{"id": "7", "category": "bus", "rle": _rle(masks["bus"])}]},
    ]
    for frame in frames:
        cv2.imwrite(os.path.join(img_dir, frame["name"]), np.full((H, W, 3), 127, np.uint8))
    label_file = os.path.join(lbl_dir, f"ins_seg_{split}.json")
    with open(label_file, "w") as f:
        json.dump(frames, f)
    return masks, label_file, img_dir


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def test_load_matches_pycocotools_round_trip(tmp_path):
    masks, label_file, img_dir = _write_fixture(str(tmp_path))
    records = load_bdd100k_ins_seg(label_file, img_dir)
    assert [r["file_name"] for r in records] == [os.path.join(img_dir, n) for n in ("a.jpg", "b.jpg", "c.jpg")]
    assert [r["image_id"] for r in records] == [1, 2, 3]
    assert all((r["height"], r["width"]) == (H, W) for r in records)
    anns = records[0]["annotations"]
    # (mask key, class name, iscrowd): the traffic light and the empty mask are dropped
    expected = [
        ("car", "car", 0),
        ("person", "pedestrian", 0),
        ("otherveh", "car", 1),
        ("crowdbike", "bicycle", 1),
    ]
    assert len(anns) == len(expected)
    for ann, (key, cls, crowd) in zip(anns, expected):
        decoded = mask_util.decode(ann["segmentation"])
        np.testing.assert_array_equal(decoded, masks[key])
        assert ann["bbox"] == _tight_box(masks[key])
        assert ann["bbox_mode"] == BoxMode.XYWH_ABS
        assert BDD100K_INS_SEG_CLASSES[ann["category_id"]] == cls
        assert ann["iscrowd"] == crowd
    assert records[1]["annotations"] == []
    assert BDD100K_INS_SEG_CLASSES[records[2]["annotations"][0]["category_id"]] == "bus"


def test_poly2d_labels_rasterise_like_pycocotools(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    square = [[10.0, 10.0], [30.0, 10.0], [30.0, 25.0], [10.0, 25.0]]
    bulge = [[10.0, 10.0], [30.0, 10.0], [40.0, 15.0], [40.0, 20.0], [30.0, 25.0], [10.0, 25.0]]
    frames = [
        {
            "name": "p.jpg",
            "labels": [
                {"id": "1", "category": "truck", "poly2d": [{"vertices": square, "types": "LLLL", "closed": True}]},
                {"id": "2", "category": "truck", "poly2d": [{"vertices": bulge, "types": "LLCCLL", "closed": True}]},
            ],
        }
    ]
    label_file = tmp_path / "labels.json"
    label_file.write_text(json.dumps({"frames": frames}))
    (ann_square, ann_bulge), = [r["annotations"] for r in load_bdd100k_ins_seg(str(label_file), str(img_dir))]
    reference = mask_util.decode(mask_util.frPyObjects([sum(square, [])], 720, 1280))[:, :, 0]
    np.testing.assert_array_equal(mask_util.decode(ann_square["segmentation"]), reference)
    # the cubic curve through controls at x=40 bulges right of x=30, but not as far as x=40
    bulge_mask = mask_util.decode(ann_bulge["segmentation"])
    x_right = np.nonzero(bulge_mask.any(0))[0].max()
    assert 31 <= x_right < 40
    assert bulge_mask.sum() > reference.sum()


def test_bad_inputs_name_the_file(tmp_path):
    _, label_file, img_dir = _write_fixture(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_bdd100k_ins_seg(str(tmp_path / "missing.json"), img_dir)
    with pytest.raises(FileNotFoundError, match="no_images"):
        load_bdd100k_ins_seg(label_file, str(tmp_path / "no_images"))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"name": "a.jpg", "labels": [')
    with pytest.raises(ValueError, match="broken.json"):
        load_bdd100k_ins_seg(str(broken), img_dir)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"images": []}')
    with pytest.raises(ValueError, match="Scalabel"):
        load_bdd100k_ins_seg(str(wrong), img_dir)


def _perfect_predictions(record, extra=()):
    """Instances predicting every non-crowd GT exactly (score 0.9), plus ``extra`` (mask, class, score)."""
    items = [
        (mask_util.decode(a["segmentation"]), a["category_id"], 0.9)
        for a in record["annotations"]
        if not a["iscrowd"]
    ] + list(extra)
    inst = Instances((record["height"], record["width"]))
    masks = torch.as_tensor(np.stack([m for m, _, _ in items])) if items else torch.zeros(0, H, W)
    inst.pred_masks = masks.bool()
    inst.pred_boxes = BitMasks(masks).get_bounding_boxes() if items else Boxes(torch.zeros(0, 4))
    inst.scores = torch.tensor([s for _, _, s in items], dtype=torch.float32)
    inst.pred_classes = torch.tensor([c for _, c, _ in items], dtype=torch.int64)
    return {"instances": inst}


def test_coco_evaluation_ignores_crowd_regions(tmp_path):
    masks, label_file, img_dir = _write_fixture(str(tmp_path))
    name = "bdd100k_ins_seg_fixture_eval"
    register_bdd100k_ins_seg(name, label_file, img_dir)
    records = DatasetCatalog.get(name)
    evaluator = build_evaluator(None, name, str(tmp_path / "eval"))
    evaluator.reset()
    car = BDD100K_INS_SEG_CLASSES.index("car")
    for record in records:
        # a confident detection inside the ignored "other vehicle" region (a quarter of it:
        # IoU 0.25 with a normal instance) must not count as a false positive
        extra = [(_box_mask(45, 30, 52, 37), car, 0.99)] if record["image_id"] == 1 else []
        evaluator.process([{"image_id": record["image_id"]}], [_perfect_predictions(record, extra)])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert MetadataCatalog.get(name).thing_classes == list(BDD100K_INS_SEG_CLASSES)


def test_default_registration_reads_detectron2_datasets(tmp_path):
    _write_fixture(str(tmp_path / "bdd100k"))
    code = (
        "import dimaskdino.data\n"
        "from detectron2.data import DatasetCatalog\n"
        "d = DatasetCatalog.get('bdd100k_ins_seg_val')\n"
        "print(len(d), sum(len(r['annotations']) for r in d))\n"
        "try:\n"
        "    DatasetCatalog.get('bdd100k_ins_seg_train')\n"
        "except FileNotFoundError as e:\n"
        "    print('ERR', e)\n"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "3 5"
    missing = os.path.join(str(tmp_path), "bdd100k", "labels", "ins_seg", "rles", "ins_seg_train.json")
    assert lines[1].startswith("ERR") and missing in lines[1]
