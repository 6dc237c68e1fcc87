"""The embedded shapes dataset (generated on first use): 128x128 images, light scale jitter
(0.8-1.25) and flips for training, no resizing for evaluation. The COCO LSJ data config with
the datasets, sizes, batch and workers changed."""
import copy

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from .data_coco_lsj import dataloader as _coco_lsj

dataloader = copy.deepcopy(_coco_lsj)

# images without shapes are trained on too
dataloader.train.dataset.names = "embedded_shapes_train"
dataloader.train.dataset.filter_empty = False
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.8, max_scale=1.25, target_height=128, target_width=128),
    L(T.FixedSizeCrop)(crop_size=(128, 128)),
]
dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 0  # in-process: a worker would compete with the compute threads

dataloader.test.dataset.names = "embedded_shapes_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)]
dataloader.test.num_workers = 1
