"""Layer-wise AP (tools/layerwise_ap.py, dimaskdino.evaluation.layerwise): on a tiny model trained
briefly on two painted images, the last stage reproduces the ordinary evaluation (detectron2's
inference_on_dataset) exactly, with DI and BATO on or off; the command line tool on a 3-image embedded val
split prints one row per stage of the config and writes the plot and JSON files."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import inference_on_dataset

from dimaskdino.checkpoint import DIMaskDINOCheckpointer
from dimaskdino.data.datasets.embedded import EMBEDDED_VERSION, generate_embedded_shapes
from dimaskdino.engine import build_optimizer_from_cfg
from dimaskdino.evaluation import build_evaluator
from dimaskdino.evaluation.layerwise import (
    build_stage_evaluators,
    format_table,
    layerwise_inference,
    model_stages,
    plot_layerwise_ap,
    stage_instances,
)
from dimaskdino.modeling.postprocess import box_instance_inference, instance_inference
from tiny_training import TWO_IMAGES, one_thread, painted_image, tiny_cfg, tiny_model  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAINTED = "layerwise_test_painted"
TRAIN_ITERATIONS = 30


def _write_painted_dataset(folder):
    """tiny_training's two painted images as a COCO dataset (64x64 PNGs, rectangle polygons)."""
    os.makedirs(folder, exist_ok=True)
    images, annotations = [], []
    for image_id, objects in enumerate(TWO_IMAGES, start=1):
        pixels = painted_image(objects)["image"].permute(1, 2, 0).numpy()
        file_name = os.path.join(folder, f"{image_id}.png")
        Image.fromarray(pixels).save(file_name)
        images.append({"id": image_id, "file_name": file_name, "height": 64, "width": 64})
        for label, (x0, y0, x1, y1) in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1, "iscrowd": 0,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            })
    categories = [{"id": i + 1, "name": f"c{i}"} for i in range(4)]
    json_file = os.path.join(folder, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A 3-image embedded val split in an embedded-shapes cache folder (for the command line), and the
    painted two-image dataset registered in-process."""
    root = str(tmp_path_factory.mktemp("cache"))
    generate_embedded_shapes(os.path.join(root, "embedded_shapes", EMBEDDED_VERSION), {"train": 1, "val": 3})
    if PAINTED not in DatasetCatalog.list():
        folder = os.path.join(root, "painted")
        register_coco_instances(PAINTED, {}, _write_painted_dataset(folder), folder)
    return root


def _cfg(tmp_path, **maskdino):
    cfg = tiny_cfg(Path(REPO), **maskdino)
    cfg.MODEL.RESNETS.NORM = "GN"  # as in test_overfit: the same normalisation in training and eval
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.TEST = (PAINTED,)
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def _trained_model(cfg):
    """The tiny model after a few iterations on the painted images: APs between 0 and 100."""
    model = tiny_model(cfg)
    optimizer = build_optimizer_from_cfg(cfg, model)
    batch = [painted_image(objects) for objects in TWO_IMAGES]
    for _ in range(TRAIN_ITERATIONS):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def _expected_stage_count(cfg):
    """Counted from the config: interm, the TI layers (DI on), the initial prediction, the decoder layers."""
    m = cfg.MODEL.MaskDINO
    return 1 + (m.TI_LAYERS if m.DI_ENABLED else 0) + int(m.INITIAL_PRED) + m.DEC_LAYERS


def _same_metrics(a, b):
    """Equal dicts of COCO metrics, NaN (a size range without objects) equal to NaN."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), (key, a[key], b[key])


def test_default_eval_outputs_unchanged_and_final_stage_equal(cache, tmp_path, one_thread):
    """Without all_stages the predictor returns only the last stage; with it, the same last stage plus
    every other stage, and the final Instances are the model's own output."""
    cfg = _cfg(tmp_path)
    model = tiny_model(cfg)
    model.eval()
    inputs = next(iter(build_detection_test_loader(cfg, PAINTED)))
    images = torch.stack(model.normalized_images(inputs))
    with torch.no_grad():
        features = model.backbone(images)
        plain = model.sem_seg_head(features)
        full = model.sem_seg_head(features, all_stages=True)
    assert plain.aux == [] and plain.interm is None and plain.ti == [] and plain.denoising is None
    for key in ("logits", "boxes", "masks"):
        assert torch.equal(getattr(plain.final, key), getattr(full.final, key))
    assert len(full.ti) == cfg.MODEL.MaskDINO.TI_LAYERS
    assert len(full.aux) == cfg.MODEL.MaskDINO.DEC_LAYERS  # initial + all but the last layer
    assert all(a.masks is not None for a in full.aux)
    assert full.interm.masks is not None
    assert list(full.named_stages()) == [s.name for s in model_stages(model)]

    final = model(inputs)[0]["instances"]
    staged = stage_instances(model, inputs)[0]
    last = staged[model_stages(model)[-1].name]
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        a, b = last.get(field), final.get(field)
        a, b = (a.tensor, b.tensor) if field == "pred_boxes" else (a, b)
        assert torch.equal(a, b), field
    assert not staged["ti1"].has("pred_masks")


@pytest.mark.parametrize(
    "switches",
    [{}, {"DI_ENABLED": False, "BATO_ENABLED": False, "INITIAL_PRED": False, "INITIALIZE_BOX_TYPE": "no",
          "DEC_LAYERS": 3}],
    ids=["di_bato", "maskdino_no_initial"],
)
def test_final_stage_equals_ordinary_evaluation(cache, tmp_path, one_thread, switches):
    cfg = _cfg(tmp_path, **switches)
    model = _trained_model(cfg)
    stages = model_stages(model)
    assert len(stages) == _expected_stage_count(cfg)
    evaluators = build_stage_evaluators(cfg, PAINTED, stages, str(tmp_path / "layerwise"))
    results = layerwise_inference(model, build_detection_test_loader(cfg, PAINTED), evaluators)

    ordinary = inference_on_dataset(
        model, build_detection_test_loader(cfg, PAINTED), build_evaluator(cfg, PAINTED, str(tmp_path / "plain"))
    )
    final = results[-1]
    _same_metrics(final.metrics["bbox"], ordinary["bbox"])
    _same_metrics(final.metrics["segm"], ordinary["segm"])
    assert final.box_ap == ordinary["bbox"]["AP"] and final.mask_ap == ordinary["segm"]["AP"]
    assert final.box_ap > 0 and final.mask_ap > 0  # not a trivial 0 == 0
    print(format_table(results))

    for stage, result in zip(stages, results):
        assert result.name == stage.name
        assert math.isnan(result.mask_ap) != stage.has_masks  # box-only stages: no mask AP
        assert not math.isnan(result.box_ap)
    table = format_table(results).splitlines()
    assert len(table) == 2 + _expected_stage_count(cfg)
    plot = tmp_path / "ap.png"
    plot_layerwise_ap(results, str(plot))
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_command_line_tool(cache, tmp_path, one_thread):
    """tools/layerwise_ap.py on the (3-image) embedded val split with a saved tiny checkpoint."""
    model = tiny_model(tiny_cfg(Path(REPO)))  # the embedded config (BatchNorm) with 2 decoder layers
    DIMaskDINOCheckpointer(model, str(tmp_path)).save("tiny")
    out_json, out_png = tmp_path / "lw.json", tmp_path / "lw.png"
    args = [
        sys.executable, os.path.join(REPO, "tools", "layerwise_ap.py"),
        "--config-file", os.path.join(REPO, "configs", "embedded", "dimaskdino_r18_embedded.yaml"),
        "--json", str(out_json), "--plot", str(out_png),
        "MODEL.WEIGHTS", str(tmp_path / "tiny.pth"), "MODEL.MaskDINO.DEC_LAYERS", "2",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ]
    env = dict(os.environ, DIMASKDINO_CACHE=cache, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    run = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    names = ["interm", "ti1", "initial", "dec1", "dec2"]
    table = run.stdout.split("Layer-wise AP on embedded_shapes_val:\n", 1)[1].splitlines()
    rows = [line.split("|")[0].strip() for line in table[2:2 + len(names)]]
    assert rows == names[:-1] + ["dec2 (final)"]
    assert table[2 + len(names)].startswith("plot written")
    assert [c.strip() for c in table[3].split("|")][2] == "-"  # ti1 has no mask AP
    with open(out_json) as f:
        data = json.load(f)
    assert [s["name"] for s in data["stages"]] == names and data["final_stage"] == "dec2"
    assert data["stages"][1]["mask_ap"] is None and data["stages"][1]["box_ap"] is not None
    assert out_png.stat().st_size > 0


def test_box_only_instances_by_hand():
    """2 queries x 2 classes, k = 3: the three best (query, class) pairs, boxes scaled by hand."""
    logits = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]])
    # padded 40x80 input of a 40x60 image, output size 80x120 (scale 2): x * 80 * 2, y * 40 * 2
    result = box_instance_inference(logits, boxes, (40, 80), (40, 60), (80, 120), max_detections=3)
    order = result.scores.argsort(descending=True)
    assert result.image_size == (80, 120)
    assert torch.allclose(result.scores[order], torch.tensor([2.0, 1.0, 0.0]).sigmoid())
    assert result.pred_classes[order].tolist() == [0, 1, 0]
    expected = torch.tensor([[64.0, 24.0, 96.0, 56.0], [0.0, 40.0, 80.0, 80.0], [0.0, 40.0, 80.0, 80.0]])
    assert torch.allclose(result.pred_boxes.tensor[order], expected)
    assert not result.has("pred_masks")
    # the same top-k as the instance post-processing scored by class score alone
    with_masks = instance_inference(logits, torch.randn(2, 10, 20), boxes, (40, 80), (40, 60), (80, 120),
                                    max_detections=3, score_from_box_only=True)
    assert torch.equal(with_masks.scores, result.scores) and torch.equal(with_masks.pred_classes, result.pred_classes)
    assert torch.equal(with_masks.pred_boxes.tensor, result.pred_boxes.tensor)


def test_evaluators_must_match_the_stages(cache, tmp_path):
    cfg = _cfg(tmp_path, DI_ENABLED=False)
    model = tiny_model(cfg)
    evaluators = build_stage_evaluators(cfg, PAINTED, model_stages(model)[1:])
    with pytest.raises(ValueError, match="evaluators must be given for the stages"):
        layerwise_inference(model, [], evaluators)
