"""
Start-of-run checks of the datasets a config names, so that a wrong class count or a missing
file fails at once with a clear message instead of mid-training (or as silently wrong labels).
"""
import json
import os
from typing import Iterable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets import DATASET_PREPARERS

__all__ = ["check_config_datasets", "check_datasets", "dataset_classes"]

_DATA_HINT = "set $DETECTRON2_DATASETS to the folder that holds it (default: ./datasets)"


def _check_files(name: str) -> None:
    meta = MetadataCatalog.get(name)
    for key in ("json_file", "label_file"):
        path = getattr(meta, key, None)
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"Annotation file of dataset '{name}' not found: {path}; {_DATA_HINT}."
            )
    image_root = getattr(meta, "image_root", None)
    if image_root and "://" not in str(image_root) and not os.path.isdir(image_root):
        raise FileNotFoundError(f"Image folder of dataset '{name}' not found: {image_root}; {_DATA_HINT}.")


def _classes_from_json(json_file: str) -> List[str]:
    try:
        with open(json_file) as f:
            categories = json.load(f)["categories"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Annotation file {json_file} is not valid json: {e}") from e
    except KeyError:
        raise ValueError(f"Annotation file {json_file} has no 'categories' list (COCO format expected).")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def dataset_classes(name: str) -> List[str]:
    """
    The ``thing_classes`` of a registered dataset, reading its annotations if needed. Checks
    that the dataset's files exist, except for generated datasets (made when first loaded).
    """
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset '{name}' is not registered. Registered datasets: "
            f"{', '.join(sorted(DatasetCatalog.list()))}. Register your own with "
            "detectron2.data.datasets.register_coco_instances."
        )
    if name not in DATASET_PREPARERS:
        _check_files(name)
    meta = MetadataCatalog.get(name)
    classes = getattr(meta, "thing_classes", None)
    if classes is None and getattr(meta, "json_file", None):
        classes = _classes_from_json(meta.json_file)
    if classes is None:
        DatasetCatalog.get(name)  # loaders such as load_coco_json set thing_classes
        classes = getattr(meta, "thing_classes", None)
    if classes is None:
        raise ValueError(f"Dataset '{name}' has no 'thing_classes' metadata: it is not an instance dataset.")
    return list(classes)


def check_datasets(names: Iterable[str], num_classes: int, key: str = "MODEL.SEM_SEG_HEAD.NUM_CLASSES") -> None:
    """Every dataset exists, its files are present and it has ``num_classes`` classes."""
    for name in names:
        classes = dataset_classes(name)
        if len(classes) != num_classes:
            raise ValueError(
                f"Dataset '{name}' has {len(classes)} classes ({', '.join(classes[:10])}"
                f"{', ...' if len(classes) > 10 else ''}) but {key} is {num_classes}. "
                f"Set {key} {len(classes)}."
            )


def check_config_datasets(cfg, names: Optional[Sequence[str]] = None) -> None:
    """Run :func:`check_datasets` on a yacs config's DATASETS.TRAIN + DATASETS.TEST (or ``names``)."""
    if names is None:
        names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    check_datasets(names, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
