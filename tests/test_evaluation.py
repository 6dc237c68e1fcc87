"""build_evaluator (COCOEvaluator with detectron2._C, faster-coco-eval or pycocotools) and the inference benchmark."""
import copy
import json
import logging
import sys
import time
import types

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from detectron2.structures import Boxes, Instances
from torch import nn

import detectron2
import dimaskdino.data  # noqa: F401
from dimaskdino.evaluation import (
    CompiledCOCOEvaluator,
    build_evaluator,
    coco_eval_engine,
    fast_coco_eval_available,
    inference_with_benchmark,
)
from dimaskdino.evaluation import coco as coco_module

H, W = 60, 40
# three images: two objects, one object, none
GT = {1: [((0, 0, 10, 50), 0), ((20, 5, 35, 25), 1)], 2: [((5, 5, 30, 30), 1)], 3: []}


def _mask(box):
    x0, y0, x1, y1 = box
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco")
    images, anns = [], []
    for image_id, objects in GT.items():
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": H, "width": W})
        for box, cls in objects:
            rle = mask_util.encode(np.asfortranarray(_mask(box)))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "area": (box[2] - box[0]) * (box[3] - box[1]),
                    "iscrowd": 0,
                    "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
                }
            )
    json_file = root / "instances.json"
    cats = [{"id": 1, "name": "bar"}, {"id": 2, "name": "block"}]
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    name = "tiny_coco_eval_test"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(json_file), str(root))
    return name, root


def _instances(objects, score=0.9):
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor([list(b) for b, _ in objects], dtype=torch.float32).reshape(-1, 4))
    inst.pred_masks = torch.as_tensor(np.stack([_mask(b) for b, _ in objects]) if objects else np.zeros((0, H, W))).bool()
    inst.scores = torch.full((len(objects),), score)
    inst.pred_classes = torch.tensor([c for _, c in objects], dtype=torch.int64)
    return {"instances": inst}


def _evaluate(name, out_dir, predictions):
    evaluator = build_evaluator(None, name, str(out_dir))
    evaluator.reset()
    for image_id, objects in predictions.items():
        evaluator.process([{"image_id": image_id}], [_instances(objects)])
    return evaluator.evaluate()


def test_this_detectron2_has_no_fast_cocoeval_and_faster_coco_eval_is_the_engine(tiny_coco, tmp_path):
    # this project's detectron2 is built without its C++ ops: _C has no COCOeval functions
    assert not hasattr(detectron2._C, "COCOevalAccumulate")
    assert fast_coco_eval_available() is False
    assert coco_eval_engine() == "faster-coco-eval"
    assert isinstance(build_evaluator(None, tiny_coco[0], str(tmp_path)), CompiledCOCOEvaluator)


def test_fast_cocoeval_detected_when_compiled(monkeypatch):
    fake = types.ModuleType("detectron2._C")
    for symbol in ("InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate"):
        setattr(fake, symbol, object())
    monkeypatch.setattr(detectron2, "_C", fake)
    assert fast_coco_eval_available() is True
    delattr(fake, "COCOevalAccumulate")
    assert fast_coco_eval_available() is False


def test_perfect_predictions_give_ap_100(tiny_coco, tmp_path):
    results = _evaluate(tiny_coco[0], tmp_path, GT)
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0)
        assert results[task]["AP-bar"] == pytest.approx(100.0)


def test_partial_overlap_gives_hand_computed_ap(tiny_coco, tmp_path):
    # the "bar" (10x50) predicted as 10x31: IoU 0.62 -> matched at IoU 0.50, 0.55, 0.60 of the
    # ten thresholds -> AP(bar) = 30; "block" stays perfect -> mean AP = (30 + 100) / 2
    predictions = {1: [((0, 0, 10, 31), 0), ((20, 5, 35, 25), 1)], 2: [((5, 5, 30, 30), 1)], 3: []}
    results = _evaluate(tiny_coco[0], tmp_path, predictions)
    for task in ("bbox", "segm"):
        assert results[task]["AP-bar"] == pytest.approx(30.0)
        assert results[task]["AP"] == pytest.approx(65.0)
        assert results[task]["AP50"] == pytest.approx(100.0)


def test_wrong_classes_give_ap_0(tiny_coco, tmp_path):
    predictions = {i: [(b, 1 - c) for b, c in objs] for i, objs in GT.items()}
    results = _evaluate(tiny_coco[0], tmp_path, predictions)
    assert results["bbox"]["AP"] == pytest.approx(0.0)
    assert results["segm"]["AP"] == pytest.approx(0.0)


def test_missing_annotation_file_is_named(tmp_path):
    name = "tiny_coco_missing_json_test"
    missing = tmp_path / "nowhere" / "instances.json"
    register_coco_instances(name, {}, str(missing), str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_evaluator(None, name, str(tmp_path))
    with pytest.raises(KeyError, match="not registered"):
        build_evaluator(None, "no_such_dataset", str(tmp_path))


class _SlowOracle(nn.Module):
    """Returns the ground truth after sleeping ``delay`` seconds per image."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay
        self.anchor = nn.Parameter(torch.zeros(1))
        self.calls_in_training_mode = 0

    def forward(self, batched_inputs):
        self.calls_in_training_mode += int(self.training)
        time.sleep(self.delay * len(batched_inputs))
        return [_instances(GT[x["image_id"]]) for x in batched_inputs]


def test_inference_with_benchmark_reports_ap_and_speed(tiny_coco, tmp_path):
    delay = 0.02
    model = _SlowOracle(delay)
    loader = [[{"image_id": 1}, {"image_id": 2}], [{"image_id": 3}]]
    evaluator = build_evaluator(None, tiny_coco[0], str(tmp_path))
    results, report = inference_with_benchmark(model, loader, evaluator, num_warmup=0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert model.calls_in_training_mode == 0 and model.training  # eval during, train mode restored
    assert report.num_images == 3 and report.num_warmup_images == 0
    assert delay * 1000 <= report.latency_ms_median < delay * 1000 + 30
    assert 0.5 / delay < report.images_per_second <= 1.0 / delay
    # warm-up calls are left out of the timing
    _, report = inference_with_benchmark(model, loader * 3, None, num_warmup=2)
    assert report.num_images == 9 - 3 and report.num_warmup_images == 3  # 2 warm-up calls: 2 + 1 images
    assert report.peak_memory_mb > 10 and report.peak_memory_kind == "process peak RSS"
    table = report.table()
    assert "throughput (img/s)" in table and "latency per image" in table


# ---- the compiled engine against pycocotools: crowd regions, empty images, false positives ----

CROWD_H, CROWD_W = 48, 64


def _random_rle(rng, box):
    """A blob inside ``box`` (x0, y0, x1, y1): the box with random pixels cleared, RLE-encoded."""
    x0, y0, x1, y1 = box
    m = np.zeros((CROWD_H, CROWD_W), np.uint8)
    m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.85
    rle = mask_util.encode(np.asfortranarray(m))
    return {"size": [CROWD_H, CROWD_W], "counts": rle["counts"].decode()}


def _random_box(rng):
    x0, y0 = int(rng.integers(0, CROWD_W - 12)), int(rng.integers(0, CROWD_H - 12))
    return x0, y0, int(rng.integers(x0 + 4, CROWD_W)), int(rng.integers(y0 + 4, CROWD_H))


@pytest.fixture(scope="module")
def crowd_coco(tmp_path_factory):
    """12 images (every third without annotations), 3 classes, about 1 in 5 objects a crowd region;
    per image, predictions near the objects plus random false positives (also on the empty images),
    except image 11, which gets no prediction."""
    rng = np.random.default_rng(14)
    root = tmp_path_factory.mktemp("crowd_coco")
    images, anns, predictions = [], [], {}
    for image_id in range(1, 13):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": CROWD_H, "width": CROWD_W})
        predictions[image_id] = []
        for _ in range(0 if image_id % 3 == 0 else int(rng.integers(1, 5))):
            box, cls = _random_box(rng), int(rng.integers(0, 3))
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": cls + 1, "iscrowd": int(rng.random() < 0.2),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "area": (box[2] - box[0]) * (box[3] - box[1]), "segmentation": _random_rle(rng, box),
            })
            jitter = rng.integers(-3, 4, size=4)
            near = tuple(int(np.clip(v + d, 0, lim)) for v, d, lim in zip(box, jitter, (CROWD_W, CROWD_H) * 2))
            if near[2] > near[0] + 1 and near[3] > near[1] + 1:
                predictions[image_id].append((near, cls if rng.random() < 0.8 else int(rng.integers(0, 3))))
        predictions[image_id] += [(_random_box(rng), int(rng.integers(0, 3))) for _ in range(2)]
    json_file = root / "instances.json"
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    name = "crowd_coco_eval_test"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(json_file), str(root))
    DatasetCatalog.get(name)  # sets the class names and the category id mapping the evaluators use
    predictions[11] = []  # an image with objects and no prediction at all
    assert any(a["iscrowd"] for a in anns) and not any(a["image_id"] == 12 for a in anns)
    return name, predictions, rng


def _run(evaluator, predictions, seed=0):
    rng = np.random.default_rng(seed)
    evaluator.reset()
    for image_id, objects in predictions.items():
        inst = Instances((CROWD_H, CROWD_W))
        inst.pred_boxes = Boxes(torch.tensor([list(b) for b, _ in objects], dtype=torch.float32).reshape(-1, 4))
        masks = np.zeros((len(objects), CROWD_H, CROWD_W), bool)
        for k, (box, _) in enumerate(objects):
            masks[k] = mask_util.decode(_random_rle(rng, box)).astype(bool)
        inst.pred_masks = torch.from_numpy(masks)
        inst.scores = torch.from_numpy(rng.random(len(objects)).astype(np.float32))
        inst.pred_classes = torch.tensor([c for _, c in objects], dtype=torch.int64)
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()


class _CountingCompiled(coco_module.compiled_cocoeval_class()):
    instances = 0

    def __init__(self, *args, **kwargs):
        type(self).instances += 1
        super().__init__(*args, **kwargs)


def test_compiled_engine_equals_pycocotools_on_every_ap_entry(crowd_coco, tmp_path):
    name, predictions, _ = crowd_coco
    reference = _run(COCOEvaluator(name, tasks=("bbox", "segm"), output_dir=str(tmp_path / "ref"),
                                   max_dets_per_image=100, use_fast_impl=False), predictions)
    compiled = _run(build_evaluator(None, name, str(tmp_path / "compiled")), predictions)
    for task in ("bbox", "segm"):
        assert set(compiled[task]) == set(reference[task]) and len(reference[task]) == 6 + 3  # AP.. + per class
        for key, value in reference[task].items():
            assert compiled[task][key] == pytest.approx(value, abs=1e-4, nan_ok=True), (task, key)
        assert 2 < reference[task]["AP"] < 95  # neither trivial nor perfect
    # the spy proves the compiled class computes the numbers, and detectron2's name is restored
    _CountingCompiled.instances = 0
    spied = CompiledCOCOEvaluator(name, tasks=("bbox", "segm"), output_dir=str(tmp_path / "spy"),
                                  max_dets_per_image=100, cocoeval_class=_CountingCompiled)
    assert _run(spied, predictions)["segm"]["AP"] == pytest.approx(reference["segm"]["AP"], abs=1e-4)
    assert _CountingCompiled.instances == 2
    assert d2_coco_evaluation.COCOeval_opt is not _CountingCompiled


def test_box_only_evaluator_evaluates_bbox_alone(tiny_coco, tmp_path):
    evaluator = build_evaluator(None, tiny_coco[0], str(tmp_path), tasks=("bbox",))
    evaluator.reset()
    for image_id, objects in GT.items():
        evaluator.process([{"image_id": image_id}], [_instances(objects)])
    assert set(evaluator.evaluate()) == {"bbox"}


def test_without_faster_coco_eval_it_falls_back_to_pycocotools_with_one_notice(tiny_coco, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import fails as if not installed
    monkeypatch.setattr(coco_module, "_fallback_notice_given", False)
    notices = []
    handler = logging.Handler()
    handler.emit = lambda record: notices.append(record.getMessage())
    coco_module.logger.addHandler(handler)
    try:
        assert coco_eval_engine() == "pycocotools"
        evaluators = [build_evaluator(None, tiny_coco[0], str(tmp_path)) for _ in range(2)]
    finally:
        coco_module.logger.removeHandler(handler)
    assert len(notices) == 1 and "faster-coco-eval is not installed" in notices[0] and "\n" not in notices[0]
    assert type(evaluators[0]) is COCOEvaluator and evaluators[0]._use_fast_impl is False
    results = _evaluate(tiny_coco[0], tmp_path, {1: [((0, 0, 10, 31), 0), ((20, 5, 35, 25), 1)], 2: GT[2], 3: []})
    assert results["segm"]["AP"] == pytest.approx(65.0)  # the hand-computed value above, by pycocotools


def test_batched_load_res_equals_pycocotools_past_the_chunk_size():
    """BatchedResultsCOCO.loadRes (batched C calls, chunks of 255 masks) gives pycocotools' result
    object for 600 mask results on 3 images: same annotations (area, box, id, iscrowd, types) and index."""
    import copy

    from pycocotools.coco import COCO

    from dimaskdino.evaluation.coco import BatchedResultsCOCO

    rng = np.random.default_rng(0)
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "height": 40, "width": 50} for i in (1, 2, 3)],
        "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    gt.createIndex()
    results = []
    for index in range(600):
        mask = np.zeros((40, 50), np.uint8, order="F")
        x, y = rng.integers(0, 40, 2)
        mask[y:y + rng.integers(1, 15), x:x + rng.integers(1, 15)] = 1
        rle = mask_util.encode(mask)
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": int(index % 3) + 1, "category_id": int(index % 2) + 1,
                        "score": float(rng.random()), "segmentation": rle})
    expected = gt.loadRes(copy.deepcopy(results))
    batched = BatchedResultsCOCO.sharing(gt).loadRes(copy.deepcopy(results))
    assert expected.getAnnIds() == batched.getAnnIds()
    for ann_id in expected.getAnnIds():
        a, b = expected.anns[ann_id], batched.anns[ann_id]
        assert a.keys() == b.keys()
        assert a["area"] == b["area"] and type(a["area"]) is type(b["area"])
        np.testing.assert_array_equal(a["bbox"], b["bbox"])
        fields = ("id", "iscrowd", "image_id", "category_id")
        assert [a[f] for f in fields] == [b[f] for f in fields]
    assert expected.imgToAnns.keys() == batched.imgToAnns.keys()
    for img_ids, cat_ids in (([1, 2, 3], [1, 2]), ([3, 1], [2]), ([], [2, 1]), ([2], [])):
        assert expected.getAnnIds(imgIds=img_ids, catIds=cat_ids) == batched.getAnnIds(imgIds=img_ids, catIds=cat_ids)
    assert dict(expected.catToImgs) == dict(batched.catToImgs)
    with pytest.raises(ValueError, match="image ids not in the ground truth"):
        BatchedResultsCOCO.sharing(gt).loadRes([dict(results[0], image_id=9)])


def test_compiled_class_passes_compressed_rles_through_with_pycocotools_numbers():
    """The compiled class hands compressed-RLE masks to the IoU as they are (str or bytes counts)
    and converts the rest (a polygon, an uncompressed crowd RLE): its IoUs equal
    faster-coco-eval's unmodified class's and its 12 stats equal pycocotools'."""
    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval.core import cocoeval as fce_cocoeval
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    h, w = CROWD_H, CROWD_W
    images = [{"id": i, "height": h, "width": w} for i in (1, 2)]
    gt_rle = _random_rle(rng, (5, 5, 30, 25))
    crowd = mask_util.decode(_random_rle(rng, (20, 10, 45, 38))).ravel(order="F")
    runs = np.diff(np.r_[0, np.flatnonzero(crowd[1:] != crowd[:-1]) + 1, crowd.size])
    uncompressed = {"size": [h, w], "counts": [int(v) for v in (runs if crowd[0] == 0 else np.r_[0, runs])]}
    assert np.array_equal(mask_util.decode(mask_util.frPyObjects(uncompressed, h, w)).ravel(order="F"), crowd)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": gt_rle},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": uncompressed},
        {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 0,
         "segmentation": [[2.0, 2.0, 30.0, 4.0, 25.0, 33.0, 4.0, 30.0]]},
    ]
    for ann in anns:
        rle = ann["segmentation"] if ann["id"] == 1 else mask_util.frPyObjects(ann["segmentation"], h, w)
        rle = mask_util.merge(rle) if isinstance(rle, list) else rle
        ann["area"] = float(mask_util.area(rle))
        ann["bbox"] = [float(v) for v in mask_util.toBbox(rle)]
    dts = []
    for k in range(12):
        box = _random_box(rng)
        rle = _random_rle(rng, (box[0], box[1], box[0] + 12, box[1] + 12))
        if k % 2:
            rle = {"size": rle["size"], "counts": rle["counts"].encode()}  # bytes counts, as detectron2 stores them
        dts.append({"image_id": 1 + k % 2, "category_id": 1, "score": float(rng.random()), "segmentation": rle})
    dts.append({"image_id": 1, "category_id": 1, "score": 0.95, "segmentation": dict(gt_rle)})

    def evaluate(cocoeval_class):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": copy.deepcopy(anns), "categories": [{"id": 1, "name": "a"}]}
        gt.createIndex()
        evaluation = cocoeval_class(gt, gt.loadRes(copy.deepcopy(dts)), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        return evaluation

    ours_class = coco_module.compiled_cocoeval_class()
    assert issubclass(ours_class, COCOeval_faster) and ours_class is coco_module.compiled_cocoeval_class()
    converter = fce_cocoeval.maskUtils.calculateRleForAllAnnotations
    ours = evaluate(ours_class)
    assert fce_cocoeval.maskUtils.calculateRleForAllAnnotations is converter  # restored
    plain = evaluate(COCOeval_faster)
    reference = evaluate(COCOeval)
    passed = [d for d in ours.cocoDt.anns.values() if isinstance(d["segmentation"], dict)]
    assert len(passed) == 13 and all(d["rle"] is d["segmentation"] for d in passed)
    assert all(isinstance(d["rle"]["counts"], bytes) for d in plain.cocoDt.anns.values())  # it re-encodes
    for pair, ious in plain.ious.items():
        np.testing.assert_allclose(np.asarray(ours.ious[pair]), np.asarray(ious), rtol=0, atol=0)
    assert any(np.size(v) for v in plain.ious.values())
    np.testing.assert_allclose(ours.stats, reference.stats, rtol=0, atol=1e-12)
    assert 0 < reference.stats[0] < 1


def test_pass_through_leaves_a_differently_laid_out_faster_coco_eval_alone():
    module = types.SimpleNamespace()  # no maskUtils.calculateRleForAllAnnotations to wrap
    with coco_module._compressed_rles_passed_through(module):
        assert vars(module) == {}
