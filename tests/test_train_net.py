"""train_net.py end to end on a tiny embedded dataset: yaml and LazyConfig training, --eval-only
(AP tables + throughput), --resume after a kill, and clear errors for bad inputs."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import default_argument_parser

from dimaskdino.data import check_datasets
from dimaskdino.data.datasets.embedded import EMBEDDED_VERSION, generate_embedded_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402

YAML = os.path.join(REPO, "configs", "embedded", "dimaskdino_r18_embedded.yaml")
LAZY = os.path.join(REPO, "configs", "lazy", "dimaskdino_r18_embedded.py")
# a fast variant of the main job's config: 64x64 inputs, 2 images per batch, no workers
FAST = [
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.IMAGE_SIZE", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.WARMUP_ITERS", "1",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A small embedded dataset in place of the full one (train: 16 images, val: 6), where
    one training and one validation image have no instance."""
    root = str(tmp_path_factory.mktemp("cache"))
    dataset_dir = os.path.join(root, "embedded_shapes", EMBEDDED_VERSION)
    generate_embedded_shapes(dataset_dir, {"train": 16, "val": 6})
    for split in ("train", "val"):
        path = os.path.join(dataset_dir, "annotations", f"instances_{split}.json")
        with open(path) as f:
            coco = json.load(f)
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 2]
        with open(path, "w") as f:
            json.dump(coco, f)
    return root


def _env(cache):
    return dict(os.environ, DIMASKDINO_CACHE=cache, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def _train_net(cache, args, timeout=600):
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py")] + args,
        env=_env(cache), cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_yaml_training_then_eval_only_prints_ap_and_throughput(cache, tmp_path):
    out_dir = str(tmp_path / "yaml")
    _train_net(cache, ["--config-file", YAML, *FAST, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out_dir])
    assert os.path.isfile(os.path.join(out_dir, "model_final.pth"))
    metrics = _metrics(out_dir)
    assert [m["iteration"] for m in metrics if "total_loss" in m][-1] == 2
    assert "segm/AP" in metrics[-1]  # evaluated after the last iteration
    weights = os.path.join(out_dir, "model_final.pth")
    log = _train_net(
        cache, ["--config-file", YAML, "--eval-only", *FAST, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out_dir]
    )
    for table in ("Evaluation results for bbox", "Evaluation results for segm"):
        assert table in log
    assert re.search(r"copypaste: AP,AP50,AP75,APs,APm,APl", log)
    for row in ("throughput (img/s)", "latency per image, mean (ms)", "peak memory"):
        assert row in log
    with open(os.path.join(out_dir, "inference_benchmark_embedded_shapes_val.json")) as f:
        report = json.load(f)
    assert report["num_images"] + report["num_warmup_images"] == 6 and report["images_per_second"] > 0

    # the demo draws the predictions of the same weights on a folder of images
    images = os.path.join(cache, "embedded_shapes", EMBEDDED_VERSION, "val")
    drawings = str(tmp_path / "drawings")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file", YAML, "--input", images,
         "--output", drawings, "--confidence-threshold", "0.0", "--opts", *FAST, "MODEL.WEIGHTS", weights],
        env=_env(cache), cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(drawings)) == sorted(os.listdir(images))
    drawing = cv2.imread(os.path.join(drawings, "000000.png"))
    original = cv2.imread(os.path.join(images, "000000.png"))
    assert drawing.shape == original.shape and not np.array_equal(drawing, original)  # something drawn


@pytest.mark.slow
def test_lazy_config_training(cache, tmp_path):
    out_dir = str(tmp_path / "lazy")
    _train_net(
        cache,
        [
            "--config-file", LAZY,
            "train.max_iter=3", "train.log_period=1", f"train.output_dir={out_dir}",
            "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        ],
    )
    assert os.path.isfile(os.path.join(out_dir, "model_final.pth"))
    rows = [m for m in _metrics(out_dir) if "total_loss" in m]
    assert [m["iteration"] for m in rows] == [0, 1, 2]
    assert all(np.isfinite(m["total_loss"]) for m in rows)


def kill_when_checkpointed(proc, output_dir: str, timeout: float) -> bool:
    """SIGKILL ``proc``'s process group (started with ``start_new_session=True``: a launcher, its
    ranks and data-loader workers) as soon as ``output_dir/last_checkpoint`` exists.

    Returns whether the process was still running when it was killed; fails if no checkpoint was
    written within ``timeout`` seconds."""
    last = os.path.join(output_dir, "last_checkpoint")
    deadline = time.time() + timeout
    try:
        while not os.path.isfile(last) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        running = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert os.path.isfile(last), "no checkpoint was written before the deadline"
    return running


@pytest.mark.slow
def test_resume_after_kill_continues_at_the_next_iteration(cache, tmp_path):
    out_dir = str(tmp_path / "resume")
    args = ["--config-file", YAML, *FAST, "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "22",
            "OUTPUT_DIR", out_dir]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train_net.py")] + args,
        env=_env(cache), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    kill_when_checkpointed(proc, out_dir, timeout=500)
    with open(os.path.join(out_dir, "last_checkpoint")) as f:
        checkpoint = f.read().strip()
    assert checkpoint == "model_0000021.pth"
    before = _metrics(out_dir)
    assert before and before[-1]["iteration"] == 19  # written by the period-20 writer
    assert not os.path.isfile(os.path.join(out_dir, "model_final.pth"))

    _train_net(cache, ["--resume"] + args)
    with open(os.path.join(out_dir, "log.txt")) as f:
        log = f.read()
    assert "Starting training from iteration 0" in log  # the first run
    assert "Starting training from iteration 22" in log  # the resumed one
    after = _metrics(out_dir)
    assert after[: len(before)] == before  # nothing written before is lost
    assert [m["iteration"] for m in after if "total_loss" in m][-1] == 29
    assert os.path.isfile(os.path.join(out_dir, checkpoint))
    assert os.path.isfile(os.path.join(out_dir, "model_final.pth"))


# ------------------------------------------------------------------------------ bad inputs


def _setup(*argv):
    return train_net.setup(default_argument_parser().parse_args(list(argv)))


def test_class_count_mismatch_fails_at_start(tmp_path):
    with pytest.raises(ValueError, match=r"'embedded_shapes_train' has 4 classes .* MODEL.SEM_SEG_HEAD.NUM_CLASSES is 80"):
        _setup("--config-file", YAML, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "80", "OUTPUT_DIR", str(tmp_path))


def test_unknown_config_keys_are_named(tmp_path):
    with pytest.raises(KeyError, match="MODEL.NO_SUCH_KEY"):
        _setup("--config-file", YAML, "MODEL.NO_SUCH_KEY", "1", "OUTPUT_DIR", str(tmp_path))
    from dimaskdino.utils.config_files import load_lazy_config

    with pytest.raises(KeyError, match="train.no_such_key"):
        load_lazy_config(LAZY, ["train.no_such_key=1"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        _setup("--config-file", str(tmp_path / "missing.yaml"))


def test_missing_dataset_root_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the builtin COCO registration looks under ./datasets
    with pytest.raises(FileNotFoundError, match=r"datasets/coco/annotations/instances_val2017.json"):
        _setup("--config-file", YAML, "--eval-only", "DATASETS.TEST", "('coco_2017_val',)",
               "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "80", "OUTPUT_DIR", str(tmp_path / "out"))


def test_bad_annotation_json_is_named(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [], "categories": [')
    register_coco_instances("broken_json_dataset_test", {}, str(broken), str(tmp_path))
    with pytest.raises(ValueError, match="broken.json"):
        check_datasets(["broken_json_dataset_test"], 4)


def test_missing_and_wrong_weights_are_named(tmp_path, cache, monkeypatch):
    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        _setup("--config-file", YAML, "--eval-only", "MODEL.WEIGHTS", missing, "OUTPUT_DIR", str(tmp_path))

    from detectron2.modeling import build_model

    from dimaskdino.utils.config_files import load_yaml_config
    from dimaskdino.utils.weights import load_weights

    model = build_model(load_yaml_config(YAML))
    other = str(tmp_path / "mask_rcnn.pth")
    torch.save({"model": {"roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 1024)}}, other)
    with pytest.raises(ValueError, match="mask_rcnn.pth"):
        load_weights(model, other)
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        load_weights(model, "")


def _single_image_dataset(tmp_path, name, write_image):
    image = tmp_path / f"{name}.png"
    write_image(image)
    coco = {
        "images": [{"id": 1, "file_name": image.name, "height": 32, "width": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}
        ],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(["circle", "square", "triangle", "star"])],
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(coco))
    register_coco_instances(name, {}, str(tmp_path / f"{name}.json"), str(tmp_path))
    return str(image)


@pytest.mark.parametrize("kind", ["corrupt", "missing"])
def test_corrupt_or_missing_image_is_named(tmp_path, kind):
    from dimaskdino.engine import DIMaskDINOTrainer
    from dimaskdino.utils.config_files import load_yaml_config

    def write(path):
        if kind == "corrupt":
            path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")

    name = f"{kind}_image_dataset_test"
    image = _single_image_dataset(tmp_path, name, write)
    cfg = load_yaml_config(YAML, [*FAST, "DATASETS.TRAIN", f"('{name}',)"])
    loader = DIMaskDINOTrainer.build_train_loader(cfg)
    with pytest.raises(Exception) as error:
        next(iter(loader))
    assert image in str(error.value)
