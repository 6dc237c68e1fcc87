"""Datasets are checked before training starts: missing image files and annotations that
detectron2 drops or that break COCO evaluation fail in setup (yaml and LazyConfig)."""
import json
import os
import re
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.engine import default_argument_parser
from detectron2.structures import BoxMode
from pycocotools.coco import COCO

from dimaskdino.data import check_datasets, validation
from dimaskdino.engine.runner import LazyRun, check_run
from dimaskdino.utils.config_files import load_lazy_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402

YAML = os.path.join(REPO, "configs", "embedded", "dimaskdino_r18_embedded.yaml")
LAZY = os.path.join(REPO, "configs", "lazy", "dimaskdino_r18_embedded.py")
CLASSES = ["circle", "square", "triangle", "star"]
SQUARE = [2, 2, 12, 2, 12, 12, 2, 12]


def _annotation(ann_id, image_id, bbox=(2, 2, 10, 10), segmentation=(SQUARE,), **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": list(bbox), "area": 100,
            "iscrowd": 0, "segmentation": [list(p) for p in segmentation], **extra}


BAD_ANNOTATIONS = [
    _annotation(11, 1, segmentation=([2, 2, 12, 2],)),  # 2 points
    _annotation(12, 1, segmentation=(SQUARE, [5, 5, 6, 6])),  # one good polygon, one of 2 points
    _annotation(13, 2, bbox=(3, 3, 0, 8)),  # zero width
    _annotation(14, 2, segmentation=()),  # empty
    _annotation(15, 2, segmentation=([2, 2, 12, 2, 12],)),  # odd number of coordinates
]


def _dataset(tmp_path, name, annotations, images_on_disk=(1, 2)):
    images = [{"id": i, "file_name": f"img{i}.png", "height": 32, "width": 32} for i in (1, 2, 3)]
    for i in images_on_disk:
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((32, 32, 3), 90, np.uint8))
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps(coco))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    return str(json_file)


def _setup(*argv):
    return train_net.setup(default_argument_parser().parse_args(list(argv)))


def test_missing_images_are_counted_and_named_in_one_error(tmp_path):
    _dataset(tmp_path, "checks_missing_images", [_annotation(1, 1)], images_on_disk=(1,))
    with pytest.raises(FileNotFoundError) as error:
        _setup("--config-file", YAML, "DATASETS.TRAIN", "('checks_missing_images',)", "OUTPUT_DIR",
               str(tmp_path / "out"))
    message = str(error.value)
    assert "'checks_missing_images': 2 of 3 image files are missing" in message
    assert str(tmp_path / "img2.png") in message and str(tmp_path / "img3.png") in message


def test_bad_annotations_fail_at_start_counted_by_kind(tmp_path, monkeypatch):
    good = [_annotation(1, 1), _annotation(2, 3, iscrowd=1)]
    json_file = _dataset(tmp_path, "checks_bad_annotations", good + BAD_ANNOTATIONS, images_on_disk=(1, 2, 3))
    warnings = []
    monkeypatch.setattr(validation.logger, "warning", warnings.append)
    with pytest.raises(ValueError) as error:
        _setup("--config-file", YAML, "DATASETS.TEST", "('checks_bad_annotations',)", "OUTPUT_DIR",
               str(tmp_path / "out"))
    message = str(error.value)
    assert "'checks_bad_annotations' has 4 annotations" in message
    assert "2 x polygon with fewer than 3 points" in message
    for kind in ("1 x empty segmentation", "1 x polygon with an odd number of coordinates"):
        assert kind in message
    # the zero-area box (COCO train2017 has two) is counted in a warning, not in the error
    assert "zero-area" not in message
    assert len(warnings) == 1 and "1 x zero-area box" in warnings[0] and "annotation 13 of" in warnings[0]
    assert f"annotation 11 of {tmp_path / 'img1.png'}" in message and "annotation 14 of" in message

    # independent references: detectron2 drops the bad polygons at load, pycocotools fails on them
    loaded = load_coco_json(json_file, str(tmp_path), "checks_bad_annotations")
    short = [p for r in loaded for a in r["annotations"] for p in a.get("segmentation", []) if len(p) < 6]
    assert short == []  # silently dropped for training, while evaluation reads the json as it is
    with pytest.raises(TypeError):
        COCO(json_file).annToRLE(BAD_ANNOTATIONS[0])


def test_good_dataset_passes_and_lazy_config_is_checked_too(tmp_path, monkeypatch):
    _dataset(tmp_path, "checks_good", [_annotation(1, 1), _annotation(2, 2)], images_on_disk=(1, 2, 3))
    check_datasets(["checks_good"], 4)
    _dataset(tmp_path, "checks_lazy_bad", [_annotation(1, 1)] + BAD_ANNOTATIONS[:1], images_on_disk=(1, 2, 3))
    cfg = load_lazy_config(LAZY, ["dataloader.train.dataset.names=checks_lazy_bad",
                                  f"train.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="1 x polygon with fewer than 3 points"):
        check_run(LazyRun(cfg), eval_only=False)


def test_datasets_without_json_are_checked_from_their_dicts(tmp_path, monkeypatch):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    records = [{"file_name": str(image), "image_id": 1, "height": 8, "width": 8, "annotations": [
        {"bbox": [4, 1, 4, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "segmentation": [SQUARE]}]}]
    records.append(dict(records[0], image_id=2, annotations=[
        {"bbox": [1, 1, 7, 7], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "segmentation": [[1, 1, 7, 7]]}]))
    name = "checks_dicts_zero_width"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=CLASSES)
    warnings = []
    monkeypatch.setattr(validation.logger, "warning", warnings.append)
    with pytest.raises(ValueError, match=r"1 x polygon with fewer than 3 points .*annotation \? of .*x.png"):
        check_datasets([name], 4)
    assert len(warnings) == 1 and re.search(r"1 x zero-area box .*annotation \? of .*x.png", warnings[0])


def test_bad_annotations_can_be_let_through_with_a_warning(tmp_path, monkeypatch):
    _dataset(tmp_path, "checks_allowed_bad", [_annotation(1, 1)] + BAD_ANNOTATIONS[3:4], images_on_disk=(1, 2, 3))
    with pytest.raises(ValueError, match="DIMASKDINO_ALLOW_BAD_ANNOTATIONS=1"):
        check_datasets(["checks_allowed_bad"], 4)
    monkeypatch.setenv("DIMASKDINO_ALLOW_BAD_ANNOTATIONS", "1")
    warnings = []
    monkeypatch.setattr(validation.logger, "warning", warnings.append)
    check_datasets(["checks_allowed_bad"], 4)
    assert len(warnings) == 1 and "1 x empty segmentation" in warnings[0]
