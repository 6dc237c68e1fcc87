"""dimaskdino.data.resume: after skipping the training sampler, a new loader yields the batches an
uninterrupted loader yields from the same iteration on (the cases the docs call exact)."""
import itertools
from types import SimpleNamespace

import pytest
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler

from dimaskdino.data.resume import continue_data_stream

DATASET = [{"image_id": i, "width": 20, "height": 10} for i in range(13)]  # all in one aspect bucket


def _loader(workers, grouping):
    return build_detection_train_loader(
        dataset=DATASET, mapper=lambda d: dict(d), sampler=TrainingSampler(len(DATASET), seed=7),
        total_batch_size=3, aspect_ratio_grouping=grouping, num_workers=workers,
    )


def _ids(batches):
    return [[d["image_id"] for d in batch] for batch in batches]


@pytest.mark.parametrize("workers, grouping, start_iter", [(0, True, 5), (0, False, 7), (2, True, 5), (2, False, 4)])
def test_skipped_stream_continues_the_uninterrupted_batches(workers, grouping, start_iter):
    uninterrupted = _ids(itertools.islice(_loader(workers, grouping), start_iter + 6))
    loader = _loader(workers, grouping)
    loop = SimpleNamespace(data_loader=loader, _data_loader_iter=iter(loader))
    assert continue_data_stream(loop, start_iter, images_per_batch=3)
    resumed = _ids(itertools.islice(loop._data_loader_iter, 6))
    assert resumed == uninterrupted[start_iter:]
    assert resumed != uninterrupted[:6]  # a restarted stream would give these


def test_skipping_twice_counts_from_the_stream_start():
    loader = _loader(0, True)
    loop = SimpleNamespace(data_loader=loader, _data_loader_iter=iter(loader))
    continue_data_stream(loop, 2, 3)
    continue_data_stream(loop, 4, 3)
    assert _ids(itertools.islice(loop._data_loader_iter, 2)) == _ids(itertools.islice(_loader(0, True), 6))[4:]
