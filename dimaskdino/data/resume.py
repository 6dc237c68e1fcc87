"""Continuing the training data order on ``--resume``.

detectron2's ``TrainingSampler`` is an infinite, seeded stream of dataset indices per process; a
resumed run builds it afresh, so without help the resumed run would see the first batches of the
stream again. :func:`continue_data_stream` skips the stream ahead by the number of samples this
process consumed before the checkpoint (``start_iter`` x images per batch per process), so that the
resumed run's batches hold the same images as the uninterrupted run's batches at those iterations.

What is exact (with a fixed seed: SEED / train.seed >= 0; otherwise the stream itself is random):

* without aspect-ratio grouping: exact when the number of data-loader workers divides ``start_iter``
  (always with 0 or 1 worker; each worker forms whole batches from its share of the stream);
* with aspect-ratio grouping: the stream position is exact for any number of workers, but images
  that were waiting in the partly filled aspect-ratio buckets at the checkpoint are not replayed, so
  batches are exact only when all images fall into one bucket (e.g. square LSJ crops).

Augmentation randomness (flips, scales, crops) restarts from the worker seeds and differs after a
resume.
"""
import itertools
import logging

from detectron2.data.common import ToIterableDataset
from torch.utils.data import Sampler

__all__ = ["SkippedSampler", "continue_data_stream", "find_sampled_dataset"]

logger = logging.getLogger(__name__)


class SkippedSampler(Sampler):
    """The indices of ``sampler`` after its first ``skip`` ones."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)


def find_sampled_dataset(loader, depth: int = 6):
    """The ``ToIterableDataset`` (dataset + index sampler) inside a detectron2 training loader
    (a DataLoader, possibly wrapped in aspect-ratio grouping or a collate map), or None."""
    node = loader
    for _ in range(depth):
        if isinstance(node, ToIterableDataset):
            return node
        inner = getattr(node, "dataset", None)  # no truth test: len() of these loaders may raise
        node = inner if inner is not None else getattr(node, "_dataset", None)
        if node is None:
            return None
    return None


def continue_data_stream(loop, start_iter: int, images_per_batch: int) -> bool:
    """Skip the training sampler of ``loop`` (a detectron2 SimpleTrainer/AMPTrainer) past the
    ``start_iter * images_per_batch`` samples it consumed and restart its loader iterator.

    Args:
        images_per_batch: images per batch of this process (total batch size / world size)
    Returns:
        whether the sampler was found and skipped (False: a warning is logged, the order restarts)
    """
    if start_iter <= 0:
        return True
    sampled = find_sampled_dataset(loop.data_loader)
    if sampled is None:
        logger.warning("Resuming: the training loader has no index sampler to skip; the data order restarts.")
        return False
    original = sampled.sampler.sampler if isinstance(sampled.sampler, SkippedSampler) else sampled.sampler
    sampled.sampler = SkippedSampler(original, start_iter * images_per_batch)
    loop._data_loader_iter = iter(loop.data_loader)  # the old iterator already read the old sampler
    logger.info(f"Resuming: skipped the training sampler past {start_iter * images_per_batch} samples "
                f"({start_iter} iterations of {images_per_batch} images per process).")
    return True
