#!/usr/bin/env python
"""
The paper's ablation in miniature: train a config with DI and BATO on (DI-MaskDINO), both off
(MaskDINO) and each one alone, at equal iterations over several seeds, evaluate every run with the
layer-wise tool (tools/layerwise_ap.py) and summarise.

    python tools/ablation.py                                  # the embedded config, output/ablation
    python tools/ablation.py --seeds 0 1 2 --single-switch-seeds 1 SOLVER.MAX_ITER 300 SOLVER.STEPS "(260,)"
    python tools/ablation.py --variants dimaskdino maskdino --seeds 0 --output-dir output/ablation_small

Every run trains with train_net.py in OUTPUT_DIR/<variant>/seed<k> (config overrides: the switches,
SEED and the KEY VALUE pairs given here), then tools/layerwise_ap.py writes its layerwise.json.
Writes to OUTPUT_DIR: ablation.md (the table: final box / mask AP, mean ± sample std over seeds;
box - mask AP at the initial prediction and at the first decoder layer), ablation.json (every
run's numbers) and ablation.png.

Rerunning the same command resumes a stopped study: evaluated runs are skipped, trained runs are
only evaluated, and a run stopped during training continues from its last checkpoint
(train_net.py --resume). The study's settings are kept in OUTPUT_DIR/study.json; resuming with
other settings is refused.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join("configs", "embedded", "dimaskdino_r18_embedded.yaml")

# name -> (label, DI_ENABLED, BATO_ENABLED)
VARIANTS = {
    "dimaskdino": ("DI-MaskDINO (DI + BATO)", True, True),
    "maskdino": ("MaskDINO (both off)", False, False),
    "di_only": ("DI only", True, False),
    "bato_only": ("BATO only", False, True),
}
SINGLE_SWITCHES = ("di_only", "bato_only")


@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    directory: str

    def overrides(self) -> List[str]:
        _, di, bato = VARIANTS[self.variant]
        return ["MODEL.MaskDINO.DI_ENABLED", str(di), "MODEL.MaskDINO.BATO_ENABLED", str(bato),
                "SEED", str(self.seed), "OUTPUT_DIR", self.directory]

    @property
    def layerwise_json(self) -> str:
        return os.path.join(self.directory, "layerwise.json")

    @property
    def trained_marker(self) -> str:
        return os.path.join(self.directory, "training_finished.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="yaml config (default: the main job's)")
    parser.add_argument("--output-dir", default=os.path.join("output", "ablation"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--single-switch-seeds", type=int, default=1, metavar="N",
                        help="DI only / BATO only run with the first N seeds (default 1)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run, KEY VALUE pairs")
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got an odd number: {args.opts}")
    if args.single_switch_seeds < 1:
        parser.error("--single-switch-seeds must be at least 1")
    return args


def plan_runs(args) -> List[Run]:
    """Every (variant, seed) of the study, in the order they are trained."""
    runs = []
    for variant in args.variants:
        seeds = args.seeds[: args.single_switch_seeds] if variant in SINGLE_SWITCHES else args.seeds
        runs += [Run(variant, seed, os.path.join(args.output_dir, variant, f"seed{seed}")) for seed in seeds]
    return runs


def check_same_study(args) -> None:
    """Record the study's settings, or refuse to resume a study that was started with other ones."""
    settings = {"config_file": args.config_file, "opts": list(args.opts)}
    path = os.path.join(args.output_dir, "study.json")
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != settings:
            raise SystemExit(
                f"{path} holds a study started with other settings ({previous}); this command has {settings}. "
                "Use another --output-dir, or the same config file and overrides."
            )
        return
    os.makedirs(args.output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)


def load_layerwise(run: Run) -> Optional[Dict]:
    """The run's layer-wise numbers, or None if it was not evaluated (or stopped while writing them)."""
    try:
        with open(run.layerwise_json) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_state(run: Run) -> str:
    """"evaluated", "trained", "partial" (stopped during training, a checkpoint exists) or "new"."""
    if load_layerwise(run) is not None:
        return "evaluated"
    if os.path.isfile(run.trained_marker):
        return "trained"
    if os.path.isfile(os.path.join(run.directory, "last_checkpoint")):
        return "partial"
    return "new"


def _call(command: List[str], log_path: str, what: str) -> float:
    """Run ``command`` in the repository with its output appended to ``log_path``; seconds taken."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/main_job.sh
    start = time.time()
    with open(log_path, "a") as log:
        code = subprocess.call(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"[ablation] {what} failed (exit code {code}); its output is in {log_path}")
    return time.time() - start


def train(run: Run, args, resume: bool) -> None:
    os.makedirs(run.directory, exist_ok=True)
    # DATASETS.TEST (): no evaluation at the end of training, the layer-wise tool evaluates every stage
    command = [sys.executable, "train_net.py", "--config-file", args.config_file, *(["--resume"] if resume else []),
               *args.opts, *run.overrides(), "DATASETS.TEST", "()"]
    seconds = _call(command, os.path.join(run.directory, "console.txt"), f"training {run.variant} seed {run.seed}")
    with open(run.trained_marker, "w") as f:
        json.dump({"seconds": seconds, "resumed": resume}, f)
    print(f"[ablation]   trained in {seconds:.0f} s", flush=True)


def evaluate(run: Run, args) -> None:
    command = [sys.executable, os.path.join("tools", "layerwise_ap.py"), "--config-file", args.config_file,
               "--json", run.layerwise_json, "--plot", os.path.join(run.directory, "layerwise_ap.png"),
               *args.opts, *run.overrides(), "MODEL.WEIGHTS", os.path.join(run.directory, "model_final.pth")]
    seconds = _call(command, os.path.join(run.directory, "console.txt"), f"evaluating {run.variant} seed {run.seed}")
    print(f"[ablation]   evaluated in {seconds:.0f} s", flush=True)


def complete(runs: Sequence[Run], args) -> None:
    """Train and evaluate every run that is not done yet."""
    for index, run in enumerate(runs, 1):
        state = run_state(run)
        header = f"[ablation] run {index}/{len(runs)}: {run.variant} seed {run.seed}"
        if state == "evaluated":
            print(f"{header}: already evaluated, skipped", flush=True)
            continue
        if state in ("new", "partial"):
            print(f"{header}: {'resuming training' if state == 'partial' else 'training'}", flush=True)
            train(run, args, resume=state == "partial")
        else:
            print(f"{header}: trained, evaluating", flush=True)
        evaluate(run, args)


def stage_gap(layerwise: Dict, stage: str) -> float:
    """Box AP - mask AP of ``stage`` (NaN if the model has no such stage)."""
    for entry in layerwise["stages"]:
        if entry["name"] == stage and entry["box_minus_mask_ap"] is not None:
            return float(entry["box_minus_mask_ap"])
    return math.nan


def run_numbers(run: Run) -> Dict[str, float]:
    layerwise = load_layerwise(run)
    final = next(s for s in layerwise["stages"] if s["name"] == layerwise["final_stage"])
    return {"box_ap": float(final["box_ap"]), "mask_ap": float(final["mask_ap"]),
            "gap_initial": stage_gap(layerwise, "initial"), "gap_dec1": stage_gap(layerwise, "dec1")}


def mean_std(values: Sequence[float]):
    """(mean, sample standard deviation; NaN for a single value)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(runs: Sequence[Run]) -> Dict[str, Dict]:
    """Per variant: its runs' numbers and, per quantity, (mean, std) over seeds."""
    summary = {}
    for variant in dict.fromkeys(r.variant for r in runs):
        numbers = {r.seed: run_numbers(r) for r in runs if r.variant == variant}
        summary[variant] = {
            "label": VARIANTS[variant][0], "di": VARIANTS[variant][1], "bato": VARIANTS[variant][2],
            "seeds": sorted(numbers), "runs": numbers,
            "stats": {key: mean_std([n[key] for n in numbers.values()]) for key in next(iter(numbers.values()))},
        }
    return summary


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def format_table(summary: Dict[str, Dict]) -> str:
    """Markdown: variant, switches, seeds, final box / mask AP, box - mask AP at initial and dec1."""
    lines = ["| model | DI | BATO | seeds | box AP | mask AP | box − mask AP, initial | box − mask AP, decoder layer 1 |",
             "|---|:-:|:-:|---:|---:|---:|---:|---:|"]
    for entry in summary.values():
        stats = entry["stats"]
        lines.append(
            f"| {entry['label']} | {'on' if entry['di'] else 'off'} | {'on' if entry['bato'] else 'off'} | "
            f"{len(entry['seeds'])} | {_cell(*stats['box_ap'])} | {_cell(*stats['mask_ap'])} | "
            f"{_cell(*stats['gap_initial'])} | {_cell(*stats['gap_dec1'])} |"
        )
    return "\n".join(lines)


def plot(summary: Dict[str, Dict], path: str) -> None:
    """Bars with ± std: final box and mask AP (left), box - mask AP at initial and dec1 (right)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    panels = ((axes[0], (("box_ap", "box AP"), ("mask_ap", "mask AP")), "final AP"),
              (axes[1], (("gap_initial", "initial"), ("gap_dec1", "decoder layer 1")), "box AP − mask AP"))
    for ax, keys, title in panels:
        for offset, (key, label) in zip((-0.2, 0.2), keys):
            means = [summary[n]["stats"][key][0] for n in names]
            stds = [0.0 if math.isnan(summary[n]["stats"][key][1]) else summary[n]["stats"][key][1] for n in names]
            ax.bar([i + offset for i in range(len(names))], means, 0.4, yerr=stds, capsize=3, label=label)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([summary[n]["label"] for n in names], rotation=15, fontsize=8)
        ax.set_title(title)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(summary: Dict[str, Dict], args) -> str:
    table = format_table(summary)
    with open(os.path.join(args.output_dir, "ablation.md"), "w") as f:
        f.write(f"Config: {args.config_file}, overrides: {' '.join(args.opts) or '(none)'}\n\n{table}\n")
    with open(os.path.join(args.output_dir, "ablation.json"), "w") as f:
        json.dump({"config_file": args.config_file, "opts": list(args.opts), "variants": summary}, f, indent=2)
    plot(summary, os.path.join(args.output_dir, "ablation.png"))
    return table


def main(argv=None) -> str:
    args = parse_args(argv)
    check_same_study(args)
    runs = plan_runs(args)
    complete(runs, args)
    table = write_outputs(summarise(runs), args)
    print(f"[ablation] {len(runs)} runs done; table, numbers and plot in {args.output_dir}:\n{table}", flush=True)
    return table


if __name__ == "__main__":
    main()
