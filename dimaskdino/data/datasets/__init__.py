"""
Datasets of dimaskdino, registered in detectron2's DatasetCatalog/MetadataCatalog when
``dimaskdino.data`` is imported:

- ``embedded_shapes_{train,val}``: synthetic shapes, generated on first use (embedded.py).
- ``bdd100k_ins_seg_{train,val}``: BDD100K instance segmentation under
  ``$DETECTRON2_DATASETS/bdd100k`` (bdd100k.py).
- ``coco_2017_{train,val}``: detectron2's builtin registration under ``$DETECTRON2_DATASETS/coco``.
"""
from typing import Callable, Dict

from detectron2.data import DatasetCatalog

from .bdd100k import BDD100K_INS_SEG_CLASSES, load_bdd100k_ins_seg, register_all_bdd100k
from .embedded import EMBEDDED_CLASSES, ensure_embedded_shapes, register_embedded_shapes

# dataset name -> function making sure the dataset's files exist (e.g. generating them)
DATASET_PREPARERS: Dict[str, Callable[[], object]] = {}


def prepare_dataset(name: str) -> None:
    """Create the files of a generated dataset if needed; a no-op for other datasets."""
    if name in DATASET_PREPARERS:
        DATASET_PREPARERS[name]()


def register_all() -> None:
    """Register every dataset of the project (idempotent)."""
    registered = set(DatasetCatalog.list())
    if "embedded_shapes_train" not in registered:
        DATASET_PREPARERS.update(register_embedded_shapes())
    if "bdd100k_ins_seg_train" not in registered:
        register_all_bdd100k()


__all__ = [
    "BDD100K_INS_SEG_CLASSES",
    "DATASET_PREPARERS",
    "EMBEDDED_CLASSES",
    "ensure_embedded_shapes",
    "load_bdd100k_ins_seg",
    "prepare_dataset",
    "register_all",
    "register_all_bdd100k",
    "register_embedded_shapes",
]
