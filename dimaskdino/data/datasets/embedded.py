"""
The embedded shapes dataset: a small synthetic instance-segmentation dataset that needs no
download. It is generated deterministically on first use (a few seconds) into a cache folder,
written as COCO json (RLE masks) + PNG images, and registered like any COCO dataset:

    embedded_shapes_train   2000 images
    embedded_shapes_val      200 images

Each 128x128 image shows 0-6 filled shapes of four classes (circle, square, triangle, star)
with random sizes, rotations and colours, drawn over a textured, noisy background with a few
distractor lines. Later shapes occlude earlier ones; an instance's mask and box are its
*visible* pixels, and a placement is rejected when it would hide more than half of an earlier
shape, so every annotated instance stays recognisable.

The cache folder is ``$DIMASKDINO_CACHE/embedded_shapes/<version>`` (default
``~/.cache/dimaskdino``). Concurrent processes are safe: generation holds a file lock and
builds the dataset in a temporary folder that is renamed into place only when complete.
"""
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_CLASSES",
    "EMBEDDED_SPLITS",
    "EMBEDDED_VERSION",
    "ShapesSpec",
    "default_cache_root",
    "embedded_dataset_dir",
    "ensure_embedded_shapes",
    "generate_embedded_shapes",
    "register_embedded_shapes",
]

# Bump whenever the generator's output changes: the cache folder is keyed by it.
EMBEDDED_VERSION = "v1"
EMBEDDED_CLASSES = ("circle", "square", "triangle", "star")
# dataset name -> (split folder, number of images)
EMBEDDED_SPLITS = {
    "embedded_shapes_train": ("train", 2000),
    "embedded_shapes_val": ("val", 200),
}
EMBEDDED_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]
_SPLIT_SEEDS = {"train": 1, "val": 2}


@dataclass(frozen=True)
class ShapesSpec:
    """Parameters of the generator; the defaults define the registered dataset."""

    image_size: int = 128
    min_radius: float = 8.0
    max_radius: float = 30.0
    # probabilities of 0, 1, 2, ... shapes in an image
    count_probs: Tuple[float, ...] = (0.03, 0.12, 0.2, 0.22, 0.2, 0.13, 0.10)
    min_visible_fraction: float = 0.5
    min_visible_pixels: int = 30
    placement_tries: int = 30
    seed: int = 0


def default_cache_root() -> str:
    """``$DIMASKDINO_CACHE`` if set, else ``~/.cache/dimaskdino``."""
    root = os.environ.get("DIMASKDINO_CACHE")
    if root:
        return os.path.expanduser(root)
    return os.path.join(os.path.expanduser("~"), ".cache", "dimaskdino")


def embedded_dataset_dir(cache_root: Optional[str] = None) -> str:
    return os.path.join(cache_root or default_cache_root(), "embedded_shapes", EMBEDDED_VERSION)


def annotation_file(dataset_dir: str, split: str) -> str:
    return os.path.join(dataset_dir, "annotations", f"instances_{split}.json")


# ----------------------------------------------------------------------------- drawing


def _polygon_vertices(cls: str, center, radius: float, angle: float, rng) -> np.ndarray:
    """Vertices (V, 2) as (x, y) of a square, triangle or star."""
    if cls == "square":
        angles = angle + np.arange(4) * (np.pi / 2)
        radii = np.full(4, radius)
    elif cls == "triangle":
        angles = angle + np.arange(3) * (2 * np.pi / 3) + rng.uniform(-0.2, 0.2, size=3)
        radii = radius * rng.uniform(0.9, 1.1, size=3)
    elif cls == "star":
        angles = angle + np.arange(10) * (np.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    else:
        raise ValueError(f"no polygon for shape class {cls!r}")
    return np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], 1)


def _rasterize_shape(cls: str, center, radius: float, angle: float, size: int, rng) -> np.ndarray:
    """A (size, size) uint8 {0,1} mask of one shape, clipped to the image."""
    mask = np.zeros((size, size), dtype=np.uint8)
    shift = 4  # sub-pixel vertex precision: coordinates in 1/16 pixel
    if cls == "circle":
        c = tuple(int(round(v * (1 << shift))) for v in center)
        cv2.circle(mask, c, int(round(radius * (1 << shift))), 1, -1, cv2.LINE_8, shift)
    else:
        vertices = _polygon_vertices(cls, center, radius, angle, rng)
        pts = np.round(vertices * (1 << shift)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, cv2.LINE_8, shift)
    return mask


def _random_color(rng) -> np.ndarray:
    hsv = np.array(
        [[[rng.integers(0, 180), rng.integers(110, 256), rng.integers(110, 256)]]], np.uint8
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng, size: int) -> np.ndarray:
    """A float32 (size, size, 3) RGB background: gradient + low-frequency texture + lines."""
    c0, c1 = rng.uniform(20, 235, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = np.clip(0.5 + (xs - 0.5) * np.cos(theta) + (ys - 0.5) * np.sin(theta), 0, 1)
    image = c0 + (c1 - c0) * t[..., None]
    coarse = rng.normal(0, 18, size=(6, 6, 3)).astype(np.float32)
    image += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(0, 3)):
        p0, p1 = rng.integers(0, size, size=(2, 2))
        color = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        cv2.line(image, tuple(int(v) for v in p0), tuple(int(v) for v in p1), color, 1)
    return image.astype(np.float32)


def _shade(color: np.ndarray, rng, size: int) -> np.ndarray:
    """A float32 (size, size, 3) fill: the colour with a gentle linear shading."""
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return color[None, None, :] + (gx * xs + gy * ys)[..., None] * 100.0


def _place_shapes(rng, spec: ShapesSpec) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """
    Render one image.

    Returns:
        image: (H, W, 3) uint8 RGB
        instances: list of (class index, visible mask (H, W) uint8), in drawing order
    """
    size = spec.image_size
    image = _background(rng, size)
    bg_mean = image.reshape(-1, 3).mean(0)
    num_shapes = rng.choice(len(spec.count_probs), p=np.asarray(spec.count_probs))
    classes: List[int] = []
    full_areas: List[int] = []
    visible: List[np.ndarray] = []
    for _ in range(num_shapes):
        for _try in range(spec.placement_tries):
            cls_idx = int(rng.integers(0, len(EMBEDDED_CLASSES)))
            radius = rng.uniform(spec.min_radius, spec.max_radius)
            center = rng.uniform(0.7 * radius, size - 0.7 * radius, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            mask = _rasterize_shape(EMBEDDED_CLASSES[cls_idx], center, radius, angle, size, rng)
            area = int(mask.sum())
            if area < spec.min_visible_pixels:
                continue
            remaining = [v & (1 - mask) for v in visible]
            if all(
                r.sum() >= max(spec.min_visible_fraction * a, spec.min_visible_pixels)
                for r, a in zip(remaining, full_areas)
            ):
                break
        else:
            continue  # no acceptable placement: draw fewer shapes
        color = _random_color(rng)
        for _c in range(20):  # keep the shape distinguishable from the background
            if np.abs(color - bg_mean).sum() >= 90:
                break
            color = _random_color(rng)
        fill = _shade(color, rng, size)
        image = np.where(mask[..., None].astype(bool), fill, image)
        visible = remaining + [mask]
        classes.append(cls_idx)
        full_areas.append(area)
    image = cv2.GaussianBlur(image, (3, 3), 0.7)
    image = image + rng.normal(0, 6, size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, list(zip(classes, visible))


def _mask_annotation(mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "area": int(mask.sum()),
        "iscrowd": 0,
    }


def _render_image(job) -> Tuple[Dict, List[Dict]]:
    """Render image ``index`` of a split and write its PNG; returns its COCO image record and its
    annotations (without ids). One independent random stream per image, so the output does not
    depend on which process renders which image, or in what order."""
    out_dir, split, index, spec = job
    rng = np.random.default_rng([spec.seed, _SPLIT_SEEDS[split], index])
    image, instances = _place_shapes(rng, spec)
    file_name = f"{split}/{index:06d}.png"
    if not cv2.imwrite(os.path.join(out_dir, file_name), image[:, :, ::-1]):
        raise OSError(f"could not write image {os.path.join(out_dir, file_name)}")
    image_id = index + 1
    record = {"id": image_id, "file_name": file_name, "height": spec.image_size, "width": spec.image_size}
    annotations = []
    for cls_idx, mask in instances:
        ann = _mask_annotation(mask)
        ann.update(image_id=image_id, category_id=cls_idx + 1)
        annotations.append(ann)
    return record, annotations


def _generate_split(out_dir: str, split: str, num_images: int, spec: ShapesSpec, processes: int = 1) -> Dict:
    """Writes ``out_dir/<split>/*.png`` (on ``processes`` processes) and returns the COCO dict of
    the split."""
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    jobs = [(out_dir, split, index, spec) for index in range(num_images)]
    # fork (where there is one) starts workers in milliseconds; spawn would re-import torch in each
    if processes > 1 and num_images > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            rendered = pool.map(_render_image, jobs, chunksize=max(1, num_images // (4 * processes)))
    else:
        rendered = [_render_image(job) for job in jobs]
    images = [record for record, _ in rendered]
    annotations = [ann for _, anns in rendered for ann in anns]
    for ann_id, ann in enumerate(annotations, start=1):
        ann["id"] = ann_id
    return {
        "info": {
            "description": f"dimaskdino embedded shapes ({split})",
            "version": EMBEDDED_VERSION,
            "generator": {k: v for k, v in spec.__dict__.items()},
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(EMBEDDED_CLASSES)
        ],
    }


def generate_embedded_shapes(
    out_dir: str,
    split_sizes: Optional[Dict[str, int]] = None,
    spec: ShapesSpec = ShapesSpec(),
    processes: Optional[int] = None,
) -> None:
    """
    Generate the dataset into ``out_dir`` (``<split>/*.png`` and
    ``annotations/instances_<split>.json``). Deterministic: the same arguments give
    byte-identical files.

    Args:
        split_sizes: split name ("train" or "val") -> number of images; default: the
            registered sizes.
        processes: processes rendering images (default: the CPU count, at most 4); the files
            do not depend on it.
    """
    if processes is None:
        processes = min(os.cpu_count() or 1, 4)
    if split_sizes is None:
        split_sizes = {split: n for split, n in EMBEDDED_SPLITS.values()}
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    for split, num_images in split_sizes.items():
        if split not in _SPLIT_SEEDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_SEEDS)}, got {split!r}")
        coco = _generate_split(out_dir, split, num_images, spec, processes=processes)
        with open(annotation_file(out_dir, split), "w") as f:
            json.dump(coco, f, sort_keys=True, separators=(",", ":"))


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive inter-process lock (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: rely on the atomic rename alone
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_complete(dataset_dir: str) -> bool:
    return all(os.path.isfile(annotation_file(dataset_dir, s)) for s, _ in EMBEDDED_SPLITS.values())


def ensure_embedded_shapes(cache_root: Optional[str] = None) -> str:
    """
    Return the dataset folder, generating it first if it is not in the cache yet.
    Safe to call from several processes at once.
    """
    dataset_dir = embedded_dataset_dir(cache_root)
    if _is_complete(dataset_dir):
        return dataset_dir
    parent = os.path.dirname(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    with _file_lock(os.path.join(parent, f".{EMBEDDED_VERSION}.lock")):
        if _is_complete(dataset_dir):  # another process finished while we waited
            return dataset_dir
        if os.path.exists(dataset_dir):
            raise RuntimeError(
                f"The embedded dataset cache folder {dataset_dir} exists but is incomplete "
                f"(missing {annotation_file(dataset_dir, 'train')} or the val json). "
                "Delete it to regenerate the dataset."
            )
        logger.info(f"Generating the embedded shapes dataset into {dataset_dir} ...")
        tmp_dir = tempfile.mkdtemp(prefix=f".{EMBEDDED_VERSION}.tmp-", dir=parent)
        try:
            generate_embedded_shapes(tmp_dir)
            os.rename(tmp_dir, dataset_dir)
        finally:
            if os.path.exists(tmp_dir):
                shutil.rmtree(tmp_dir, ignore_errors=True)
        logger.info(f"Embedded shapes dataset ready in {dataset_dir}")
    return dataset_dir


def _load_split(name: str, split: str, cache_root: Optional[str]):
    dataset_dir = ensure_embedded_shapes(cache_root)
    return load_coco_json(annotation_file(dataset_dir, split), dataset_dir, name)


def register_embedded_shapes(cache_root: Optional[str] = None) -> Dict[str, Callable[[], str]]:
    """
    Register ``embedded_shapes_train`` and ``embedded_shapes_val`` (lazily: nothing is
    generated until a dataset is first requested).

    Returns:
        dataset name -> function that makes sure its files exist (used before evaluation,
        since COCOEvaluator reads ``json_file`` directly).
    """
    dataset_dir = embedded_dataset_dir(cache_root)
    preparers = {}
    for name, (split, _num) in EMBEDDED_SPLITS.items():
        DatasetCatalog.register(name, lambda n=name, s=split: _load_split(n, s, cache_root))
        MetadataCatalog.get(name).set(
            json_file=annotation_file(dataset_dir, split),
            image_root=dataset_dir,
            evaluator_type="coco",
            thing_classes=list(EMBEDDED_CLASSES),
            thing_colors=[list(c) for c in EMBEDDED_COLORS],
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(EMBEDDED_CLASSES))},
        )
        preparers[name] = lambda: ensure_embedded_shapes(cache_root)
    return preparers
