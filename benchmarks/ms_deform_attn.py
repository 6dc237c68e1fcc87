#!/usr/bin/env python
"""Benchmark of multi-scale deformable attention: dimaskdino's kernels against the grid_sample reference.

Shapes of DI-MaskDINO at an 800x1333 input: levels (100, 167), (50, 84), (25, 42), (13, 21), so
S = 22,223 pixels, 8 heads x 32 channels, 4 levels x 4 points, batch 1.
- "encoder": Q = S queries, one per pixel, sampling around their own position (reference point
  at the pixel centre, offsets in the pattern of Deformable DETR's init plus noise of a few pixels);
- "decoder": Q = 300 queries at random positions with offsets of a few pixels;
- with --locations uniform, all locations uniform over the maps (no locality: the worst case).

Times are medians of --repeats runs after one warm-up run, ours and the reference measured
alternately in the same process. Peak memory of forward+backward is measured in a fresh
subprocess per (implementation, shape): the peak resident set size (VmHWM of /proc/self/status,
reset just before the op runs, inputs already made) minus the resident size then. On CUDA, peak
torch.cuda.max_memory_allocated above the inputs.

    python benchmarks/ms_deform_attn.py                 # CPU, all shapes, 1 and all threads
    python benchmarks/ms_deform_attn.py --device cuda   # GPU, float32 and bfloat16

For bfloat16, value is bfloat16 and the locations and weights float32 (what autocast gives the op);
the reference then computes in float32.
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from dimaskdino.layers.ms_deform_attn import (
    ms_deform_attn,
    ms_deform_attn_backends,
    ms_deform_attn_reference,
)

LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
HEADS, CHANNELS, POINTS = 8, 32, 4
QUERIES = {"encoder": sum(h * w for h, w in LEVELS), "decoder": 300}
IMPLEMENTATIONS = {"ours": ms_deform_attn, "reference": ms_deform_attn_reference}


def make_inputs(shape, locations, device, dtype, batch=1, seed=0):
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights for a shape."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(LEVELS, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, Q, L = int(areas.sum()), QUERIES[shape], len(LEVELS)
    value = torch.randn(batch, S, HEADS, CHANNELS, generator=gen)
    if locations == "uniform":
        sampling_locations = torch.rand(batch, Q, HEADS, L, POINTS, 2, generator=gen)
    else:
        if shape == "encoder":  # each pixel of each level is a query, at its own centre
            centres = []
            for h, w in LEVELS:
                ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
                centres.append(torch.stack([xs.flatten(), ys.flatten()], -1))
            reference = torch.cat(centres).expand(batch, Q, 2)
        else:
            reference = torch.rand(batch, Q, 2, generator=gen)
        # Deformable DETR's initial pattern: head h looks along angle 2 pi h / H, point k at k + 1 pixels
        angles = torch.arange(HEADS) * (2 * math.pi / HEADS)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        pattern = directions.view(HEADS, 1, 1, 2) * torch.arange(1, POINTS + 1).view(1, 1, POINTS, 1)
        offsets = pattern + torch.randn(batch, Q, HEADS, L, POINTS, 2, generator=gen)  # in pixels
        level_size = spatial_shapes.flip(-1).to(torch.float32).view(1, 1, 1, L, 1, 2)  # (w, h)
        sampling_locations = reference.view(batch, Q, 1, 1, 1, 2) + offsets / level_size
    attention_weights = torch.rand(batch, Q, HEADS, L, POINTS, generator=gen)
    attention_weights = attention_weights / attention_weights.sum((-1, -2), keepdim=True)
    # float16/bfloat16 runs keep locations and weights in float32, as autocast does (see ms_deform_attn)
    coordinate_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return [value.to(device, dtype), spatial_shapes.to(device), level_start_index.to(device),
            sampling_locations.to(device, coordinate_dtype), attention_weights.to(device, coordinate_dtype)]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_once(fn, inputs, backward):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = inputs
    if not backward:
        with torch.no_grad():
            return fn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    leaves = [t.detach().requires_grad_() for t in (value, sampling_locations, attention_weights)]
    output = fn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    output.backward(torch.ones_like(output))
    return output


def time_pair(inputs, backward, repeats, device):
    """Median seconds of ours and of the reference, measured alternately."""
    times = {name: [] for name in IMPLEMENTATIONS}
    for name, fn in IMPLEMENTATIONS.items():  # warm-up
        run_once(fn, inputs, backward)
    for _ in range(repeats):
        for name, fn in IMPLEMENTATIONS.items():
            sync(device)
            start = time.perf_counter()
            run_once(fn, inputs, backward)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rss_bytes(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


def peak_memory_child(name, shape, locations, device, dtype):
    """Run in a fresh process: bytes of peak memory of one forward+backward above the inputs."""
    inputs = make_inputs(shape, locations, device, dtype)
    fn = IMPLEMENTATIONS[name]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run_once(fn, inputs, backward=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    reset_peak_rss()
    before = rss_bytes("VmRSS")
    run_once(fn, inputs, backward=True)
    return rss_bytes("VmHWM") - before


def peak_memory(name, shape, locations, device, dtype, threads):
    args = [sys.executable, os.path.abspath(__file__), "--memory-child", name, shape, "--locations", locations,
            "--device", device, "--dtype", str(dtype).replace("torch.", ""), "--threads", str(threads)]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def check_agreement(inputs, device):
    ours = run_once(ms_deform_attn, inputs, backward=False)
    reference = run_once(ms_deform_attn_reference, inputs, backward=False)
    return (ours.float() - reference.float()).abs().max().item()


def describe_machine(device, threads):
    lines = [f"date: {time.strftime('%Y-%m-%d')}", f"torch {torch.__version__}, python {platform.python_version()}",
             f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {threads}"]
    if device == "cpu":
        from dimaskdino import _C

        lines.append(f"CPU kernel: {_C.cpu_kernel_isa()} copy, OpenMP {'on' if _C.compiled_with_openmp() else 'OFF'}")
        if not _C.compiled_with_openmp():
            lines.append("WARNING: dimaskdino._C was built without -fopenmp: the CPU kernels run on one thread")
        load = os.getloadavg()
        lines.append(f"load average before the run: {load[0]:.2f} (other jobs share the CPU if this exceeds 0)")
    else:
        lines.append(f"GPU: {torch.cuda.get_device_name()}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shapes", nargs="+", default=["encoder", "decoder"], choices=list(QUERIES))
    parser.add_argument("--locations", default="local", choices=["local", "uniform"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: torch's)")
    parser.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1-thread run")
    parser.add_argument("--memory-child", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.memory_child:
        dtype = getattr(torch, args.dtype or "float32")
        peak = peak_memory_child(*args.memory_child, args.locations, args.device, dtype)
        print(json.dumps({"peak_bytes": peak}))
        return

    backend = ms_deform_attn_backends()[args.device]
    if not backend:
        sys.exit(f"no compiled {args.device} kernel here (ms_deform_attn_backends() = {ms_deform_attn_backends()})")
    dtypes = [torch.float32] if args.device == "cpu" else [torch.float32, torch.bfloat16]
    print("\n".join(describe_machine(args.device, args.threads)))
    print(f"locations: {args.locations}; median of {args.repeats} runs\n")
    header = "| shape | dtype | threads | pass | ours (ms) | reference (ms) | speed-up |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    thread_counts = [args.threads] if args.device == "cuda" or args.no_scaling else sorted({1, args.threads})
    memory_rows = []
    for shape in args.shapes:
        for dtype in dtypes:
            inputs = make_inputs(shape, args.locations, args.device, dtype)
            error = check_agreement(inputs, args.device)
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for backward in (False, True):
                    t = time_pair(inputs, backward, args.repeats, args.device)
                    print(f"| {shape} (Q={QUERIES[shape]}) | {str(dtype).replace('torch.', '')} | {threads} | "
                          f"{'fwd+bwd' if backward else 'fwd'} | {t['ours'] * 1e3:.1f} | "
                          f"{t['reference'] * 1e3:.1f} | {t['reference'] / t['ours']:.1f}x |", flush=True)
            torch.set_num_threads(args.threads)
            if not args.no_memory:
                peaks = {name: peak_memory(name, shape, args.locations, args.device, dtype, args.threads)
                         for name in IMPLEMENTATIONS}
                memory_rows.append((shape, dtype, peaks, error))
    if memory_rows:
        print("\nPeak memory of one forward+backward above the inputs"
              f" ({'RSS, fresh process each' if args.device == 'cpu' else 'torch.cuda.max_memory_allocated'}),"
              " and the largest output difference from the reference:\n")
        print("| shape | dtype | ours (MiB) | reference (MiB) | max abs diff |")
        print("|---|---|---|---|---|")
        for shape, dtype, peaks, error in memory_rows:
            print(f"| {shape} | {str(dtype).replace('torch.', '')} | {peaks['ours'] / 2**20:.0f} | "
                  f"{peaks['reference'] / 2**20:.0f} | {error:.1e} |")


if __name__ == "__main__":
    main()
