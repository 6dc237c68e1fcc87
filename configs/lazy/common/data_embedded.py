"""The embedded shapes dataset (generated on first use): 128x128 images, light scale jitter
(0.8-1.25) and flips for training, no resizing for evaluation."""
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from omegaconf import OmegaConf

from dimaskdino.data.mappers import COCOInstanceLSJDatasetMapper
from dimaskdino.evaluation import build_evaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    # images without shapes are trained on too
    dataset=L(get_detection_dataset_dicts)(names="embedded_shapes_train", filter_empty=False),
    mapper=L(COCOInstanceLSJDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.RandomFlip)(horizontal=True),
            L(T.ResizeScale)(min_scale=0.8, max_scale=1.25, target_height=128, target_width=128),
            L(T.FixedSizeCrop)(crop_size=(128, 128)),
        ],
        image_format="RGB",
    ),
    total_batch_size=8,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="embedded_shapes_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)

dataloader.evaluator = L(build_evaluator)(
    cfg=None,
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
)
