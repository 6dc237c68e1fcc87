"""Jobs that tests/test_distributed.py runs in several processes (not a test module).

    python tests/distributed_worker.py grads NUM_PROCESSES OUT_DIR
    python tests/distributed_worker.py crash 2 OUT_DIR
    python tests/distributed_worker.py local_rank 1 OUT_DIR   # under torchrun

``grads``: one training step of the tiny model on the 4 images of each scenario below, split
evenly over the processes; every rank saves the DDP-averaged gradients and the parameters after
one optimizer step. Randomness is removed so that 2 x 2 images and 1 x 4 images can agree: denoising
noise off (DN_NOISE_SCALE 0), the matcher's and the criterion's random mask points replaced by one
fixed grid, and FrozenBN in the backbone (BatchNorm statistics are per process by design).
"""
import os
import pathlib
import sys

import torch
import torch.distributed as dist
from detectron2.utils import comm

from dimaskdino.engine import build_optimizer_from_cfg
from dimaskdino.engine.ddp import create_ddp_model
from dimaskdino.engine.launch import launch
from tiny_training import painted_image, tiny_cfg, tiny_model  # tests/ is the script's folder

REPO = pathlib.Path(__file__).resolve().parents[1]

ONE_EMPTY_IMAGE = [
    [(0, (6, 8, 30, 28)), (2, (36, 30, 58, 60))],
    [(1, (10, 34, 40, 58))],
    [(3, (40, 6, 60, 26)), (0, (4, 4, 20, 20))],
    [],
]
# in 2 processes the second one gets no instance at all
EMPTY_SECOND_HALF = ONE_EMPTY_IMAGE[:2] + [[], []]
# one instance in all (the second process has none, and no denoising): the loss normaliser is
# max(1, 1) / 2 on each rank, as one process normalises by max(1, 1)
ONE_INSTANCE = [ONE_EMPTY_IMAGE[1], [], [], []]

# scenario -> (objects of the 4 images, denoising mode). With denoising, every rank's largest
# object count must be the whole batch's (2 here) for 1 and 2 processes to agree: the denoising
# queries are padded to it and the padding slots are supervised as "no object" by the class loss.
SCENARIOS = {
    "one_empty_image": (ONE_EMPTY_IMAGE, "seg"),
    "one_instance_no_dn": (ONE_INSTANCE, "no"),
    # no denoising query on rank 1: runs, but is not equal to one process (padding above)
    "empty_rank_dn": (EMPTY_SECOND_HALF, "seg"),
}


def fixed_grid(count: int, num_points: int) -> torch.Tensor:
    """(count, num_points, 2) points of one regular grid in [0, 1]^2."""
    side = int(num_points ** 0.5)
    axis = (torch.arange(side, dtype=torch.float) + 0.5) / side
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([x.flatten(), y.flatten()], dim=-1)
    grid = torch.cat([grid, grid[: num_points - grid.shape[0]]])
    return grid[None].expand(count, num_points, 2).contiguous()


def remove_randomness():
    from dimaskdino.modeling import criterion, matcher

    def grid_points(mask_logits, num_points, *ratios):
        return fixed_grid(mask_logits.shape[0], num_points).to(mask_logits.device)

    criterion.uncertain_point_coords = grid_points
    matcher.HungarianMatcher.random_point_coords = lambda self, count, device: fixed_grid(count, self.num_points).to(device)


def one_step(scenario: str, out_dir: str) -> None:
    objects, dn = SCENARIOS[scenario]
    cfg = tiny_cfg(REPO, DN_NOISE_SCALE=0.0, DN=dn)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    model = tiny_model(cfg, seed=0)
    optimizer = build_optimizer_from_cfg(cfg, model)
    ddp_model = create_ddp_model(model, broadcast_buffers=False)
    world, rank = comm.get_world_size(), comm.get_rank()
    share = len(objects) // world
    batch = [painted_image(o) for o in objects[rank * share: (rank + 1) * share]]
    losses = ddp_model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"{scenario}_{world}_rank{rank}.pth"))


def grads_job(out_dir: str) -> None:
    torch.set_num_threads(1)
    remove_randomness()
    for scenario in SCENARIOS:
        one_step(scenario, out_dir)


def crash_job(out_dir: str) -> None:
    if comm.get_rank() == 1:
        raise ValueError("rank 1 fails on purpose")
    dist.barrier()  # rank 0 waits for rank 1 forever unless the launcher ends the run


def local_rank_job(out_dir: str) -> None:
    path = os.path.join(out_dir, f"rank{comm.get_rank()}.txt")
    with open(path, "w") as f:
        f.write(f"{comm.get_rank()} {comm.get_local_rank()} {comm.get_local_size()} {comm.get_world_size()}")


JOBS = {"grads": grads_job, "crash": crash_job, "local_rank": local_rank_job}


if __name__ == "__main__":
    job, num_processes, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    launch(JOBS[job], num_processes, args=(out_dir,))
