"""Starting train_net.py and the tools in one or several processes through torch.distributed.

Three ways, chosen by :func:`launch`:

* **started by a cluster tool** (torchrun, SLURM): RANK / WORLD_SIZE (or SLURM_PROCID / SLURM_NTASKS)
  and MASTER_ADDR / MASTER_PORT are set, so every process joins that group (``env://``) and runs
  the job itself; ``--num-gpus`` and friends are ignored.
* **GPUs visible**: detectron2's own ``launch`` (NCCL, one process per GPU, several machines through
  ``--num-machines/--machine-rank/--dist-url``).
* **no GPU**: ``--num-gpus N`` spawns N CPU processes per machine that talk over gloo, so the
  multi-process code paths run (and are tested) on any machine.

In every case detectron2's per-machine process group is set, so ``comm.get_local_rank()`` works.
A rank that raises ends the whole run: spawned siblings are terminated and the error of the rank
that failed first is raised in the parent (torchrun does the same for its workers).
"""
import argparse
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from datetime import timedelta
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm
from torch.distributed.elastic.multiprocessing.errors import record

__all__ = ["DEFAULT_TIMEOUT", "cluster_environment", "distributed_argument_parser", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)

NUM_PROCESSES_HELP = (
    "processes per machine: one per GPU (NCCL) when GPUs are visible, otherwise this many CPU "
    "processes (gloo). Ignored when torchrun or SLURM started the process."
)


def distributed_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` with ``--num-gpus`` explained for CPU machines and
    the cluster launchers, and ``--dist-url`` "auto" (a free port) by default."""
    parser = default_argument_parser(epilog)
    for action in parser._actions:
        if "--num-gpus" in action.option_strings:
            action.help = NUM_PROCESSES_HELP
        if "--dist-url" in action.option_strings:
            # detectron2's default is one port per user: two runs at once on a machine would clash
            action.default = "auto"
            action.help = "tcp://HOST:PORT of machine 0 for several machines; default: a free local port"
    parser.epilog = (parser.epilog or "") + (
        "\nStarted by torchrun (or srun with MASTER_ADDR/MASTER_PORT exported), every process joins "
        "the job's process group instead:\n    $ torchrun --nproc_per_node 2 "
        f"{os.path.basename(parser.prog)} --config-file cfg.yaml\n"
    )
    return parser


def cluster_environment(environ: Optional[Dict[str, str]] = None) -> Optional[Dict[str, object]]:
    """The rank, world size, local rank and node of a process started by torchrun or SLURM.

    Returns None when the process was not started that way (or is the only one of its job).
    Raises ValueError when a rank is set but MASTER_ADDR / MASTER_PORT, which env:// needs, are not.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, torch.distributed.launch
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0))
        node = env.get("GROUP_RANK", socket.gethostname())
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        rank, world_size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        node = env.get("SLURM_NODEID", socket.gethostname())
    else:
        return None
    if world_size <= 1:
        return None
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in env]
    if missing:
        raise ValueError(
            f"rank {rank} of {world_size} processes, but {' and '.join(missing)} not set: export "
            "MASTER_ADDR (the first node's host name) and MASTER_PORT (a free port) for env:// "
            "initialisation"
        )
    return dict(rank=rank, world_size=world_size, local_rank=local_rank, node=str(node))


def _free_local_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def _set_local_process_group(node_of_each_rank: Sequence[str]) -> None:
    """Creates one group per machine (every rank must create every group, in the same order) and
    stores this rank's as detectron2's ``comm._LOCAL_PROCESS_GROUP``."""
    if comm._LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("the local process group is already set: launch() was called twice")
    my_node = node_of_each_rank[dist.get_rank()]
    for node in sorted(set(node_of_each_rank)):
        group = dist.new_group([r for r, n in enumerate(node_of_each_rank) if n == node])
        if node == my_node:
            comm._LOCAL_PROCESS_GROUP = group


def _write_error(error_dir: Optional[str]) -> None:
    """Keeps the current exception's traceback and time, as ``error_dir/rank<R>.txt``."""
    if error_dir:
        with open(os.path.join(error_dir, f"rank{dist.get_rank()}.txt"), "w") as f:
            f.write(f"{time.time()!r}\n{traceback.format_exc()}")


def _first_error(error_dir: str) -> Optional[Tuple[float, int, str]]:
    """(time, rank, traceback) of the rank that failed first, or None."""
    errors = []
    for name in os.listdir(error_dir):
        with open(os.path.join(error_dir, name)) as f:
            stamp, _, text = f.read().partition("\n")
        errors.append((float(stamp), int(name[len("rank"):-len(".txt")]), text))
    return min(errors) if errors else None


def _run_in_group(main_func: Callable, args: Sequence, node: str, error_dir: Optional[str] = None) -> object:
    """With the default group initialised: set the per-machine group, wait for everyone, run."""
    nodes = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    _set_local_process_group(nodes)
    comm.synchronize()
    try:
        return main_func(*args)
    except BaseException:
        _write_error(error_dir)  # before the group is torn down and the other ranks fail too
        raise
    finally:
        dist.destroy_process_group()


def _join_cluster_group(main_func: Callable, args: Sequence, cluster: Dict[str, object], timeout) -> object:
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(cluster["local_rank"])
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method="env://",
        rank=cluster["rank"],
        world_size=cluster["world_size"],
        timeout=timeout,
    )
    # record() leaves the error where torchrun looks for it, so torchrun names the first failure
    return _run_in_group(record(main_func), args, cluster["node"])


def _cpu_worker(local_rank, main_func, num_processes, machine_rank, world_size, dist_url, args, timeout, error_dir):
    # the spawned processes share the machine's cores: do not let each use all of them
    torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // num_processes)))
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        rank=machine_rank * num_processes + local_rank,
        world_size=world_size,
        timeout=timeout,
    )
    _run_in_group(main_func, args, f"machine{machine_rank}", error_dir)


def _spawn_cpu_processes(main_func, num_processes, machine_rank, world_size, dist_url, args, timeout) -> None:
    """Runs the CPU processes; when some fail, raises the error of the one that failed first (the
    others' errors, e.g. gloo's "connection closed by peer", follow from it)."""
    error_dir = tempfile.mkdtemp(prefix="dimaskdino-launch-")
    try:
        mp.start_processes(
            _cpu_worker,
            nprocs=num_processes,
            args=(main_func, num_processes, machine_rank, world_size, dist_url, tuple(args), timeout, error_dir),
            daemon=False,
            start_method="spawn",
        )
    except mp.ProcessRaisedException as error:
        first = _first_error(error_dir)
        if first is None or first[1] == machine_rank * num_processes + error.error_index:
            raise
        raise RuntimeError(f"process of rank {first[1]} failed first:\n{first[2]}") from error
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


def launch(
    main_func: Callable,
    num_processes: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = "auto",
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` in every process of the job (see the module docstring).

    Args:
        num_processes: processes per machine (``--num-gpus``): GPUs to use, or CPU processes.
        num_machines, machine_rank: for jobs over several machines.
        dist_url: ``tcp://HOST:PORT`` of machine 0, or "auto" (a free local port; one machine only).
    Returns:
        ``main_func``'s result in a single process, None when processes were spawned.
    """
    cluster = cluster_environment()
    if cluster is not None:
        if num_processes * num_machines > 1:
            logger.warning("started by torchrun/SLURM: --num-gpus/--num-machines are ignored")
        return _join_cluster_group(main_func, args, cluster, timeout)
    if torch.cuda.is_available():
        return detectron2_launch(main_func, num_processes, num_machines, machine_rank, dist_url, args, timeout)
    world_size = num_processes * num_machines
    if world_size == 1:
        return main_func(*args)
    if dist_url in (None, "", "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; give tcp://HOST:PORT of machine 0")
        dist_url = _free_local_url()
    _spawn_cpu_processes(main_func, num_processes, machine_rank, world_size, dist_url, args, timeout)
    return None

