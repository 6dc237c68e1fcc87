"""Inference throughput, per-image latency and peak memory, measured during evaluation."""
import logging
import resource
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.evaluation import inference_on_dataset
from tabulate import tabulate
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["InferenceReport", "LatencyRecorder", "inference_with_benchmark"]


class LatencyRecorder(nn.Module):
    """
    Wraps a model and records the wall time of every call (``torch.cuda.synchronize`` around
    it on GPU) and the number of images in it. ``eval()``/``train()`` reach the wrapped model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.records: List[Tuple[float, int]] = []  # (seconds, images) per call

    def _sync(self):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def forward(self, batched_inputs):
        self._sync()
        start = time.perf_counter()
        outputs = self.model(batched_inputs)
        self._sync()
        self.records.append((time.perf_counter() - start, len(batched_inputs)))
        return outputs


@dataclass
class InferenceReport:
    device: str
    num_images: int  # images timed (warm-up calls excluded)
    num_warmup_images: int
    images_per_second: float
    latency_ms_mean: float
    latency_ms_median: float
    latency_ms_p90: float
    peak_memory_mb: float
    peak_memory_kind: str

    def as_dict(self) -> Dict[str, float]:
        return dict(self.__dict__)

    def table(self) -> str:
        rows = [
            ["device", self.device],
            ["images timed (warm-up excluded)", f"{self.num_images} (+{self.num_warmup_images})"],
            ["throughput (img/s)", f"{self.images_per_second:.2f}"],
            ["latency per image, mean (ms)", f"{self.latency_ms_mean:.1f}"],
            ["latency per image, median (ms)", f"{self.latency_ms_median:.1f}"],
            ["latency per image, p90 (ms)", f"{self.latency_ms_p90:.1f}"],
            [f"peak memory, {self.peak_memory_kind} (MiB)", f"{self.peak_memory_mb:.0f}"],
        ]
        return tabulate(rows, headers=["inference benchmark", "value"], tablefmt="pipe")


def _process_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def make_report(records: List[Tuple[float, int]], device: torch.device, num_warmup: int):
    """Summarise (seconds, images) call records; the first ``num_warmup`` calls are skipped
    (unless there would be nothing left)."""
    if not records:
        raise ValueError("no inference call was recorded (empty data loader?)")
    num_warmup = min(num_warmup, len(records) - 1)
    timed = records[num_warmup:]
    seconds = np.array([s for s, _ in timed])
    images = np.array([n for _, n in timed])
    per_image_ms = 1000.0 * seconds / np.maximum(images, 1)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    else:
        peak, kind = _process_peak_rss_mb(), "process peak RSS"
    return InferenceReport(
        device=str(device),
        num_images=int(images.sum()),
        num_warmup_images=int(sum(n for _, n in records[:num_warmup])),
        images_per_second=float(images.sum() / max(seconds.sum(), 1e-12)),
        latency_ms_mean=float(per_image_ms.mean()),
        latency_ms_median=float(np.median(per_image_ms)),
        latency_ms_p90=float(np.percentile(per_image_ms, 90)),
        peak_memory_mb=float(peak),
        peak_memory_kind=kind,
    )


def inference_with_benchmark(model: nn.Module, data_loader, evaluator, num_warmup: int = 5):
    """
    ``detectron2.evaluation.inference_on_dataset`` that also measures the model's speed.

    Returns:
        results: what ``evaluator.evaluate()`` returns (e.g. {"bbox": {...}, "segm": {...}})
        report: an InferenceReport; throughput counts model time only (no data loading or
            evaluation), over the calls after ``num_warmup`` warm-up calls.
    """
    device = _model_device(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    recorder = LatencyRecorder(model)
    results = inference_on_dataset(recorder, data_loader, evaluator)
    report = make_report(recorder.records, device, num_warmup)
    logger.info("Inference benchmark:\n" + report.table())
    return results, report
