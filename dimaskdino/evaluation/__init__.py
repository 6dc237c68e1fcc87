"""Evaluation: COCO box/mask AP (detectron2's COCOEvaluator) and inference benchmarking."""
from .benchmark import InferenceReport, LatencyRecorder, inference_with_benchmark
from .coco import build_evaluator, fast_coco_eval_available

__all__ = [
    "InferenceReport",
    "LatencyRecorder",
    "build_evaluator",
    "fast_coco_eval_available",
    "inference_with_benchmark",
]
