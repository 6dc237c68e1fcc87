"""Time one DI-MaskDINO training iteration, split into its parts, and report peak memory.

    python benchmarks/train_step.py                       # the embedded R18 config on the CPU
    python benchmarks/train_step.py --device cuda --image-size 512 --batch-size 4

The batch is synthetic (random rectangles of random classes on noise), built once; data loading is
not timed. After ``--warmup`` iterations, ``--iters`` iterations are timed and averaged:

* backbone, pixel decoder, predictor (two-stage selection, DI module, decoder, BATO): the forward
  pass of the model without its criterion;
* matcher: every Hungarian matching call of the criterion (final, auxiliary, interm and TI stages);
* losses: the rest of the criterion (point sampling and the loss terms);
* backward, optimizer: ``loss.backward()`` and ``optimizer.step()`` (with gradient clipping).
"""
import argparse
import os
import resource
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.config import add_dimaskdino_config
from dimaskdino.engine import build_optimizer_from_cfg

DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs/embedded/dimaskdino_r18_embedded.yaml")


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--instances", type=int, default=4, help="instances per image")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--full-scale-matcher", action="store_true",
        help="also time one matching at the paper's scale: 300 queries, 80 classes, 20 instances, "
        "12544 mask points, 256x256 mask logits, 1024x1024 targets",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser.parse_args()


def synthetic_batch(batch_size, size, num_instances, num_classes, generator):
    """Images (3, size, size) uint8 with ``num_instances`` random rectangles each."""
    batch = []
    for _ in range(batch_size):
        image = torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=generator)
        corners = torch.randint(0, size // 2, (num_instances, 2), generator=generator)
        extents = torch.randint(size // 8, size // 2, (num_instances, 2), generator=generator)
        boxes = torch.cat([corners, corners + extents], dim=1).float()
        masks = torch.zeros(num_instances, size, size, dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = True
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_masks = BitMasks(masks)
        instances.gt_classes = torch.randint(0, num_classes, (num_instances,), generator=generator)
        batch.append({"image": image, "instances": instances})
    return batch


class StageTimer:
    """Accumulates wall time per named stage; synchronises CUDA at every boundary."""

    def __init__(self, device):
        self.totals = defaultdict(float)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @contextmanager
    def stage(self, name):
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.totals[name] += time.perf_counter() - start

    def time_module(self, module, name):
        """Time every call of ``module`` under ``name`` (nested calls included in the caller)."""
        starts = []

        def before(*_):
            self.sync()
            starts.append(time.perf_counter())

        def after(*_):
            self.sync()
            self.totals[name] += time.perf_counter() - starts.pop()

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)


def time_full_scale_matcher(device, repeats=5):
    """Milliseconds of one image's Hungarian matching with the paper's sizes."""
    from dimaskdino.modeling.matcher import HungarianMatcher
    from dimaskdino.modeling.outputs import StagePrediction

    generator = torch.Generator().manual_seed(0)
    queries, classes, instances = 300, 80, 20
    outputs = StagePrediction(
        logits=torch.randn(1, queries, classes, generator=generator).to(device),
        boxes=(torch.rand(1, queries, 4, generator=generator) * 0.5 + 0.25).to(device),
        masks=torch.randn(1, queries, 256, 256, generator=generator).to(device),
    )
    targets = [{
        "labels": torch.randint(0, classes, (instances,), generator=generator),
        "boxes": torch.rand(instances, 4, generator=generator) * 0.5 + 0.25,
        "masks": torch.rand(instances, 1024, 1024, generator=generator) > 0.5,
    }]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    matcher = HungarianMatcher(num_points=12544)
    timer = StageTimer(device)
    matcher(outputs, targets)
    for _ in range(repeats):
        with timer.stage("match"):
            matcher(outputs, targets)
    return timer.totals["match"] / repeats * 1000


def build(args):
    cfg = get_cfg()
    add_dimaskdino_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    model = build_model(cfg)
    model.train()
    return cfg, model, build_optimizer_from_cfg(cfg, model)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, model, optimizer = build(args)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch(
        args.batch_size, args.image_size, args.instances, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, generator
    )
    timer = StageTimer(device)
    for module, name in [
        (model.backbone, "backbone"),
        (model.sem_seg_head.pixel_decoder, "pixel decoder"),
        (model.sem_seg_head.predictor, "predictor"),
        (model.criterion, "criterion"),
        (model.criterion.matcher, "matcher"),
    ]:
        timer.time_module(module, name)

    for iteration in range(args.warmup + args.iters):
        if iteration == args.warmup:
            timer.totals.clear()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
        with timer.stage("step"):
            with timer.stage("model"):
                losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            with timer.stage("backward"):
                total.backward()
            with timer.stage("optimizer"):
                optimizer.step()

    t = {name: value / args.iters * 1000 for name, value in timer.totals.items()}
    rows = [
        ("backbone", t["backbone"]),
        ("pixel decoder", t["pixel decoder"]),
        ("predictor (selection, DI, decoder, BATO)", t["predictor"]),
        ("matcher", t["matcher"]),
        ("losses (criterion without matcher)", t["criterion"] - t["matcher"]),
        ("backward", t["backward"]),
        ("optimizer step", t["optimizer"]),
        ("total step", t["step"]),
    ]
    if device.type == "cuda":
        memory = f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        memory = f"peak process RSS: {peak_kib / 1024:.0f} MiB"
    config = " ".join([os.path.relpath(args.config_file, REPO_ROOT)] + args.opts)
    print(
        f"config {config}, device {args.device}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size} x {args.image_size}x{args.image_size}, "
        f"{args.instances} instances/image, {len(losses)} loss terms, mean of {args.iters} iterations "
        f"after {args.warmup} warm-up"
    )
    print("| part | ms / iteration | share of step |")
    print("|---|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} | {100 * ms / t['step']:.0f}% |")
    print(memory)
    if args.full_scale_matcher:
        print(f"full-scale matching (300 queries x 20 instances, 12544 points): "
              f"{time_full_scale_matcher(device):.1f} ms per image and stage")


if __name__ == "__main__":
    main()
