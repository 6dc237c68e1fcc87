"""
Data: dataset registration (on import) and start-of-run dataset checks. The dataset mappers
live in ``dimaskdino.data.mappers``.
"""
from .datasets import (
    BDD100K_INS_SEG_CLASSES,
    EMBEDDED_CLASSES,
    ensure_embedded_shapes,
    load_bdd100k_ins_seg,
    prepare_dataset,
    register_all,
)
from .validation import check_config_datasets, check_dataset_contents, check_datasets, dataset_classes

register_all()

__all__ = [
    "BDD100K_INS_SEG_CLASSES",
    "EMBEDDED_CLASSES",
    "check_config_datasets",
    "check_dataset_contents",
    "check_datasets",
    "dataset_classes",
    "ensure_embedded_shapes",
    "load_bdd100k_ins_seg",
    "prepare_dataset",
    "register_all",
]
