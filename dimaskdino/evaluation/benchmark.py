"""Inference throughput, per-image latency and peak memory, measured during evaluation.

In a multi-process evaluation every rank times its own shard of the dataset; the report then
covers all ranks: images and throughput are summed (the ranks run at the same time), latency
statistics are taken over the calls of all ranks, and peak memory is the largest of any rank.
"""
import logging
import resource
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm
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
    num_processes: int = 1  # ranks whose shards the report covers

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
        if self.num_processes > 1:
            rows.append(["processes (img/s summed, latency over all, memory of the largest)",
                         str(self.num_processes)])
        return tabulate(rows, headers=["inference benchmark", "value"], tablefmt="pipe")


def _process_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _peak_memory(device: torch.device) -> Tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    return _process_peak_rss_mb(), "process peak RSS"


def make_report(records: List[Tuple[float, int]], device: torch.device, num_warmup: int):
    """Summarise (seconds, images) call records; the first ``num_warmup`` calls are skipped
    (unless there would be nothing left)."""
    return combine_reports([records], [_peak_memory(device)], str(device), num_warmup)


def combine_reports(records_per_rank, peak_memory_per_rank, device: str, num_warmup: int):
    """One report over the (seconds, images) call records of every rank (see the module docstring).

    Args:
        records_per_rank: R lists of (seconds, images); the first ``num_warmup`` calls of each
            rank are skipped (unless there would be nothing left on that rank).
        peak_memory_per_rank: R (MiB, kind) pairs.
    """
    timed, warmup_images, throughputs = [], 0, []
    for records in records_per_rank:
        if not records:
            continue  # a rank with an empty shard (fewer images than ranks)
        skip = min(num_warmup, len(records) - 1)
        timed += records[skip:]
        warmup_images += sum(n for _, n in records[:skip])
        seconds = sum(s for s, _ in records[skip:])
        throughputs.append(sum(n for _, n in records[skip:]) / max(seconds, 1e-12))
    if not timed:
        raise ValueError("no inference call was recorded (empty data loader?)")
    seconds = np.array([s for s, _ in timed])
    images = np.array([n for _, n in timed])
    per_image_ms = 1000.0 * seconds / np.maximum(images, 1)
    peak, kind = max(peak_memory_per_rank)
    return InferenceReport(
        device=device,
        num_images=int(images.sum()),
        num_warmup_images=int(warmup_images),
        images_per_second=float(sum(throughputs)),
        latency_ms_mean=float(per_image_ms.mean()),
        latency_ms_median=float(np.median(per_image_ms)),
        latency_ms_p90=float(np.percentile(per_image_ms, 90)),
        peak_memory_mb=float(peak),
        peak_memory_kind=kind,
        num_processes=len(records_per_rank),
    )


def inference_with_benchmark(model: nn.Module, data_loader, evaluator, num_warmup: int = 5):
    """
    ``detectron2.evaluation.inference_on_dataset`` that also measures the model's speed.

    Returns:
        results: what ``evaluator.evaluate()`` returns (e.g. {"bbox": {...}, "segm": {...}})
        report: an InferenceReport over all ranks; throughput counts model time only (no data
            loading or evaluation), over the calls after ``num_warmup`` warm-up calls of each rank.
    """
    device = _model_device(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    recorder = LatencyRecorder(model)
    results = inference_on_dataset(recorder, data_loader, evaluator)
    # every rank gets the report over all ranks (all_gather runs over gloo, also for NCCL jobs)
    records_per_rank = comm.all_gather(recorder.records)
    peak_memory_per_rank = comm.all_gather(_peak_memory(device))
    report = combine_reports(records_per_rank, peak_memory_per_rank, str(device), num_warmup)
    logger.info("Inference benchmark:\n" + report.table())
    return results, report
