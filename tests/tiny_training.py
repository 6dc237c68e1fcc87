"""A tiny DI-MaskDINO and synthetic batches for the training tests (not a test module)."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.config import add_dimaskdino_config

EMBEDDED_CONFIG = "configs/embedded/dimaskdino_r18_embedded.yaml"
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30)]


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: the tiny model's ops are too small to gain from threads,
    and on a shared CPU threads waiting for each other made these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(repo_root, **maskdino):
    """The embedded R18 config, further reduced (2 decoder layers, 256 mask points)."""
    cfg = get_cfg()
    add_dimaskdino_config(cfg)
    cfg.merge_from_file(str(repo_root / EMBEDDED_CONFIG))
    cfg.MODEL.MaskDINO.DEC_LAYERS = 2
    cfg.MODEL.MaskDINO.TRAIN_NUM_POINTS = 256
    for key, value in maskdino.items():
        setattr(cfg.MODEL.MaskDINO, key, value)
    return cfg


def tiny_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    return model


def painted_image(objects, size=64, background=90):
    """A model input with rectangles painted in their class colour.

    Args:
        objects: list of (class, (x0, y0, x1, y1)) in pixels.
    """
    image = torch.full((3, size, size), background, dtype=torch.uint8)
    instances = Instances((size, size))
    masks = torch.zeros(len(objects), size, size, dtype=torch.bool)
    for mask, (label, (x0, y0, x1, y1)) in zip(masks, objects):
        mask[y0:y1, x0:x1] = True
        image[:, mask] = torch.tensor(COLOURS[label], dtype=torch.uint8)[:, None]
    instances.gt_masks = BitMasks(masks)
    instances.gt_boxes = Boxes(torch.tensor([box for _, box in objects], dtype=torch.float).reshape(-1, 4))
    instances.gt_classes = torch.tensor([label for label, _ in objects], dtype=torch.int64)
    return {"image": image, "instances": instances}


TWO_IMAGES = [
    [(0, (6, 8, 30, 28)), (2, (36, 30, 58, 60))],
    [(1, (10, 34, 40, 58)), (3, (40, 6, 60, 26)), (0, (4, 4, 20, 20))],
]
