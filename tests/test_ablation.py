"""tools/ablation.py end to end on a tiny study (2 variants x 1 seed x a few iterations), stopped
during the second run's training and resumed; and its summary arithmetic by hand."""
import json
import math
import os
import subprocess
import sys

import pytest

from dimaskdino.data.datasets.embedded import EMBEDDED_VERSION, generate_embedded_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import ablation  # noqa: E402
from test_train_net import kill_when_checkpointed  # noqa: E402

# the main job's config made tiny: 64x64 inputs, 2 images per batch, 2 decoder layers, 8 iterations
TINY = [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "8", "SOLVER.STEPS", "(6,)", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "3", "INPUT.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0", "MODEL.MaskDINO.DEC_LAYERS", "2",
    "MODEL.MaskDINO.TRAIN_NUM_POINTS", "256",
]


@pytest.fixture(scope="module")
def small_embedded(tmp_path_factory):
    """A DIMASKDINO_CACHE holding an embedded shapes dataset of 8 training and 4 validation images."""
    root = str(tmp_path_factory.mktemp("ablation_cache"))
    generate_embedded_shapes(os.path.join(root, "embedded_shapes", EMBEDDED_VERSION), {"train": 8, "val": 4})
    return root


def _command(output_dir):
    return [sys.executable, os.path.join(REPO, "tools", "ablation.py"), "--variants", "dimaskdino", "maskdino",
            "--seeds", "3", "--output-dir", output_dir, *TINY]


def _env(cache):
    return dict(os.environ, DIMASKDINO_CACHE=cache, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def _iterations(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return [json.loads(line)["iteration"] for line in f if "total_loss" in line]


@pytest.mark.slow
def test_tiny_study_runs_end_to_end_and_resumes_after_a_stop(small_embedded, tmp_path):
    out = str(tmp_path / "study")
    first, second = os.path.join(out, "dimaskdino", "seed3"), os.path.join(out, "maskdino", "seed3")
    proc = subprocess.Popen(_command(out), env=_env(small_embedded), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert kill_when_checkpointed(proc, second, timeout=500), "the study ended before it could be stopped"
    assert os.path.isfile(os.path.join(first, "layerwise.json"))  # the first run was finished
    assert not os.path.isfile(os.path.join(second, "model_final.pth"))  # the second one was not
    finished_mtime = os.path.getmtime(os.path.join(first, "model_final.pth"))

    resumed = subprocess.run(_command(out), env=_env(small_embedded), cwd=REPO, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "run 1/2: dimaskdino seed 3: already evaluated, skipped" in resumed.stdout
    assert "run 2/2: maskdino seed 3: resuming training" in resumed.stdout
    assert os.path.getmtime(os.path.join(first, "model_final.pth")) == finished_mtime
    # the second run continued after its checkpoint (iterations 0-2 done) instead of restarting at 0
    with open(os.path.join(second, "log.txt")) as f:
        log = f.read()
    assert log.count("Starting training from iteration 0") == 1
    assert log.count("Starting training from iteration 3") == 1
    assert _iterations(second)[-1] == 7
    with open(os.path.join(out, "ablation.json")) as f:
        study = json.load(f)
    assert list(study["variants"]) == ["dimaskdino", "maskdino"]
    for name, (di, stages) in {"dimaskdino": (True, {"ti1"}), "maskdino": (False, set())}.items():
        with open(os.path.join(out, name, "seed3", "layerwise.json")) as f:
            names = {s["name"] for s in json.load(f)["stages"]}
        assert stages <= names and ("ti1" in names) == di  # the DI switch reached the model
        numbers = study["variants"][name]["runs"]["3"]
        assert 0 <= numbers["box_ap"] <= 100 and 0 <= numbers["mask_ap"] <= 100
    with open(os.path.join(out, "ablation.md")) as f:
        table = f.read()
    assert "| DI-MaskDINO (DI + BATO) | on | on | 1 |" in table and "| MaskDINO (both off) | off | off | 1 |" in table
    assert os.path.getsize(os.path.join(out, "ablation.png")) > 0

    # a study is not resumed with other settings
    other = subprocess.run(_command(out)[:-2] + ["MODEL.MaskDINO.TRAIN_NUM_POINTS", "128"],
                           env=_env(small_embedded), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "study.json" in other.stderr


def _layerwise(final_box, final_mask, gap_initial, gap_dec1):
    stages = [("interm", 1.0, 2.0), ("initial", 10.0, 10.0 - gap_initial), ("dec1", 20.0, 20.0 - gap_dec1),
              ("dec2", final_box, final_mask)]
    return {"final_stage": "dec2", "stages": [
        {"name": n, "box_ap": b, "mask_ap": m, "box_minus_mask_ap": b - m} for n, b, m in stages]}


def test_summary_mean_and_sample_std_by_hand(tmp_path):
    runs = [ablation.Run("dimaskdino", s, str(tmp_path / f"a{s}")) for s in (0, 1, 2)]
    runs.append(ablation.Run("maskdino", 0, str(tmp_path / "b0")))
    values = {0: (30.0, 33.0, -4.0, -2.0), 1: (32.0, 36.0, -6.0, -1.0), 2: (34.0, 30.0, -5.0, 0.0)}
    for run in runs:
        os.makedirs(run.directory)
        with open(run.layerwise_json, "w") as f:
            json.dump(_layerwise(*(values[run.seed] if run.variant == "dimaskdino" else (10, 12, 3, 1))), f)
    summary = ablation.summarise(runs)
    stats = summary["dimaskdino"]["stats"]
    assert stats["box_ap"] == pytest.approx((32.0, 2.0))  # mean 32, sample std sqrt((4 + 0 + 4) / 2)
    assert stats["mask_ap"] == pytest.approx((33.0, 3.0))
    assert stats["gap_initial"] == pytest.approx((-5.0, 1.0))
    assert stats["gap_dec1"] == pytest.approx((-1.0, 1.0))
    assert math.isnan(summary["maskdino"]["stats"]["box_ap"][1])  # one seed: no spread
    table = ablation.format_table(summary).splitlines()
    assert table[2] == "| DI-MaskDINO (DI + BATO) | on | on | 3 | 32.0 ± 2.0 | 33.0 ± 3.0 | -5.0 ± 1.0 | -1.0 ± 1.0 |"
    assert table[3] == "| MaskDINO (both off) | off | off | 1 | 10.0 | 12.0 | 3.0 | 1.0 |"


def test_plan_gives_single_switches_fewer_seeds_and_states_follow_the_files(tmp_path):
    args = ablation.parse_args(["--seeds", "0", "1", "2", "--output-dir", str(tmp_path), "SOLVER.MAX_ITER", "5"])
    plan = [(r.variant, r.seed) for r in ablation.plan_runs(args)]
    assert plan == [("dimaskdino", 0), ("dimaskdino", 1), ("dimaskdino", 2), ("maskdino", 0), ("maskdino", 1),
                    ("maskdino", 2), ("di_only", 0), ("bato_only", 0)]
    run = ablation.plan_runs(args)[0]
    assert run.overrides()[:6] == ["MODEL.MaskDINO.DI_ENABLED", "True", "MODEL.MaskDINO.BATO_ENABLED", "True",
                                   "SEED", "0"]
    os.makedirs(run.directory)
    assert ablation.run_state(run) == "new"
    open(os.path.join(run.directory, "last_checkpoint"), "w").close()
    assert ablation.run_state(run) == "partial"
    open(run.trained_marker, "w").close()
    assert ablation.run_state(run) == "trained"
    with open(run.layerwise_json, "w") as f:
        f.write('{"stages": [')  # stopped while writing: not evaluated
    assert ablation.run_state(run) == "trained"
    with pytest.raises(SystemExit):
        ablation.parse_args(["SOLVER.MAX_ITER"])
