#!/usr/bin/env python
"""
Benchmark a DI-MaskDINO config, in the manner of detectron2's tools/benchmark.py.

    # data loading: images/s of the training loader (mapper + collation + workers)
    python tools/benchmark.py --config-file <cfg> --task data
    # inference: s/iter over cached test batches (data loading excluded)
    python tools/benchmark.py --config-file <cfg> --task eval MODEL.WEIGHTS model.pth
    # training iterations: s/iter over cached training batches, plus a time breakdown
    python tools/benchmark.py --config-file <cfg> --task train --breakdown

Batches are read once and cached, the first ``--warmup`` iterations are not timed, then
``--iters`` iterations are. ``--breakdown`` adds (a) forward time per top-level module
(backbone, pixel decoder, transformer predictor, criterion) and backward + optimizer time,
and (b) profiler self time grouped by operator kind (convolution, deformable attention,
matmul, element-wise, ...). One process only: ``--num-gpus`` > 1 and torchrun are refused.
"""
import itertools
import logging
import re
import time
from collections import defaultdict

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

import dimaskdino.data  # noqa: F401  (registers the datasets)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.engine.precision import add_cpu_autocast, uses_cpu_autocast
from dimaskdino.engine.launch import cluster_environment, distributed_argument_parser
from dimaskdino.engine.runner import load_run
from dimaskdino.utils.weights import load_weights

logger = logging.getLogger("dimaskdino")

# operator-name patterns -> kind, first match wins (profiler self CPU/CUDA time is summed per kind)
OP_KINDS = [
    ("deformable attention", r"ms_deform|deform_attn|grid_sampler"),
    ("convolution", r"conv|cudnn_convolution|mkldnn_convolution"),
    ("matmul / linear", r"addmm|\bmm\b|bmm|matmul|linear|baddbmm|_efficient_attention|scaled_dot_product"),
    ("normalisation", r"norm"),
    ("matching (scipy)", r"linear_sum_assignment"),
    ("sampling / indexing", r"index|gather|scatter|nonzero|topk|sort|masked_select|where|point_sample|cat|stack"),
    ("memory / copies", r"copy_|to\b|_to_copy|contiguous|clone|empty|zeros|ones|fill_|resize|view|reshape|permute|transpose|flatten|expand|slice|select|unsqueeze|squeeze"),
    ("element-wise", r"add|mul|sub|div|sigmoid|relu|exp|log|pow|sqrt|clamp|neg|abs|tanh|sin|cos|max|min|mean|sum|softmax|gelu|where|threshold|lt|gt|eq|ne|ge|le|rsub|reciprocal"),
]


def setup(args):
    """The run view of the config file (dimaskdino.engine.runner), with console loggers."""
    run = load_run(args.config_file, args.opts)
    setup_logger(distributed_rank=comm.get_rank(), name="dimaskdino")
    setup_logger(distributed_rank=comm.get_rank())
    return run


def load_model_weights(run, model):
    if run.weights:
        load_weights(model, run.weights, key=run.weights_key)


def timed(fn, iters, warmup):
    times = []
    for i in range(warmup + iters):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return np.array(times)


def summary(name, times, images_per_iter):
    rows = [
        ["iterations timed", len(times)],
        ["s / iter (mean)", f"{times.mean():.4f}"],
        ["s / iter (median)", f"{np.median(times):.4f}"],
        ["images / s", f"{images_per_iter / times.mean():.2f}"],
    ]
    if torch.cuda.is_available():
        rows.append(["CUDA max allocated (MiB)", f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"])
    return f"{name}:\n" + tabulate(rows, tablefmt="pipe", headers=["metric", "value"])


def benchmark_data(args):
    run = setup(args)
    loader = iter(run.build_train_loader())
    next(loader)
    batch_size = []
    times = timed(lambda i: batch_size.append(len(next(loader))), args.iters, args.warmup)
    print(summary("training data loader", times, np.mean(batch_size)))


def _module_timer(model, names):
    """Forward hooks accumulating the wall time of the named submodules."""
    totals = defaultdict(float)
    starts = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def pre(_m, _inp, name=name):
            starts[name] = time.perf_counter()

        def post(_m, _inp, _out, name=name):
            totals[name] += time.perf_counter() - starts[name]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return totals, handles


def _op_kind(name):
    lowered = name.lower()
    for kind, pattern in OP_KINDS:
        if re.search(pattern, lowered):
            return kind
    return "other"


def profile_breakdown(step, iters, measured_ms):
    """Operator self times under torch.profiler, which slows every operator down (on a small CPU
    model several-fold): the tables give the profiled times, their share, and that share of the
    iteration time ``measured_ms`` measured without the profiler, with a line saying so."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for i in range(iters):
            step(i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    profiled_ms = 1000 * (time.perf_counter() - start) / iters
    use_cuda = torch.cuda.is_available()
    per_kind = defaultdict(float)
    per_op = []
    for event in prof.key_averages():
        t = event.self_device_time_total if use_cuda else event.self_cpu_time_total
        per_kind[_op_kind(event.key)] += t
        per_op.append((t, event.key))
    total = sum(per_kind.values())
    def row(name, t):
        return name, t / 1e3 / iters, 100 * t / total, measured_ms * t / total

    headers = ["profiled ms / iter", "%", "share of the measured iteration (ms)"]
    rows = sorted((row(k, v) for k, v in per_kind.items()), key=lambda r: -r[1])
    table = tabulate(rows, headers=["operator kind"] + headers, floatfmt=".1f", tablefmt="pipe")
    top_table = tabulate([row(k, t) for t, k in sorted(per_op, reverse=True)[:15]],
                         headers=["operator"] + headers, floatfmt=".1f", tablefmt="pipe")
    note = (f"Operator breakdown under torch.profiler: {profiled_ms:.0f} ms/iter with the profiler on vs "
            f"{measured_ms:.0f} ms/iter measured without it ({profiled_ms / measured_ms:.1f}x inflated). "
            "Profiled times are inflated; read the % and the last column.")
    return note, table, top_table


def benchmark_train(args):
    run = setup(args)
    model = run.build_model()
    model.train()
    optimizer = run.build_optimizer(model)
    load_model_weights(run, model)
    if uses_cpu_autocast(run.amp, run.device):  # as the trainer: bfloat16 forward on the CPU
        add_cpu_autocast(model)
    elif run.amp:
        print("note: float16 AMP on CUDA is not applied here; iterations are timed in float32")
    loader = run.build_train_loader()
    batches = list(itertools.islice(loader, args.cached_batches))

    def step(i):
        losses = model(batches[i % len(batches)])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times = timed(step, args.iters, args.warmup)
    print(summary("training iterations (data loading excluded)", times, len(batches[0])))
    if not args.breakdown:
        return
    names = [n for n in ("backbone", "sem_seg_head.pixel_decoder", "sem_seg_head.predictor", "criterion")
             if _has_submodule(model, n)]
    totals, handles = _module_timer(model, names)
    step_times = timed(step, args.iters, 0)
    for h in handles:
        h.remove()
    forward_total = sum(totals.values())
    rows = [(n, 1000 * totals[n] / args.iters) for n in names]
    rows.append(("backward + optimizer + rest", 1000 * (step_times.sum() - forward_total) / args.iters))
    print(tabulate(
        [(n, ms, 100 * ms / (1000 * step_times.mean())) for n, ms in rows],
        headers=["part of an iteration", "ms / iter", "%"], floatfmt=".1f", tablefmt="pipe",
    ))
    note, kinds, top_ops = profile_breakdown(step, min(args.iters, 10), 1000 * times.mean())
    print(note)
    print(kinds)
    print(top_ops)


def _has_submodule(model, name):
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


@torch.no_grad()
def benchmark_eval(args):
    run = setup(args)
    model = run.build_model()
    load_model_weights(run, model)
    model.eval()
    batches = list(itertools.islice(run.test_sets()[0][1](), args.cached_batches))
    times = timed(lambda i: model(batches[i % len(batches)]), args.iters, args.warmup)
    print(summary("inference (data loading excluded)", times, len(batches[0])))


TASKS = {"data": benchmark_data, "train": benchmark_train, "eval": benchmark_eval}


def main():
    parser = distributed_argument_parser()
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--iters", type=int, default=50, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--cached-batches", type=int, default=20, help="batches read once and reused")
    parser.add_argument("--breakdown", action="store_true", help="train task: time per module and per op kind")
    args = parser.parse_args()
    if args.eval_only:
        parser.error("--eval-only does not apply here; use --task eval")
    if args.num_gpus * args.num_machines > 1 or cluster_environment() is not None:
        parser.error(
            "tools/benchmark.py times one process; run it with --num-gpus 1 and without torchrun. The "
            "inference report of several processes comes from train_net.py --eval-only --num-gpus N."
        )
    TASKS[args.task](args)


if __name__ == "__main__":
    main()
