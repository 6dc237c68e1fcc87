"""Per-image CPU latency of the exported forms against eager PyTorch, on the same input.

    python benchmarks/export.py                          # R50 at 800x1333 and the embedded model at 128x128
    python benchmarks/export.py --models embedded --iters 10

For each model (random weights from a seed: the R50 4-scale config with MODEL.WEIGHTS "", and the embedded
main-job config), the inference network (normalised image in, raw outputs out; post-processing not timed)
is exported statically at the padded size (800x1333 pads to 800x1344) as torch.export, AOTInductor and
ONNX, then each form runs in its own process: ``--warmup`` runs, then the median of ``--iters`` runs. The
table gives the latency, the speed-up over eager in the same run, the peak RSS of that process, and the
largest difference of its outputs from eager's (logits, boxes, mask logits).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    "r50": ("configs/dimaskdino_r50_4scale_bs16_12ep.yaml", (800, 1333)),
    "embedded": ("configs/embedded/dimaskdino_r18_embedded.yaml", (128, 128)),
}
FORMS = ("eager", "torch_export", "aoti", "onnx")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of every form (0: the libraries' default)")
    parser.add_argument("--work-dir", default="", help="where the exports go (default: a temporary folder)")
    parser.add_argument("--run-one", nargs=3, metavar=("MODEL", "FORM", "FOLDER"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_network(name):
    from detectron2.modeling import build_model

    import dimaskdino.modeling  # noqa: F401  (registers the model)
    from dimaskdino.export import InferenceNetwork
    from dimaskdino.utils.config_files import load_yaml_config

    cfg = load_yaml_config(os.path.join(REPO_ROOT, MODELS[name][0]), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    return InferenceNetwork(build_model(cfg).eval())


def padded_input(name, divisibility=32):
    h, w = MODELS[name][1]
    h, w = -(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def export_all(name, folder):
    """Export the three forms of model ``name`` into ``folder``; returns the export time of each."""
    from dimaskdino.export.formats import FILE_NAMES, save_format

    network, example = build_network(name), padded_input(name)
    seconds = {}
    for fmt in ("torch_export", "aoti", "onnx"):
        start = time.perf_counter()
        save_format(fmt, network, example, None, os.path.join(folder, FILE_NAMES[fmt]))
        seconds[fmt] = time.perf_counter() - start
        print(f"[{name}] exported {fmt} in {seconds[fmt]:.0f} s", flush=True)
    return seconds


def peak_rss_mib():
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not inherit the parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(name, form, folder, warmup, iters):
    """In a child process: time one form, save its outputs, print a JSON line."""
    images = padded_input(name)
    if form == "eager":
        network = build_network(name)

        def run(x):
            with torch.no_grad():
                return network(x)
    else:
        from dimaskdino.export.formats import FILE_NAMES, load_runner

        run = load_runner(form, os.path.join(folder, FILE_NAMES[form]))
    for _ in range(warmup):
        run(images)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        outputs = run(images)
        times.append(time.perf_counter() - start)
    np.savez(os.path.join(folder, f"outputs_{form}.npz"), *[o.detach().numpy() for o in outputs])
    peak_mib = peak_rss_mib()
    print(json.dumps({"latency_s": float(np.median(times)), "peak_mib": peak_mib}))


def child(name, form, folder, args):
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--run-one", name, form, folder, "--warmup", str(args.warmup),
           "--iters", str(args.iters), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def max_differences(folder, form):
    eager, exported = (os.path.join(folder, f"outputs_{f}.npz") for f in ("eager", form))
    with np.load(eager) as e, np.load(exported) as g:
        return [float(np.abs(e[k] - g[k]).max()) for k in sorted(e.files)]


def benchmark(name, folder, args):
    exported = export_all(name, folder)
    results = {}
    for form in FORMS:
        results[form] = child(name, form, folder, args)
        print(f"[{name}] {form}: {results[form]['latency_s'] * 1000:.0f} ms", flush=True)
    h, w = padded_input(name).shape[-2:]
    print(f"\n{name}: input {MODELS[name][1][0]}x{MODELS[name][1][1]} (padded {h}x{w}), median of {args.iters} runs, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print("| form | ms / image | speed-up vs eager | peak RSS MiB | max diff (logits, boxes, masks) | export s |")
    print("|---|---:|---:|---:|---|---:|")
    eager = results["eager"]["latency_s"]
    for form in FORMS:
        r = results[form]
        diffs = "-" if form == "eager" else ", ".join(f"{d:.1e}" for d in max_differences(folder, form))
        export_s = f"{exported[form]:.0f}" if form in exported else "-"
        print(f"| {form} | {r['latency_s'] * 1000:.0f} | {eager / r['latency_s']:.2f}x | {r['peak_mib']:.0f} | "
              f"{diffs} | {export_s} |")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run_one:
        run_one(*args.run_one, args.warmup, args.iters)
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    for name in args.models:
        folder = args.work_dir or tempfile.mkdtemp(prefix=f"export_bench_{name}_")
        os.makedirs(folder, exist_ok=True)
        benchmark(name, folder, args)


if __name__ == "__main__":
    main()
