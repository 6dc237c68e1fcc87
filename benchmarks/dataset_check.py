"""Cost of the start-of-run dataset check on a COCO-sized annotation file.

    python benchmarks/dataset_check.py                      # 118287 images, ~7.3 annotations each
    python benchmarks/dataset_check.py --images 5000        # a quick run

Writes a synthetic COCO json (one polygon per annotation with --points vertices) and one empty file
per image into a temporary folder, then times, in the same run:

* the check (``dimaskdino.data.check_dataset_contents``: json read, image files stat-ed, annotations
  scanned), and
* the baseline: detectron2's ``load_coco_json`` of the same file, which every training run does anyway.

Prints both and their ratio. The temporary folder is deleted at the end.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from detectron2.data.datasets import load_coco_json, register_coco_instances  # noqa: E402

from dimaskdino.data import check_dataset_contents  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=118287, help="COCO train2017 has 118287")
    parser.add_argument("--annotations-per-image", type=float, default=7.3, help="COCO train2017: 860001 / 118287")
    parser.add_argument("--points", type=int, default=12, help="polygon vertices per annotation")
    return parser.parse_args()


def write_coco(folder: str, num_images: int, per_image: float, points: int) -> str:
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640} for i in range(1, num_images + 1)]
    for image in images:
        open(os.path.join(folder, image["file_name"]), "wb").close()
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    annotations = []
    counts = rng.poisson(per_image, num_images)
    for image_id, count in zip(range(1, num_images + 1), counts):
        for _ in range(count):
            cx, cy, r = rng.uniform(50, 590), rng.uniform(50, 430), rng.uniform(5, 45)
            polygon = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).round(2).ravel().tolist()
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 81)),
                "bbox": [round(cx - r, 2), round(cy - r, 2), round(2 * r, 2), round(2 * r, 2)],
                "area": round(np.pi * r * r, 2), "iscrowd": 0, "segmentation": [polygon],
            })
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 81)]
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main():
    args = parse_args()
    folder = tempfile.mkdtemp(prefix="dataset_check_bench_")
    try:
        seconds, json_file = timed(write_coco, folder, args.images, args.annotations_per_image, args.points)
        size_mb = os.path.getsize(json_file) / 2**20
        print(f"wrote {args.images} images and their annotations ({size_mb:.0f} MB json) in {seconds:.1f} s", flush=True)
        register_coco_instances("dataset_check_benchmark", {}, json_file, folder)
        check_s, _ = timed(check_dataset_contents, "dataset_check_benchmark")
        print(f"check_dataset_contents: {check_s:.2f} s", flush=True)
        load_s, dicts = timed(load_coco_json, json_file, folder, "dataset_check_benchmark")
        num_annotations = sum(len(d["annotations"]) for d in dicts)
        print(f"load_coco_json (baseline, done by every training run): {load_s:.2f} s "
              f"({len(dicts)} images, {num_annotations} annotations)")
        print(f"check / load_coco_json = {check_s / load_s:.2f}")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
