#!/usr/bin/env python
"""
The model-level part of the GPU acceptance check (tools/gpu_check.sh runs it after building the op
with FORCE_CUDA=1 and running the op's GPU tests):

1. CUDA outputs equal the CPU outputs on the same weights (embedded config, R50 config), float32
   with TF32 off;
2. 50 AMP training iterations (float16 with a grad scaler, bfloat16) of the embedded config on a
   fixed synthetic batch: every loss finite and the loss falling;
3. 2 processes of DDP with NCCL through train_net.py when 2 GPUs are visible;
4. timings: the op (our CUDA kernel vs the PyTorch reference, forward + backward at the R50
   800x1333 encoder's sizes) and R50 inference at 800x1333;

and writes the results as a markdown table.

    python tools/gpu_check.py --report output/gpu_check.md

``--device cpu --quick`` runs the same code on the CPU (a smoke test of this script).
"""
import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Tuple

import torch

NO_GPU = "[gpu-check] no CUDA GPU is visible: nothing to check here"
if __name__ == "__main__" and "--device" not in " ".join(sys.argv) and not torch.cuda.is_available():
    print(NO_GPU)  # before the imports below, which print warnings: one line and exit 0
    sys.exit(0)

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402

import dimaskdino.modeling  # noqa: E402,F401  (registers the model)
from dimaskdino.engine import build_optimizer_from_cfg  # noqa: E402
from dimaskdino.layers.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference  # noqa: E402
from dimaskdino.utils.config_files import load_yaml_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EMBEDDED = os.path.join(ROOT, "configs", "embedded", "dimaskdino_r18_embedded.yaml")
R50 = os.path.join(ROOT, "configs", "dimaskdino_r50_4scale_bs16_12ep.yaml")
Row = Tuple[str, bool, str]  # (check, passed, detail)


def build(config: str, device: str, seed: int = 0):
    cfg = load_yaml_config(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device])
    torch.manual_seed(seed)
    return cfg, build_model(cfg)


def random_inputs(size: Tuple[int, int], count: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    return [{"image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8), "height": h, "width": w}
            for _ in range(count)]


def head_outputs(model, inputs):
    """The final stage's raw predictions: logits (B, Q, K), boxes (B, Q, 4), masks (B, Q, h, w)."""
    captured = {}

    def keep(module, args, output):
        final = output.final  # a dimaskdino.modeling.outputs.PredictorOutput
        captured.update(logits=final.logits, boxes=final.boxes, masks=final.masks)

    handle = model.sem_seg_head.register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    return {k: v.float().cpu() for k, v in captured.items()}


def check_cuda_matches_cpu(config: str, size, device: str) -> Row:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _, model = build(config, "cpu")
    model.eval()
    inputs = random_inputs(size)
    reference = head_outputs(model, inputs)
    ours = head_outputs(model.to(device), inputs)
    details, ok = [], True
    for key, ref in reference.items():
        rel = float((ours[key] - ref).abs().max() / ref.abs().max().clamp(min=1.0))
        ok &= rel < 1e-3
        details.append(f"{key} {rel:.1e}")
    name = f"{device} = CPU outputs, {os.path.basename(config)} {size[0]}x{size[1]}"
    return name, ok, "max error / max value: " + ", ".join(details) + " (limit 1e-3)"


def painted_batch(count: int = 4, size: int = 128, seed: int = 0):
    """Images with 1-3 coloured rectangles each, and their instances."""
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(count):
        image = torch.full((3, size, size), 90, dtype=torch.uint8)
        n = int(torch.randint(1, 4, (1,), generator=gen))
        corners = torch.randint(0, size // 2, (n, 2), generator=gen)
        extents = torch.randint(size // 8, size // 2, (n, 2), generator=gen)
        boxes = torch.cat([corners, corners + extents], 1).float()
        labels = torch.randint(0, 4, (n,), generator=gen)
        masks = torch.zeros(n, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
            label = int(labels[i])
            image[:, masks[i]] = torch.tensor([60 * (label + 1), 200 - 40 * label, 120], dtype=torch.uint8)[:, None]
        instances = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=labels, gt_masks=BitMasks(masks))
        batch.append({"image": image, "instances": instances})
    return batch


def check_amp_training(dtype: torch.dtype, device: str, iterations: int) -> Row:
    name = f"AMP {str(dtype).split('.')[-1]} training, {iterations} iterations"
    if device != "cuda":
        return name, True, "skipped: AMP is checked on CUDA"
    cfg, model = build(EMBEDDED, device)
    model.train()
    optimizer = build_optimizer_from_cfg(cfg, model)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    batch = painted_batch()
    losses: List[float] = []
    for _ in range(iterations):
        with torch.autocast(device, dtype=dtype):
            loss = sum(model(batch).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss))
    window = max(1, iterations // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    finite = all(torch.isfinite(torch.tensor(losses)))
    detail = f"all losses finite: {finite}; mean loss of the first / last {window}: {first:.3f} / {last:.3f}"
    return name, finite and last < first, detail


def check_ddp_nccl(device: str) -> Row:
    name = "2 processes DDP (NCCL), train_net.py embedded config 20 iterations"
    if device != "cuda" or torch.cuda.device_count() < 2:
        return name, True, f"skipped: {torch.cuda.device_count() if device == 'cuda' else 0} GPU(s) visible"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--num-gpus", "2", "--config-file", EMBEDDED,
               "MODEL.DEVICE", "cuda", "SOLVER.MAX_ITER", "20", "DATALOADER.NUM_WORKERS", "2", "OUTPUT_DIR", tmp]
        env = dict(os.environ, DIMASKDINO_CACHE=os.environ.get("DIMASKDINO_CACHE", os.path.join(tmp, "cache")))
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        log = out.stdout + out.stderr
        ok = out.returncode == 0 and "Rank 0 of 2;" in log
        return name, ok, f"exit code {out.returncode}" + ("" if ok else f": {log[-400:]!r}")


def timed_ms(step: Callable[[], object], device: str, warmup: int, iterations: int) -> float:
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / iterations


def time_op(device: str, quick: bool) -> Row:
    """Forward + backward at the R50 800x1333 encoder's sizes (strides 8-64, 8 heads of 32)."""
    shapes = [(100, 167), (50, 84), (25, 42), (13, 21)] if not quick else [(20, 34), (10, 17)]
    spatial = torch.tensor(shapes, device=device)
    areas = spatial.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    tokens = int(areas.sum())
    value = torch.randn(1, tokens, 8, 32, device=device, requires_grad=True)
    locations = torch.rand(1, tokens, 8, len(shapes), 4, 2, device=device, requires_grad=True)
    weights = torch.rand(1, tokens, 8, len(shapes), 4, device=device).softmax(-1).requires_grad_()

    def step(op):
        return lambda: op(value, spatial, starts, locations, weights).sum().backward()

    ours = timed_ms(step(ms_deform_attn), device, 3, 5 if quick else 20)
    reference = timed_ms(step(ms_deform_attn_reference), device, 3, 5 if quick else 20)
    return (f"op forward + backward, {tokens} queries x {tokens} values", True,
            f"ours {ours:.2f} ms, PyTorch reference {reference:.2f} ms ({reference / ours:.1f}x)")


def time_r50_inference(device: str, quick: bool) -> Row:
    size = (800, 1333) if not quick else (320, 320)
    _, model = build(R50, device)
    model.eval()
    inputs = random_inputs(size)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        ms = timed_ms(lambda: model(inputs), device, 2 if quick else 5, 2 if quick else 20)
    memory = f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device == "cuda" else ""
    return f"R50 inference {size[0]}x{size[1]}, batch 1, float32", True, f"{ms:.1f} ms / image{memory}"


def markdown(rows: List[Row], device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [f"GPU check, {datetime.date.today()}, {name}, torch {torch.__version__}", "",
             "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {check} | {'pass' if ok else 'FAIL'} | {detail} |" for check, ok, detail in rows]
    return "\n".join(lines) + "\n"


def run_checks(device: str, quick: bool) -> List[Row]:
    checks = [
        ("CUDA = CPU, embedded", lambda: check_cuda_matches_cpu(EMBEDDED, (128, 128), device)),
        ("CUDA = CPU, R50", lambda: check_cuda_matches_cpu(R50, (256, 320) if quick else (512, 640), device)),
        ("AMP float16", lambda: check_amp_training(torch.float16, device, 4 if quick else 50)),
        ("AMP bfloat16", lambda: check_amp_training(torch.bfloat16, device, 4 if quick else 50)),
        ("DDP NCCL", lambda: check_ddp_nccl(device)),
        ("op timing", lambda: time_op(device, quick)),
        ("R50 inference timing", lambda: time_r50_inference(device, quick)),
    ]
    rows = []
    for label, check in checks:
        start = time.perf_counter()
        try:
            row = check()
        except Exception as error:  # one failing check must not hide the others
            row = (label, False, f"{type(error).__name__}: {str(error)[:300]}")
        print(f"[gpu-check] {'pass' if row[1] else 'FAIL'}: {row[0]}: {row[2]} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", default=os.path.join(ROOT, "output", "gpu_check.md"), help="markdown file")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of this script")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (smoke test)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    rows = run_checks(args.device, args.quick)
    table = markdown(rows, args.device)
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    with open(args.report, "w") as f:
        f.write(table)
    print(table + f"\n[gpu-check] table written to {args.report}")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
