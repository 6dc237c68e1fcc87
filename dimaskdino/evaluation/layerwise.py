"""Layer-wise COCO evaluation: box and mask AP of every prediction stage of one model.

DI-MaskDINO's motivation is the detection-segmentation imbalance of MaskDINO's early decoder layers
(box AP far below mask AP). This module evaluates each stage of the query pipeline on its own:

* ``interm``: the two-stage proposals of the encoder (class, boxes, masks),
* ``ti1`` .. ``tiT``: the DI module's token-interaction layers (class and boxes only: box AP only),
* ``initial``: the prediction before the first decoder layer (``MODEL.MaskDINO.INITIAL_PRED``),
* ``dec1`` .. ``decD``: every decoder layer; the last one is the model's final output.

Every stage is turned into ``Instances`` by the model's own inference
(``DIMaskDINO.inference(..., all_stages=True)``; stages without masks keep the same top-k over
(query, class) pairs scored by class score alone) and fed to its own detectron2 COCOEvaluator.
"""
import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Instances
from detectron2.utils.logger import log_every_n_seconds

from ..modeling.outputs import stage_names
from .coco import build_evaluator

__all__ = [
    "Stage",
    "StageResult",
    "build_stage_evaluators",
    "format_table",
    "layerwise_inference",
    "model_stages",
    "plot_layerwise_ap",
    "stage_instances",
    "write_json",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One prediction stage: its name and whether it predicts masks."""

    name: str
    has_masks: bool


@dataclass
class StageResult:
    """COCO AP of one stage (NaN where not evaluated); ``metrics``: the evaluator's full result."""

    name: str
    box_ap: float
    mask_ap: float
    metrics: Dict[str, Dict[str, float]]

    @property
    def box_minus_mask(self) -> float:
        return self.box_ap - self.mask_ap


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel


def _predictor(model):
    try:
        return _unwrap(model).sem_seg_head.predictor
    except AttributeError as error:
        raise TypeError(
            f"layer-wise evaluation needs a DI-MaskDINO model (sem_seg_head.predictor), got {type(model).__name__}"
        ) from error


def model_stages(model) -> List[Stage]:
    """The stages of a built model, in pipeline order (the last one is the final output)."""
    predictor = _predictor(model)
    num_ti = 0 if predictor.di_module is None else len(predictor.di_module.layers)
    names = stage_names(num_ti, predictor.initial_pred, len(predictor.decoder.layers))
    return [Stage(name, not name.startswith("ti")) for name in names]


def stage_instances(model, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
    """Per image, stage name -> Instances: ``DIMaskDINO.inference`` with every stage (so the last
    decoder layer's Instances are the model's output)."""
    return [result["stage_instances"] for result in _unwrap(model).inference(batched_inputs, all_stages=True)]


def build_stage_evaluators(cfg, dataset_name: str, stages: Sequence[Stage], output_dir: Optional[str] = None):
    """One COCOEvaluator per stage (``build_evaluator``'s; box-only stages evaluate "bbox" only),
    writing into ``output_dir/<stage>`` when ``output_dir`` is given."""
    evaluators = OrderedDict()
    for stage in stages:
        stage_dir = os.path.join(output_dir, stage.name) if output_dir else None
        tasks = ("bbox", "segm") if stage.has_masks else ("bbox",)
        evaluators[stage.name] = build_evaluator(cfg, dataset_name, stage_dir, tasks=tasks)
    return evaluators


def _ap(metrics: Dict, task: str) -> float:
    value = metrics.get(task, {}).get("AP", float("nan")) if metrics else float("nan")
    return float(value)


@torch.no_grad()
def layerwise_inference(model, data_loader, evaluators: Dict[str, COCOEvaluator]) -> List[StageResult]:
    """Run ``model`` once over ``data_loader`` and evaluate every stage with ``evaluators`` (stage name
    -> evaluator, e.g. from :func:`build_stage_evaluators`). Returns the stages' results in order."""
    meta = _unwrap(model)
    names = [s.name for s in model_stages(meta)]
    if list(evaluators) != names:
        raise ValueError(f"evaluators must be given for the stages {names} in this order, got {list(evaluators)}")
    for evaluator in evaluators.values():
        evaluator.reset()
    was_training = meta.training
    meta.eval()
    try:
        total = len(data_loader)
        for idx, inputs in enumerate(data_loader):
            per_image = stage_instances(meta, inputs)
            for name, evaluator in evaluators.items():
                evaluator.process(inputs, [{"instances": stages[name]} for stages in per_image])
            log_every_n_seconds(logging.INFO, f"Layer-wise inference done {idx + 1}/{total}.", n=10)
    finally:
        meta.train(was_training)
    results = []
    for name, evaluator in evaluators.items():
        metrics = evaluator.evaluate() or {}
        results.append(StageResult(name, _ap(metrics, "bbox"), _ap(metrics, "segm"), dict(metrics)))
    return results


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def format_table(results: Sequence[StageResult]) -> str:
    """A text table: stage, box AP, mask AP, box AP - mask AP ("-" where a stage has no masks); the
    last row (the model's final output) is marked."""
    rows = [("stage", "box AP", "mask AP", "box - mask")]
    for i, r in enumerate(results):
        name = f"{r.name} (final)" if i == len(results) - 1 else r.name
        rows.append((name, _fmt(r.box_ap), _fmt(r.mask_ap), _fmt(r.box_minus_mask)))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = [" | ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _json_number(value: float) -> Optional[float]:
    return None if math.isnan(value) else value


def write_json(results: Sequence[StageResult], path: str, dataset_name: str = "") -> None:
    """The numbers of every stage (NaN written as null), with the final stage's name."""
    data = {
        "dataset": dataset_name,
        "final_stage": results[-1].name if results else None,
        "stages": [
            {
                "name": r.name,
                "box_ap": _json_number(r.box_ap),
                "mask_ap": _json_number(r.mask_ap),
                "box_minus_mask_ap": _json_number(r.box_minus_mask),
                "metrics": {task: {k: _json_number(float(v)) for k, v in m.items()} for task, m in r.metrics.items()},
            }
            for r in results
        ],
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def plot_layerwise_ap(results: Sequence[StageResult], path: str, title: str = "") -> None:
    """A PNG line plot of box and mask AP per stage (mask AP absent for box-only stages)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    x = list(range(len(results)))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(results) + 2), 3.6))
    for values, style, label in (([r.box_ap for r in results], "o-", "box AP"),
                                 ([r.mask_ap for r in results], "s-", "mask AP")):
        points = [(i, v) for i, v in zip(x, values) if not math.isnan(v)]  # box-only stages: no mask point
        ax.plot([i for i, _ in points], [v for _, v in points], style, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([r.name for r in results], rotation=30)
    ax.set_xlabel("stage")
    ax.set_ylabel("AP")
    ax.set_title(title or "AP per stage")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
