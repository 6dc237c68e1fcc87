"""
BDD100K instance segmentation (the 10K-image subset, 8 classes) in detectron2's format.

Expected layout (the official download, unpacked under ``$DETECTRON2_DATASETS/bdd100k``)::

    bdd100k/
      images/10k/{train,val}/*.jpg
      labels/ins_seg/rles/ins_seg_{train,val}.json     (Scalabel format)

Each Scalabel frame is ``{"name": "<file>.jpg", "labels": [label, ...]}`` and each label
``{"id", "category", "attributes": {"crowd": bool, ...}, "rle": {"size": [h, w], "counts"}}``
(the polygon release uses ``"poly2d"`` instead of ``"rle"``; both are read).

Categories follow the official BDD100K toolkit (``bdd100k.label.to_coco``, default options):
aliases are renamed first (``person`` -> ``pedestrian``, ``bike`` -> ``bicycle``, ...); the
uncertain-region categories ``other person``, ``other vehicle`` and ``trailer`` are kept as
*ignored* instances of ``pedestrian``, ``car`` and ``truck`` (``iscrowd=1``), and so are
labels with the ``crowd`` attribute. detectron2 drops ``iscrowd`` instances from training
and COCOeval does not penalise detections that match them. Labels of any other category, and
labels with an empty mask or no mask, are skipped.
"""
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

__all__ = [
    "BDD100K_INS_SEG_CLASSES",
    "load_bdd100k_ins_seg",
    "register_bdd100k_ins_seg",
    "register_all_bdd100k",
]

BDD100K_INS_SEG_CLASSES = (
    "pedestrian",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
BDD100K_COLORS = [
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]
# The official toolkit's NAME_MAPPING and IGNORE_MAP (configs/ins_seg.toml).
BDD100K_NAME_MAPPING = {
    "bike": "bicycle",
    "caravan": "car",
    "motor": "motorcycle",
    "person": "pedestrian",
    "van": "car",
}
BDD100K_IGNORE_MAPPING = {
    "other person": "pedestrian",
    "other vehicle": "car",
    "trailer": "truck",
}
# BDD100K images are 720x1280; used when no label of a file carries a mask size.
_DEFAULT_IMAGE_SIZE = (720, 1280)
_SPLITS = {
    "bdd100k_ins_seg_train": ("images/10k/train", "labels/ins_seg/rles/ins_seg_train.json"),
    "bdd100k_ins_seg_val": ("images/10k/val", "labels/ins_seg/rles/ins_seg_val.json"),
}


def _resolve_category(category: str):
    """Returns (contiguous class id, is_ignored), or None for a category to skip."""
    category = BDD100K_NAME_MAPPING.get(category, category)
    if category in BDD100K_INS_SEG_CLASSES:
        return BDD100K_INS_SEG_CLASSES.index(category), False
    if category in BDD100K_IGNORE_MAPPING:
        return BDD100K_INS_SEG_CLASSES.index(BDD100K_IGNORE_MAPPING[category]), True
    return None


def _bezier_points(p0, c1, c2, p3, steps: int = 8) -> List[np.ndarray]:
    """Points of a cubic Bezier segment, excluding p0, including p3."""
    t = np.linspace(0, 1, steps + 1)[1:, None]
    p0, c1, c2, p3 = (np.asarray(p, dtype=np.float64) for p in (p0, c1, c2, p3))
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * p3
    return list(pts)


def _poly2d_to_polygon(poly: Dict) -> List[float]:
    """One Scalabel poly2d (``vertices`` + ``types`` of 'L' line / 'C' curve points) -> flat xy."""
    vertices = poly["vertices"]
    types = poly.get("types") or "L" * len(vertices)
    points: List[np.ndarray] = []
    i = 0
    while i < len(vertices):
        if types[i] == "C" and i + 1 < len(vertices) and points:
            end = vertices[(i + 2) % len(vertices)]
            points.extend(_bezier_points(points[-1], vertices[i], vertices[i + 1], end))
            i += 3
        else:
            points.append(np.asarray(vertices[i], dtype=np.float64))
            i += 1
    return [float(v) for p in points for v in p]


def _label_to_rle(label: Dict, height: int, width: int) -> Optional[Dict]:
    if label.get("rle"):
        rle = dict(label["rle"])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return rle
    if label.get("poly2d"):
        polygons = [_poly2d_to_polygon(p) for p in label["poly2d"]]
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            return None
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    return None


def _frame_to_record(frame: Dict, image_root: str, image_id: int, default_size, stats: Dict) -> Dict:
    labels = frame.get("labels") or []
    sizes = [tuple(lb["rle"]["size"]) for lb in labels if lb.get("rle")]
    height, width = sizes[0] if sizes else default_size
    annotations = []
    for label in labels:
        resolved = _resolve_category(label.get("category", ""))
        if resolved is None:
            stats["unknown_category"] += 1
            continue
        class_id, ignored = resolved
        rle = _label_to_rle(label, height, width)
        if rle is None or mask_util.area(rle) == 0:
            stats["no_mask"] += 1
            continue
        crowd = bool((label.get("attributes") or {}).get("crowd", False))
        annotations.append(
            {
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": class_id,
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                "iscrowd": int(crowd or ignored),
            }
        )
    return {
        "file_name": os.path.join(image_root, frame["name"]),
        "height": int(height),
        "width": int(width),
        "image_id": image_id,
        "annotations": annotations,
    }


def load_bdd100k_ins_seg(label_file: str, image_root: str) -> List[Dict]:
    """
    Read a Scalabel-format BDD100K instance-segmentation label file.

    Returns:
        list[dict] in detectron2's standard dataset format; ``segmentation`` is a COCO RLE
        dict, ``bbox`` (XYWH_ABS) is the tight box of the mask, ``category_id`` is in
        [0, 8) following ``BDD100K_INS_SEG_CLASSES``; image ids are 1-based frame indices.
    """
    if not os.path.isfile(label_file):
        raise FileNotFoundError(
            f"BDD100K label file not found: {label_file}. Expected the official layout "
            "<root>/labels/ins_seg/rles/ins_seg_{train,val}.json with <root> = "
            "$DETECTRON2_DATASETS/bdd100k."
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"BDD100K image folder not found: {image_root}. Expected the official layout "
            "<root>/images/10k/{train,val}/ with <root> = $DETECTRON2_DATASETS/bdd100k."
        )
    try:
        with open(label_file) as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"BDD100K label file {label_file} is not valid json: {e}") from e
    frames = content["frames"] if isinstance(content, dict) and "frames" in content else content
    if not isinstance(frames, list) or not all(isinstance(f, dict) and "name" in f for f in frames):
        raise ValueError(
            f"BDD100K label file {label_file} is not in Scalabel format: expected a list of "
            'frames {"name": ..., "labels": [...]} (or {"frames": [...]}).'
        )
    stats = {"unknown_category": 0, "no_mask": 0}
    # frames without an RLE label take the size of the file's first RLE (all BDD100K images
    # share one size), else the BDD100K image size
    default_size = next(
        (tuple(lb["rle"]["size"]) for f in frames for lb in (f.get("labels") or []) if lb.get("rle")),
        _DEFAULT_IMAGE_SIZE,
    )
    records = [_frame_to_record(f, image_root, i + 1, default_size, stats) for i, f in enumerate(frames)]
    num_instances = sum(len(r["annotations"]) for r in records)
    logger.info(
        f"Loaded {len(records)} images with {num_instances} instances from {label_file} "
        f"(skipped {stats['unknown_category']} labels of other categories and "
        f"{stats['no_mask']} labels without a mask)."
    )
    return records


def register_bdd100k_ins_seg(name: str, label_file: str, image_root: str) -> None:
    """Register one split (lazily: files are read when the dataset is first requested)."""
    DatasetCatalog.register(name, lambda: load_bdd100k_ins_seg(label_file, image_root))
    MetadataCatalog.get(name).set(
        label_file=label_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=list(BDD100K_INS_SEG_CLASSES),
        thing_colors=[list(c) for c in BDD100K_COLORS],
    )


def register_all_bdd100k(root: Optional[str] = None, names: Sequence[str] = tuple(_SPLITS)) -> None:
    """Register ``bdd100k_ins_seg_{train,val}`` under ``root`` (default
    ``$DETECTRON2_DATASETS/bdd100k``, where DETECTRON2_DATASETS defaults to ``datasets``)."""
    if root is None:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "bdd100k")
    for name in names:
        image_dir, label_file = _SPLITS[name]
        register_bdd100k_ins_seg(name, os.path.join(root, label_file), os.path.join(root, image_dir))
