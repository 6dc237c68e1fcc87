"""
Start-of-run checks of the datasets a config names, so that a wrong class count, a missing file
or an annotation that would break evaluation fails at once with a clear message instead of
mid-training, after training (in pycocotools) or as silently wrong labels.

Contents (:func:`check_dataset_contents`): every image file must exist, and no annotation may be
one that detectron2 silently filters at load time or that breaks COCO evaluation. These are errors,
not warnings, in training and evaluation alike: dropping them in training only would make the
trained-on and evaluated-on ground truth differ, and pycocotools cannot evaluate them. With the
environment variable DIMASKDINO_ALLOW_BAD_ANNOTATIONS=1 they give one warning instead.

Zero-area boxes are the exception: one warning counts them and the run goes on. COCO train2017
itself holds two (height 0, images 200365 and 550395), pycocotools evaluates them as every
published COCO number does (a ground truth no detection can match), and the training mappers drop
them (detectron2's ``filter_empty_instances``). Generated datasets (the embedded shapes) are
correct by construction and are not scanned.
"""
import json
import logging
import os
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .datasets import DATASET_PREPARERS

logger = logging.getLogger(__name__)

# set to 1 to get a warning instead of the error for bad annotations (detectron2 then filters what it
# filters; evaluation may still fail on polygons under 3 points in a test set)
ALLOW_BAD_ANNOTATIONS_ENV = "DIMASKDINO_ALLOW_BAD_ANNOTATIONS"

__all__ = [
    "BAD_ANNOTATION_KINDS",
    "check_config_datasets",
    "check_dataset_contents",
    "check_datasets",
    "dataset_classes",
    "find_bad_annotations",
]

# kind -> what to do about it, in the error message
BAD_ANNOTATION_KINDS = {
    "polygon with fewer than 3 points": "detectron2 drops it at load; pycocotools fails on it at evaluation",
    "polygon with an odd number of coordinates": "coordinates must be x, y pairs",
    "empty segmentation": "an instance needs a mask",
    "no segmentation": "instance segmentation needs a mask for every non-crowd instance",
    "zero-area box": "width and height must be positive",
}
# kinds that warn instead of failing: training drops them, evaluation handles them (module docstring)
TOLERATED_KINDS = ("zero-area box",)
_SHOWN = 5

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


def _polygon_problem(segmentation) -> Optional[str]:
    if len(segmentation) == 0 or all(len(polygon) == 0 for polygon in segmentation):
        return "empty segmentation"
    for polygon in segmentation:
        if len(polygon) % 2:
            return "polygon with an odd number of coordinates"
        if len(polygon) < 6:
            return "polygon with fewer than 3 points"
    return None


def annotation_problem(annotation: dict, box_xywh: Sequence[float]) -> Optional[str]:
    """The kind of problem of one annotation (a key of :data:`BAD_ANNOTATION_KINDS`) or None."""
    if len(box_xywh) != 4 or box_xywh[2] <= 0 or box_xywh[3] <= 0:
        return "zero-area box"
    segmentation = annotation.get("segmentation")
    if segmentation is None:
        return None if annotation.get("iscrowd", 0) else "no segmentation"
    if isinstance(segmentation, list):
        return _polygon_problem(segmentation)
    if isinstance(segmentation, dict) and not segmentation.get("counts"):
        return "empty segmentation"
    return None


def find_bad_annotations(records: Iterable[Tuple[str, dict, Sequence[float]]]) -> Dict[str, List[str]]:
    """kind -> descriptions ("annotation <id> of <image>") of the bad annotations among
    ``(image file, annotation, box as XYWH)`` records."""
    found: Dict[str, List[str]] = {}
    for image, annotation, box in records:
        kind = annotation_problem(annotation, box)
        if kind:
            found.setdefault(kind, []).append(f"annotation {annotation.get('id', '?')} of {image}")
    return found


def _parse_json(json_file: str):
    """The json file parsed with orjson when it is installed (3-4x faster on COCO-sized files)."""
    with open(json_file, "rb") as f:
        text = f.read()
    try:
        import orjson
    except ImportError:
        return json.loads(text)
    return orjson.loads(text)


def _coco_json_records(json_file: str, image_root: str):
    """(image paths, annotation records) of a COCO json, read directly (detectron2's loader
    already drops some bad polygons, which evaluation still sees)."""
    try:
        coco = _parse_json(json_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Annotation file {json_file} is not valid json: {e}") from e
    file_of = {image["id"]: os.path.join(image_root or "", image["file_name"]) for image in coco.get("images", [])}
    records = ((file_of.get(a.get("image_id"), f"image id {a.get('image_id')}"), a, a.get("bbox", ()))
               for a in coco.get("annotations", []))
    return list(file_of.values()), records


def _catalog_records(name: str):
    """(image paths, annotation records) of any registered dataset, from its dataset dicts."""
    paths, records = [], []
    for record in DatasetCatalog.get(name):
        paths.append(record["file_name"])
        for annotation in record.get("annotations", []):
            box = annotation.get("bbox", ())
            if len(box) == 4:
                box = BoxMode.convert(list(box), annotation.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYWH_ABS)
            records.append((record["file_name"], annotation, box))
    return paths, records


def _raise_if_missing_images(name: str, paths: List[str]) -> None:
    missing = [p for p in paths if "://" not in p and not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Dataset '{name}': {len(missing)} of {len(paths)} image files are missing: "
            f"{', '.join(missing[:_SHOWN])}{', ...' if len(missing) > _SHOWN else ''}. {_DATA_HINT[0].upper()}"
            f"{_DATA_HINT[1:]}, or remove these images from the annotations."
        )


def _describe(bad: Dict[str, List[str]]) -> Tuple[int, str]:
    """(count, one line per kind with examples) of bad annotations, the most frequent kind first."""
    counts = Counter({kind: len(items) for kind, items in bad.items()})
    lines = [
        f"  {count} x {kind} ({BAD_ANNOTATION_KINDS[kind]}), e.g. {'; '.join(bad[kind][:3])}"
        for kind, count in counts.most_common()
    ]
    return sum(counts.values()), "\n".join(lines)


def _raise_if_bad_annotations(name: str, bad: Dict[str, List[str]]) -> None:
    tolerated = {kind: items for kind, items in bad.items() if kind in TOLERATED_KINDS}
    if tolerated:
        count, lines = _describe(tolerated)
        logger.warning(f"Dataset '{name}' has {count} annotations with a zero-area box; training drops them "
                       f"and COCO evaluation keeps them as unmatchable ground truth:\n{lines}")
    bad = {kind: items for kind, items in bad.items() if kind not in TOLERATED_KINDS}
    if not bad:
        return
    count, lines = _describe(bad)
    message = (
        f"Dataset '{name}' has {count} annotations that training would drop or that would "
        "break COCO evaluation:\n" + lines + "\nFix or remove them in the annotation file"
    )
    if os.environ.get(ALLOW_BAD_ANNOTATIONS_ENV) == "1":
        logger.warning(message + f" (continuing: {ALLOW_BAD_ANNOTATIONS_ENV}=1).")
        return
    raise ValueError(message + f" (or set {ALLOW_BAD_ANNOTATIONS_ENV}=1 to continue with a warning).")


def check_dataset_contents(name: str) -> None:
    """Every image file of dataset ``name`` exists and no annotation is bad (module docstring).

    Raises:
        FileNotFoundError with the count and the first few missing paths; ValueError counting the
        bad annotations by kind, with examples.
    """
    if name in DATASET_PREPARERS:
        return
    meta = MetadataCatalog.get(name)
    json_file = getattr(meta, "json_file", None)
    if json_file and "://" not in json_file:
        paths, records = _coco_json_records(json_file, getattr(meta, "image_root", ""))
    else:
        paths, records = _catalog_records(name)
    _raise_if_missing_images(name, paths)
    _raise_if_bad_annotations(name, find_bad_annotations(records))


def check_datasets(names: Iterable[str], num_classes: int, key: str = "MODEL.SEM_SEG_HEAD.NUM_CLASSES") -> None:
    """Every dataset exists, its files are present, it has ``num_classes`` classes and its
    contents pass :func:`check_dataset_contents`."""
    for name in dict.fromkeys(names):  # a dataset used for training and testing is checked once
        classes = dataset_classes(name)
        if len(classes) != num_classes:
            raise ValueError(
                f"Dataset '{name}' has {len(classes)} classes ({', '.join(classes[:10])}"
                f"{', ...' if len(classes) > 10 else ''}) but {key} is {num_classes}. "
                f"Set {key} {len(classes)}."
            )
        check_dataset_contents(name)


def check_config_datasets(cfg, names: Optional[Sequence[str]] = None) -> None:
    """Run :func:`check_datasets` on a yacs config's DATASETS.TRAIN + DATASETS.TEST (or ``names``)."""
    if names is None:
        names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    check_datasets(names, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
