"""COCO 2017 instance segmentation with large-scale jitter (1024x1024, scale 0.1-2.0), as the
authors' ``coco_instance_lsj`` mapper; evaluation at short side 800 (max 1333)."""
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from omegaconf import OmegaConf

from dimaskdino.data.mappers import COCOInstanceLSJDatasetMapper, DETRInstanceDatasetMapper
from dimaskdino.evaluation import build_evaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=True),
    mapper=L(COCOInstanceLSJDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.RandomFlip)(horizontal=True),
            L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=1024, target_width=1024),
            L(T.FixedSizeCrop)(crop_size=(1024, 1024)),
        ],
        image_format="RGB",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    # detectron2's DatasetMapper at test time, reading images with dimaskdino.data.image_io
    mapper=L(DETRInstanceDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(build_evaluator)(
    cfg=None,
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
)
