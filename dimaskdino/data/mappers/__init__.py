"""Training dataset mappers, chosen by ``cfg.INPUT.DATASET_MAPPER_NAME`` (the authors' names)."""
from .coco_instance_lsj import COCOInstanceLSJDatasetMapper, build_lsj_augmentation
from .detr_instance import DETRInstanceDatasetMapper, build_detr_augmentation
from .instance_targets import instances_from_annotations

__all__ = [
    "COCOInstanceLSJDatasetMapper",
    "DETRInstanceDatasetMapper",
    "TRAIN_MAPPERS",
    "build_detr_augmentation",
    "build_lsj_augmentation",
    "build_train_mapper",
    "instances_from_annotations",
]

TRAIN_MAPPERS = {
    "coco_instance_lsj": COCOInstanceLSJDatasetMapper,
    "coco_instance_detr": DETRInstanceDatasetMapper,
}


def build_train_mapper(cfg):
    """The training mapper named by INPUT.DATASET_MAPPER_NAME."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not an instance-segmentation training mapper; "
            f"use one of {sorted(TRAIN_MAPPERS)}"
        )
    return TRAIN_MAPPERS[name](cfg, is_train=True)
