"""The LazyConfig files build exactly what their yaml counterparts build."""
import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.modeling import build_model

import dimaskdino.data  # noqa: F401
import dimaskdino.modeling  # noqa: F401
from dimaskdino.utils.config_files import load_lazy_config, load_yaml_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = [
    ("configs/embedded/dimaskdino_r18_embedded.yaml", "configs/lazy/dimaskdino_r18_embedded.py"),
    ("configs/dimaskdino_r50_4scale_bs16_12ep.yaml", "configs/lazy/dimaskdino_r50_4scale_bs16_12ep.py"),
    (
        "projects/bdd100k/configs/dimaskdino_r50_4scale_bs16_12ep_bdd100k.yaml",
        "projects/bdd100k/configs/dimaskdino_r50_4scale_bs16_12ep_bdd100k.py",
    ),
]


@pytest.mark.parametrize("yaml_file,lazy_file", PAIRS, ids=[os.path.basename(p[1]) for p in PAIRS])
def test_same_model_same_initial_weights(yaml_file, lazy_file):
    ycfg = load_yaml_config(os.path.join(REPO, yaml_file), ["MODEL.DEVICE", "cpu"])
    lcfg = load_lazy_config(os.path.join(REPO, lazy_file))
    torch.manual_seed(0)
    from_yaml = build_model(ycfg)
    torch.manual_seed(0)
    from_lazy = instantiate(lcfg.model)
    assert repr(from_yaml) == repr(from_lazy)
    a, b = from_yaml.state_dict(), from_lazy.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("yaml_file,lazy_file", PAIRS, ids=[os.path.basename(p[1]) for p in PAIRS])
def test_same_data_and_schedule(yaml_file, lazy_file):
    y = load_yaml_config(os.path.join(REPO, yaml_file))
    lz = load_lazy_config(os.path.join(REPO, lazy_file))
    assert [lz.dataloader.train.dataset.names] == list(y.DATASETS.TRAIN)
    assert [lz.dataloader.test.dataset.names] == list(y.DATASETS.TEST)
    assert lz.dataloader.train.dataset.filter_empty == y.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    assert lz.dataloader.train.total_batch_size == y.SOLVER.IMS_PER_BATCH
    resize = lz.dataloader.train.mapper.augmentations[1]
    assert (resize.min_scale, resize.max_scale, resize.target_height) == (
        y.INPUT.MIN_SCALE, y.INPUT.MAX_SCALE, y.INPUT.IMAGE_SIZE
    )
    test_resize = lz.dataloader.test.mapper.augmentations[0]
    assert (test_resize.short_edge_length, test_resize.max_size) == (y.INPUT.MIN_SIZE_TEST, y.INPUT.MAX_SIZE_TEST)
    assert lz.train.max_iter == y.SOLVER.MAX_ITER
    progressive = lz.train.progressive_resize
    assert (progressive.scale, progressive.until_iter) == (
        y.INPUT.PROGRESSIVE_RESIZE.SCALE, y.INPUT.PROGRESSIVE_RESIZE.UNTIL_ITER
    )
    assert lz.train.amp.enabled == y.SOLVER.AMP.ENABLED
    assert lz.dataloader.train.num_workers == y.DATALOADER.NUM_WORKERS
    assert lz.optimizer.base_lr == y.SOLVER.BASE_LR
    assert lz.optimizer.backbone_multiplier == y.SOLVER.BACKBONE_MULTIPLIER
    assert lz.optimizer.weight_decay == y.SOLVER.WEIGHT_DECAY
    assert lz.optimizer.clip_gradients.clip_value == y.SOLVER.CLIP_GRADIENTS.CLIP_VALUE
    scheduler = instantiate(lz.lr_multiplier)
    for it in (0, y.SOLVER.STEPS[0] - 1, y.SOLVER.STEPS[0], y.SOLVER.MAX_ITER - 1):
        warm = min(1.0, it / y.SOLVER.WARMUP_ITERS) if y.SOLVER.WARMUP_ITERS else 1.0
        expected = (y.SOLVER.WARMUP_FACTOR * (1 - warm) + warm) * (0.1 if it >= y.SOLVER.STEPS[0] else 1.0)
        assert scheduler(it / y.SOLVER.MAX_ITER) == pytest.approx(expected), it
    assert lz.train.amp.enabled == y.SOLVER.AMP.ENABLED
    assert lz.train.checkpointer.period == y.SOLVER.CHECKPOINT_PERIOD


def test_lazy_override_of_unknown_key_is_an_error():
    with pytest.raises(KeyError, match="model.sem_seg_head.num_clases"):
        load_lazy_config(os.path.join(REPO, PAIRS[0][1]), ["model.sem_seg_head.num_clases=3"])
    cfg = load_lazy_config(os.path.join(REPO, PAIRS[0][1]), ["model.sem_seg_head.num_classes=3"])
    assert instantiate(cfg.model).sem_seg_head.predictor.num_classes == 3
