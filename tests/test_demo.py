"""demo/demo.py on the main job's model size: a corrupt file in the input folder is skipped and
listed with a non-zero exit, every good image gets a drawing, equal file stems get distinct names."""
import os
import subprocess
import sys

import cv2
import numpy as np
import torch
from detectron2.modeling import build_model

from dimaskdino.utils.config_files import load_yaml_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "demo"))
import demo  # noqa: E402

YAML = os.path.join(REPO, "configs", "embedded", "dimaskdino_r18_embedded.yaml")


def test_output_names_are_unique_per_input():
    paths = ["a/x.png", "b/x.png", "x.jpg", "y.png", "c/x_2.png"]
    assert demo.output_names(paths) == ["x.png", "x_2.png", "x_3.png", "y.png", "x_2_2.png"]


def test_default_threshold_is_below_the_main_job_scores():
    # the main job's model scores its detections 0.30-0.49 (docs/main_job.md)
    assert demo.get_parser().parse_args(["--config-file", "c", "--input", "i", "--output", "o"]).confidence_threshold == 0.3


def test_demo_skips_a_corrupt_file_lists_it_and_exits_non_zero(tmp_path):
    torch.manual_seed(0)
    weights = str(tmp_path / "main_job_sized.pth")
    torch.save({"model": build_model(load_yaml_config(YAML)).state_dict()}, weights)  # the main job's size
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    image = np.zeros((128, 128, 3), np.uint8)
    cv2.rectangle(image, (20, 30), (70, 90), (30, 200, 30), thickness=-1)
    cv2.imwrite(str(folder / "a.png"), image)
    cv2.imwrite(str(folder / "c.jpg"), image[:, ::-1])
    cv2.imwrite(str(folder / "sub" / "a.png"), image[::-1])
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "drawings"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file", YAML,
         "--input", str(folder), str(folder / "sub" / "a.png"), "--output", str(out),
         "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", weights],
        env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"), cwd=REPO, capture_output=True, text=True,
        timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert sorted(os.listdir(out)) == ["a.png", "a_2.png", "c.png"]
    assert "1 of 4 inputs could not be read and were skipped" in log and str(folder / "b.png") in log
    for name, source in (("a.png", image), ("a_2.png", image[::-1]), ("c.png", image[:, ::-1])):
        drawing = cv2.imread(str(out / name))
        assert drawing.shape == source.shape and not np.array_equal(drawing, source)  # something drawn
