"""Evaluation: COCO box/mask AP (detectron2's COCOEvaluator, compiled COCOeval) and inference benchmarking."""
from .benchmark import InferenceReport, LatencyRecorder, inference_with_benchmark
from .coco import CompiledCOCOEvaluator, build_evaluator, coco_eval_engine, fast_coco_eval_available

__all__ = [
    "CompiledCOCOEvaluator",
    "InferenceReport",
    "LatencyRecorder",
    "build_evaluator",
    "coco_eval_engine",
    "fast_coco_eval_available",
    "inference_with_benchmark",
]
