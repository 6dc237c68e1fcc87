"""Process CPU time of one training iteration of a config on its real data, with one thread.

    python benchmarks/iteration_cpu_time.py                             # the main job's config
    python benchmarks/iteration_cpu_time.py --variant "INPUT.IMAGE_SIZE 96" --variant "SOLVER.IMS_PER_BATCH 4"
    python benchmarks/iteration_cpu_time.py --variant "SOLVER.AMP.ENABLED False"   # float32 vs bfloat16

On a shared machine wall time depends on the other jobs; the CPU time a single-threaded process
spends per iteration does much less, and is what an idle core would take. Every variant (KEY VALUE
overrides on the config) is timed in the same run next to the baseline (no overrides): data loading
in the process (``DATALOADER.NUM_WORKERS 0``), forward, backward and optimizer step, averaged over
``--iters`` iterations after ``--warmup``. Prints CPU ms per iteration and the ratio to the baseline.
"""
import argparse
import os
import shlex
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import dimaskdino.data  # noqa: E402,F401  (registers the datasets)
import dimaskdino.modeling  # noqa: E402,F401  (registers the model)
from dimaskdino.engine import DIMaskDINOTrainer  # noqa: E402
from dimaskdino.engine.precision import add_cpu_autocast, uses_cpu_autocast  # noqa: E402
from dimaskdino.utils.config_files import load_yaml_config  # noqa: E402

DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "embedded", "dimaskdino_r18_embedded.yaml")


def cpu_ms_per_iteration(config_file, overrides, warmup, iters):
    cfg = load_yaml_config(config_file, list(overrides) + ["DATALOADER.NUM_WORKERS", "0"])
    torch.manual_seed(0)
    model = DIMaskDINOTrainer.build_model(cfg)
    model.train()
    if uses_cpu_autocast(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE):  # as the trainer: bfloat16 forward
        add_cpu_autocast(model)
    optimizer = DIMaskDINOTrainer.build_optimizer(cfg, model)
    batches = iter(DIMaskDINOTrainer.build_train_loader(cfg))
    for index in range(warmup + iters):
        if index == warmup:
            start = time.process_time()
        losses = model(next(batches))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return (time.process_time() - start) / iters * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--variant", action="append", default=[], help='overrides, e.g. "INPUT.IMAGE_SIZE 96"')
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    baseline = cpu_ms_per_iteration(args.config_file, [], args.warmup, args.iters)
    print(f"| variant | CPU ms / iteration | ratio |\n|---|---:|---:|\n| baseline | {baseline:.0f} | 1.00 |", flush=True)
    for variant in args.variant:
        ms = cpu_ms_per_iteration(args.config_file, shlex.split(variant), args.warmup, args.iters)
        print(f"| {variant} | {ms:.0f} | {ms / baseline:.2f} |", flush=True)


if __name__ == "__main__":
    main()
