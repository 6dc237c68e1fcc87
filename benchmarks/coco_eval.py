"""COCO evaluation at COCO val's size: pycocotools' COCOeval against the compiled engine.

    python benchmarks/coco_eval.py                   # 5000 images x 100 detections, bbox and segm
    python benchmarks/coco_eval.py --images 500      # a quicker, smaller run

The data set is generated (seeded): 5000 images of 640x480 or 480x640, 80 classes, about 7.3
objects per image (COCO val2017: 36781 objects in 5000 images) with COCO's mix of object sizes
(about 41% small, 34% medium, 25% large) and 1% crowd regions; every object is a random polygon
(an ellipse with jittered radii). Each image gets 100 detections with RLE masks: a jittered copy of
every object (sometimes with the wrong class) and random polygons for the rest.

Each engine runs what its evaluator runs per task: ``loadRes`` of the detections on the ground
truth (pycocotools' for pycocotools, as in detectron2's ``COCOEvaluator``; the batched
``BatchedResultsCOCO.loadRes`` for the compiled engine, as in our ``CompiledCOCOEvaluator``), then
``evaluate``, ``accumulate`` and ``summarize``. The script prints wall and process CPU
seconds per engine and task, the ratios pycocotools / compiled, and the largest difference between
their 12 summary numbers (AP and AR).
"""
import argparse
import contextlib
import io
import os
import sys
import time

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dimaskdino.evaluation.coco import BatchedResultsCOCO, compiled_cocoeval_class  # noqa: E402

NUM_CLASSES = 80
# object side lengths (sqrt of area) drawn per size bin, with COCO val's share of each bin
SIZE_BINS = ((0.41, 6, 32), (0.34, 32, 96), (0.25, 96, 400))


def random_polygon(rng, center, side, num_vertices=12):
    """A flat [x0, y0, x1, y1, ...] ellipse-like polygon of about ``side**2`` pixels."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, num_vertices))
    aspect = rng.uniform(0.5, 2.0)
    radii = side / np.sqrt(np.pi) * rng.uniform(0.8, 1.2, num_vertices)
    xs = center[0] + radii * np.cos(angles) * np.sqrt(aspect)
    ys = center[1] + radii * np.sin(angles) / np.sqrt(aspect)
    return np.stack([xs, ys], axis=1).ravel().tolist()


def random_side(rng):
    share = rng.random()
    for fraction, low, high in SIZE_BINS:
        if share < fraction:
            return rng.uniform(low, high)
        share -= fraction
    return rng.uniform(SIZE_BINS[-1][1], SIZE_BINS[-1][2])


def clip_polygon(polygon, width, height):
    xy = np.asarray(polygon).reshape(-1, 2)
    return np.clip(xy, 0, [width - 1, height - 1]).ravel().tolist()


def polygon_rles(polygons, height, width):
    """RLEs (counts as str) of a list of polygons, one C call per image."""
    rles = mask_util.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def image_objects(rng, width, height, num_objects):
    """(polygon, class, crowd) of one image's ground truth."""
    objects = []
    for _ in range(num_objects):
        center = rng.uniform([0, 0], [width, height])
        polygon = clip_polygon(random_polygon(rng, center, random_side(rng)), width, height)
        objects.append((polygon, int(rng.integers(1, NUM_CLASSES + 1)), int(rng.random() < 0.01)))
    return objects


def image_detections(rng, objects, width, height, num_detections):
    """(polygon, class, score) of one image: jittered objects, then random false positives."""
    detections = []
    for polygon, cls, _ in objects[:num_detections]:
        xy = np.asarray(polygon).reshape(-1, 2)
        side = np.sqrt(max(np.ptp(xy[:, 0]) * np.ptp(xy[:, 1]), 1.0))
        jittered = xy + rng.normal(0, 0.08 * side, xy.shape)
        label = cls if rng.random() < 0.8 else int(rng.integers(1, NUM_CLASSES + 1))
        detections.append((clip_polygon(jittered.ravel(), width, height), label, float(rng.uniform(0.3, 1.0))))
    while len(detections) < num_detections:
        center = rng.uniform([0, 0], [width, height])
        polygon = clip_polygon(random_polygon(rng, center, random_side(rng)), width, height)
        detections.append((polygon, int(rng.integers(1, NUM_CLASSES + 1)), float(rng.uniform(0.0, 0.6))))
    return detections


def generate(num_images, detections_per_image, seed=0):
    """(COCO ground-truth dict, list of COCO result dicts with bbox and RLE segmentation)."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = (640, 480) if rng.random() < 0.7 else (480, 640)
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        objects = image_objects(rng, width, height, int(rng.poisson(7.3)))
        rles = polygon_rles([p for p, _, _ in objects], height, width) if objects else []
        for (_, cls, crowd), rle in zip(objects, rles):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls, "iscrowd": crowd,
                "segmentation": rle, "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
            })
        detections = image_detections(rng, objects, width, height, detections_per_image)
        det_rles = polygon_rles([p for p, _, _ in detections], height, width)
        boxes = mask_util.toBbox(det_rles)
        for (_, cls, score), rle, box in zip(detections, det_rles, boxes):
            results.append({"image_id": image_id, "category_id": cls, "score": score,
                            "segmentation": rle, "bbox": box.tolist()})
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, NUM_CLASSES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def evaluate(cocoeval_class, coco_gt, results, task):
    """What COCOEvaluator does per task; returns (wall seconds, process CPU seconds, the 12 summary
    numbers). CPU seconds count every thread of the process (faster-coco-eval computes mask IoUs on
    a few threads) and are what the work costs on idle cores, whatever the machine's load."""
    if task == "segm":  # as detectron2: mask AP uses the mask's area, not the box's
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        results = [dict(r) for r in results]
    start, start_cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        if cocoeval_class is not COCOeval:
            coco_gt = BatchedResultsCOCO.sharing(coco_gt)
        coco_eval = cocoeval_class(coco_gt, coco_gt.loadRes(results), task)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return wall, cpu, np.asarray(coco_eval.stats[:12], dtype=np.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--tasks", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    args = parser.parse_args()
    compiled = compiled_cocoeval_class()
    if compiled is None:
        sys.exit("faster-coco-eval is not installed: `pip install faster-coco-eval` (see requirements.txt)")

    start = time.perf_counter()
    dataset, results = generate(args.images, args.detections)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
    print(f"generated {len(dataset['images'])} images, {len(dataset['annotations'])} objects, "
          f"{len(results)} detections in {time.perf_counter() - start:.1f} s", flush=True)

    print("| task | pycocotools wall / CPU (s) | faster-coco-eval wall / CPU (s) | ratio wall / CPU | "
          "max abs. difference of the 12 stats |")
    print("|---|---:|---:|---:|---:|")
    for task in args.tasks:
        ref_wall, ref_cpu, reference = evaluate(COCOeval, coco_gt, results, task)
        wall, cpu, numbers = evaluate(compiled, coco_gt, results, task)
        print(f"| {task} | {ref_wall:.1f} / {ref_cpu:.1f} | {wall:.1f} / {cpu:.1f} | "
              f"{ref_wall / wall:.1f}x / {ref_cpu / cpu:.1f}x | {np.abs(reference - numbers).max():.1e} |", flush=True)


if __name__ == "__main__":
    main()
