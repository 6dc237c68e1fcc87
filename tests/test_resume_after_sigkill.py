"""A real SIGKILL of a train_net.py training, a crash-truncated newest checkpoint, then --resume:
training continues after the last intact checkpoint with the uninterrupted run's optimizer,
scheduler (and AMP scaler) state and the same image ids in every later batch."""
import json
import os
import subprocess
import sys

import pytest
import torch

from test_train_net import FAST, REPO, YAML, _env, cache  # noqa: F401  (cache is a fixture)

RECORDER = os.path.join(REPO, "tests", "train_net_recorder.py")
# 16 training images, 2 per batch, 2 data-loader workers, a checkpoint every 4 iterations
ARGS = ["--config-file", YAML, *FAST, "DATALOADER.NUM_WORKERS", "2", "SOLVER.MAX_ITER", "10",
        "SOLVER.CHECKPOINT_PERIOD", "4", "DATASETS.TEST", "()"]


def _run(cache_dir, out_dir, records, *extra, amp=False, **env):
    device = ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True"] if amp else []
    result = subprocess.run(
        [sys.executable, RECORDER, *extra, *ARGS, *device, "OUTPUT_DIR", out_dir],
        env=dict(_env(cache_dir), RECORD_BATCHES=records, **env), cwd=REPO, capture_output=True, text=True,
        timeout=900,
    )
    return result


def _batches(path):
    with open(path) as f:
        return {row["iter"]: row["ids"] for row in map(json.loads, f)}


def _assert_same_state(ours, reference, where="trainer"):
    """Nested dicts/lists of tensors and plain values, compared exactly."""
    if isinstance(reference, dict):
        assert sorted(ours) == sorted(reference), where
        for key in reference:
            _assert_same_state(ours[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, (list, tuple)):
        assert len(ours) == len(reference), where
        for i, (a, b) in enumerate(zip(ours, reference)):
            _assert_same_state(a, b, f"{where}[{i}]")
    elif isinstance(reference, torch.Tensor):
        assert torch.equal(ours, reference), where
    else:
        assert ours == reference, where


AMP_ON_GPU = pytest.param(
    True,
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                reason="the float16 AMP variant (grad scaler) needs a CUDA device")],
)


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, AMP_ON_GPU], ids=["fp32_cpu", "amp_cuda"])
def test_sigkill_then_resume_continues_state_and_data_order(cache, tmp_path, amp):  # noqa: F811
    reference_dir, killed_dir = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    result = _run(cache, reference_dir, str(tmp_path / "a.jsonl"), amp=amp)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = _batches(tmp_path / "a.jsonl")
    assert sorted(reference) == list(range(10))

    result = _run(cache, killed_dir, str(tmp_path / "b1.jsonl"), amp=amp, KILL_AT_ITER="6")
    assert result.returncode == -9, result.stderr[-3000:]  # killed by SIGKILL during iteration 6
    with open(os.path.join(killed_dir, "last_checkpoint")) as f:
        assert f.read() == "model_0000003.pth"
    assert sorted(n for n in os.listdir(killed_dir) if n.endswith(".pth")) == ["model_0000003.pth"]
    # the crash: a newer checkpoint truncated under its real name, named by last_checkpoint
    intact = open(os.path.join(killed_dir, "model_0000003.pth"), "rb").read()
    with open(os.path.join(killed_dir, "model_0000007.pth"), "wb") as f:
        f.write(intact[: len(intact) // 3])
    with open(os.path.join(killed_dir, "last_checkpoint"), "w") as f:
        f.write("model_0000007.pth")

    resumed_state = str(tmp_path / "resumed_state.pth")
    result = _run(cache, killed_dir, str(tmp_path / "b2.jsonl"), "--resume", amp=amp, RESUMED_STATE=resumed_state)
    assert result.returncode == 0, result.stderr[-3000:]
    log = open(os.path.join(killed_dir, "log.txt")).read()
    assert "Starting training from iteration 4" in log
    warning = next(line for line in log.splitlines() if "Could not resume from" in line)
    assert "model_0000007.pth" in warning and "model_0000003.pth" in warning and "truncated" in warning

    # the state right after resuming is the uninterrupted run's state at iteration 3
    expected = torch.load(os.path.join(reference_dir, "model_0000003.pth"), weights_only=True)["trainer"]
    state = torch.load(resumed_state, weights_only=True)
    assert state["iteration"] == expected["iteration"] == 3
    assert expected["_trainer"]["optimizer"]["state"]  # AdamW moments exist, and must match
    assert ("grad_scaler" in expected["_trainer"]) == amp  # the AMP scaler state is compared too
    _assert_same_state(state, expected)

    # the data order continues: the same image ids at the same iterations
    before, after = _batches(tmp_path / "b1.jsonl"), _batches(tmp_path / "b2.jsonl")
    assert sorted(before) == list(range(6)) and sorted(after) == list(range(4, 10))
    assert all(before[i] == reference[i] for i in before)
    assert all(after[i] == reference[i] for i in after), (after, reference)
    assert [after[i] for i in range(4, 10)] != [reference[i] for i in range(6)]  # not a restarted stream
    assert os.path.isfile(os.path.join(killed_dir, "model_final.pth"))
