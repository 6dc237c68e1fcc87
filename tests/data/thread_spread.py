"""Measure how far our outputs move from the authors' fixture with the CPU thread count.

    python tests/data/thread_spread.py            # 1, 2 and 4 threads, one subprocess each
    python tests/data/thread_spread.py --threads 1 2

For every thread count: the largest absolute difference to the fixture per kind of raw output
(logits, boxes, masks) and for the post-processed instances, with the PyTorch deformable attention
the authors' fixture used; then the same for the model with +0.01 on one entry of each head weight,
the smallest change the exactness tests must still catch. The numbers set the tolerances of
tests/test_exactness.py (``TOLERANCES``).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
HEADS = ("class_embed.weight", "box_embed.layers.2.weight", "mask_embed.layers.2.weight")


def largest_errors(num_threads: int) -> dict:
    """Run in a subprocess with the thread count already fixed by the environment."""
    import torch

    torch.set_num_threads(num_threads)
    sys.path.insert(0, str(TESTS))
    import test_exactness as t

    module = sys.modules["dimaskdino.layers.ms_deform_attn"]
    module.ms_deform_attn = module.ms_deform_attn_reference
    expected = t.load_expected()

    def by_kind(model) -> dict:
        got = t.compared_outputs(model)
        errors = {}
        for key, value in got.items():
            kind = key.rsplit("_", 1)[-1]
            errors[kind] = max(errors.get(kind, 0.0), (value - expected[key]).abs().max().item())
        return errors

    result = {"threads": torch.get_num_threads(), "unchanged": by_kind(t.seeded_model())}
    _, instances = t.eval_outputs(t.seeded_model())
    result["instances"] = {
        "scores": (instances.scores - expected["inst_scores"]).abs().max().item(),
        "boxes": (instances.pred_boxes.tensor - expected["inst_boxes"]).abs().max().item(),
        "classes_equal": bool((instances.pred_classes == expected["inst_classes"]).all()),
    }
    for name in HEADS:
        model = t.seeded_model()
        with torch.no_grad():
            model.sem_seg_head.predictor.get_parameter(name)[0, 0] += 0.01
        result[f"+0.01 {name}"] = by_kind(model)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(largest_errors(args.child)))
        return
    for n in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], env=env, check=True,
                             capture_output=True, text=True).stdout
        print(json.dumps(json.loads(out.strip().splitlines()[-1]), indent=1), flush=True)


if __name__ == "__main__":
    main()
