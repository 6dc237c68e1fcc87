"""Several processes through torch.distributed, on the CPU (gloo): train_net.py's own launcher,
torchrun, DDP gradients against one process, multi-process evaluation, a failing rank, --resume
after a kill, and the GPU check's answer on a machine without GPU.

Every multi-process run is a subprocess in its own session with a timeout: a hang fails the test
and the whole process group (launcher and ranks) is killed.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from dimaskdino.engine.launch import cluster_environment
from dimaskdino.evaluation.benchmark import combine_reports
from test_train_net import FAST, YAML, _env, _metrics, cache, kill_when_checkpointed  # noqa: F401  (cache: a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "distributed_worker.py")
TRAIN_NET = os.path.join(REPO, "train_net.py")
# one image per process: the training set's image without instance is, in every epoch, the whole
# batch of one rank (no instance, no denoising query there) while the other rank has instances
TWO_RANKS = [*FAST, "SOLVER.IMS_PER_BATCH", "2"]


def _run(cmd, env, timeout, check=True):
    """Run ``cmd`` in a new session; on timeout kill its whole process group and fail."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} ... hung for {timeout} s:\n{out[-3000:]}")
    if check:
        assert proc.returncode == 0, out[-5000:]
    return proc.returncode, out


def _env_cpu(cache_dir=None):
    env = _env(cache_dir) if cache_dir else dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU (gloo) path, also on a machine with GPUs
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID"):
        env.pop(key, None)
    return env


def _assert_close(reference, result, what, rtol, atol):
    assert reference.keys() == result.keys()
    for name in reference:
        torch.testing.assert_close(result[name], reference[name], rtol=rtol, atol=atol,
                                   msg=lambda m: f"{what} of {name}: {m}")


# ------------------------------------------------------------------------------ DDP gradients


@pytest.mark.slow
def test_two_processes_of_two_images_step_like_one_process_of_four(tmp_path):
    for processes in (1, 2):
        _run([sys.executable, WORKER, "grads", str(processes), str(tmp_path)], _env_cpu(), timeout=900)

    def load(scenario, processes, rank=0):
        return torch.load(tmp_path / f"{scenario}_{processes}_rank{rank}.pth")

    for scenario in ("one_empty_image", "one_instance_no_dn"):
        single, rank0, rank1 = load(scenario, 1), load(scenario, 2), load(scenario, 2, 1)
        assert len(single["grads"]) == len(single["params"])  # every parameter has a gradient
        # averaged gradients: float32 sums in another order; the largest gradients are ~1e2
        _assert_close(single["grads"], rank0["grads"], f"{scenario}: gradient", rtol=1e-4, atol=1e-4)
        # after one AdamW step (lr 5e-4): parameters equal to well below the step size
        _assert_close(single["params"], rank0["params"], f"{scenario}: parameter", rtol=0, atol=1e-6)
        _assert_close(rank0["params"], rank1["params"], f"{scenario}: rank 1 parameter", rtol=0, atol=0)

    # a rank without instances (and hence without denoising queries) takes part in the step
    rank0, rank1 = load("empty_rank_dn", 2), load("empty_rank_dn", 2, 1)
    assert all(torch.isfinite(g).all() for g in rank0["grads"].values())
    _assert_close(rank0["params"], rank1["params"], "empty_rank_dn: rank 1 parameter", rtol=0, atol=0)


# ------------------------------------------------------------------------------ failures


def test_a_failing_rank_ends_the_run_with_its_error(tmp_path):
    start = time.time()
    code, out = _run([sys.executable, WORKER, "crash", "2", str(tmp_path)], _env_cpu(), timeout=300, check=False)
    assert code != 0
    assert "rank 1 fails on purpose" in out
    assert time.time() - start < 300


def test_cluster_environment_from_torchrun_and_slurm_variables():
    assert cluster_environment({}) is None
    assert cluster_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None  # a job of one process
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "GROUP_RANK": "1",
                "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert cluster_environment(torchrun) == dict(rank=3, world_size=4, local_rank=1, node="1")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
             "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert cluster_environment(slurm) == dict(rank=5, world_size=8, local_rank=1, node="2")
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT not set"):
        cluster_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_benchmark_tool_refuses_several_processes():
    code, out = _run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--config-file", YAML,
                      "--task", "eval", "--num-gpus", "2"], _env_cpu(), timeout=300, check=False)
    assert code == 2 and "tools/benchmark.py times one process" in out


def test_inference_report_of_two_ranks():
    # rank 0: 2 calls of 1 image (0.1 s, 0.3 s); rank 1: 1 call of 2 images (0.2 s); no warm-up
    report = combine_reports([[(0.1, 1), (0.3, 1)], [(0.2, 2)]], [(100.0, "RSS"), (250.0, "RSS")], "cpu", 0)
    assert report.num_images == 4 and report.num_processes == 2
    assert report.images_per_second == pytest.approx(2 / 0.4 + 2 / 0.2)  # ranks run side by side
    # per-image latency of each call (0.2 s / 2 images = 100 ms), mean over the calls of all ranks
    assert report.latency_ms_mean == pytest.approx((100 + 300 + 100) / 3)
    assert report.peak_memory_mb == 250.0
    assert "processes" in report.table()


# ------------------------------------------------------------------------------ train_net.py


def _ap(log: str, task: str) -> float:
    """AP of the last 'Evaluation results for <task>' table in a log."""
    tables = re.findall(rf"Evaluation results for {task}:\s*\n.*\n.*\n\|\s*([\d.nan]+)\s*\|", log)
    assert tables, f"no {task} table in the log"
    return float(tables[-1])


@pytest.mark.slow
def test_train_net_two_processes_then_one_process_eval_gives_the_same_ap(cache, tmp_path):
    out_dir = str(tmp_path / "two")
    _, log = _run([sys.executable, TRAIN_NET, "--num-gpus", "2", "--config-file", YAML, *TWO_RANKS,
                   "SOLVER.MAX_ITER", "20", "OUTPUT_DIR", out_dir], _env_cpu(cache), timeout=1200)
    assert "Rank 0 of 2;" in log
    with open(os.path.join(out_dir, "log.txt.rank1")) as f:
        assert "Rank 1 of 2;" in f.read()
    assert [m["iteration"] for m in _metrics(out_dir) if "total_loss" in m][-1] == 19
    assert os.path.isfile(os.path.join(out_dir, "model_final.pth"))
    weights = ["MODEL.WEIGHTS", os.path.join(out_dir, "model_final.pth")]

    _, double = _run([sys.executable, TRAIN_NET, "--eval-only", "--num-gpus", "2", "--config-file", YAML,
                      *TWO_RANKS, *weights, "OUTPUT_DIR", str(tmp_path / "two_eval")], _env_cpu(cache), timeout=600)
    assert re.search(r"\|\s*processes \(img/s summed.*\|\s*2\s*\|", double)  # the report covers both ranks
    with open(tmp_path / "two_eval" / "inference_benchmark_embedded_shapes_val.json") as f:
        report = json.load(f)
    assert report["num_processes"] == 2 and report["num_images"] + report["num_warmup_images"] == 6

    _, single = _run([sys.executable, TRAIN_NET, "--eval-only", "--config-file", YAML, *TWO_RANKS, *weights,
                      "OUTPUT_DIR", str(tmp_path / "one_eval")], _env_cpu(cache), timeout=600)
    for task in ("bbox", "segm"):
        # the evaluation at the end of the 2-process training, a 2-process and a 1-process --eval-only
        assert _ap(double, task) == pytest.approx(_ap(log, task), abs=1e-3), task
        assert _ap(single, task) == pytest.approx(_ap(log, task), abs=1e-3), task

    # tools/layerwise_ap.py in 2 processes: its final stage is the model's output
    layerwise = tmp_path / "layerwise.json"
    _, out = _run([sys.executable, os.path.join(REPO, "tools", "layerwise_ap.py"), "--num-gpus", "2",
                   "--config-file", YAML, "--json", str(layerwise), *TWO_RANKS, *weights,
                   "OUTPUT_DIR", str(tmp_path / "layerwise")], _env_cpu(cache), timeout=600)
    assert out.count("Layer-wise AP on embedded_shapes_val") == 1  # printed by rank 0 only
    final = json.loads(layerwise.read_text())["stages"][-1]
    assert final["box_ap"] == pytest.approx(_ap(single, "bbox"), abs=1e-3)
    assert final["mask_ap"] == pytest.approx(_ap(single, "segm"), abs=1e-3)


@pytest.mark.slow
def test_torchrun_starts_train_net(cache, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0"]
    _run(torchrun + [WORKER, "local_rank", "1", str(tmp_path)], _env_cpu(), timeout=300)
    for rank in (0, 1):  # rank, local rank, local size, world size
        assert (tmp_path / f"rank{rank}.txt").read_text() == f"{rank} {rank} 2 2"

    out_dir = str(tmp_path / "torchrun")
    _, log = _run(torchrun + [TRAIN_NET, "--config-file", YAML, *TWO_RANKS, "SOLVER.MAX_ITER", "3",
                              "OUTPUT_DIR", out_dir], _env_cpu(cache), timeout=900)
    assert "Rank 0 of 1;" not in log  # not two single-process trainings
    with open(os.path.join(out_dir, "log.txt.rank1")) as f:
        assert "Rank 1 of 2;" in f.read()
    assert [m["iteration"] for m in _metrics(out_dir) if "total_loss" in m][-1] == 2
    assert os.path.isfile(os.path.join(out_dir, "model_final.pth"))


@pytest.mark.slow
def test_two_processes_killed_then_resumed_continue_after_the_checkpoint(cache, tmp_path):
    out_dir = str(tmp_path / "resume")
    args = [sys.executable, TRAIN_NET, "--num-gpus", "2", "--config-file", YAML, *TWO_RANKS,
            "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "6", "TEST.EVAL_PERIOD", "0",
            "OUTPUT_DIR", out_dir]
    proc = subprocess.Popen(args, env=_env_cpu(cache), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    kill_when_checkpointed(proc, out_dir, timeout=600)  # the launcher and both ranks
    with open(os.path.join(out_dir, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000005.pth"
    assert not os.path.isfile(os.path.join(out_dir, "model_final.pth"))

    _run(args[:2] + ["--resume"] + args[2:], _env_cpu(cache), timeout=900)
    with open(os.path.join(out_dir, "log.txt")) as f:
        log = f.read()
    assert "Starting training from iteration 6" in log
    with open(os.path.join(out_dir, "log.txt.rank1")) as f:
        assert "Starting training from iteration 6" in f.read()
    assert [m["iteration"] for m in _metrics(out_dir) if "total_loss" in m][-1] == 11
    assert os.path.isfile(os.path.join(out_dir, "model_final.pth"))


# ------------------------------------------------------------------------------ GPU check and build


def test_gpu_check_says_no_gpu_in_one_line_and_exits_0():
    env = dict(_env_cpu(), PYTHON=sys.executable)
    for cmd in (["bash", os.path.join(REPO, "tools", "gpu_check.sh")],
                [sys.executable, os.path.join(REPO, "tools", "gpu_check.py")]):
        code, out = _run(cmd, env, timeout=300, check=False)
        assert code == 0, out
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) == 1 and "no CUDA GPU is visible" in lines[0], out


@pytest.mark.slow
def test_gpu_check_runs_its_checks_on_the_cpu(tmp_path):
    """The same code as on a GPU, on tiny sizes (a smoke test: CUDA-only checks report skipped)."""
    report = tmp_path / "gpu_check.md"
    _run([sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--device", "cpu", "--quick",
          "--report", str(report)], _env_cpu(), timeout=600)
    rows = [line for line in report.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 8  # header + 7 checks
    assert all("| pass |" in row for row in rows[1:]), rows
    assert re.search(r"ours [\d.]+ ms, PyTorch reference [\d.]+ ms", report.read_text())


def _cuda_toolkit():
    return torch.version.cuda is not None and any(
        os.path.exists(os.path.join(d, "nvcc")) for d in os.environ.get("PATH", "").split(os.pathsep))


@pytest.mark.skipif(not _cuda_toolkit(), reason="needs a CUDA build of torch and nvcc on PATH")
def test_default_cuda_arch_list_embeds_ptx_of_its_newest_arch(tmp_path):
    env = dict(_env_cpu(), FORCE_CUDA="1")
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    # --name only evaluates setup.py (the extension's settings), it compiles nothing
    out = subprocess.run([sys.executable, os.path.join(REPO, "setup.py"), "--name"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TORCH_CUDA_ARCH_LIST=8.0;8.6;9.0+PTX)" in out.stdout


def test_the_first_failing_rank_is_reported(tmp_path):
    from dimaskdino.engine.launch import _first_error

    assert _first_error(str(tmp_path)) is None
    (tmp_path / "rank0.txt").write_text("1700000002.5\nRuntimeError: Connection closed by peer")
    (tmp_path / "rank1.txt").write_text("1700000001.25\nValueError: the real cause")
    assert _first_error(str(tmp_path)) == (1700000001.25, 1, "ValueError: the real cause")
