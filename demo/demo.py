#!/usr/bin/env python
"""
Run a trained DI-MaskDINO on images and save detectron2 Visualizer drawings (boxes, masks,
class labels and scores).

    python demo/demo.py --config-file configs/embedded/dimaskdino_r18_embedded.yaml \
        --input image.jpg more/*.png a_folder/ --output out_dir/ \
        --opts MODEL.WEIGHTS output/embedded_r18/model_final.pth

With a LazyConfig file the overrides are key=value (e.g. ``train.init_checkpoint=...``).

Predictions scoring at least --confidence-threshold (default 0.3, where the main job's model puts its
correct detections: its scores are 0.3-0.5) are drawn. Files that cannot be read are skipped and
listed at the end, and the demo then exits with status 1. Drawings are named after the input's
file stem (``.png``); inputs with the same stem get ``_2``, ``_3``, ... in input order.

An exported model (``tools/export_model.py``) runs in place of a config and weights:

    python demo/demo.py --exported exported_dir/ --input image.jpg --output out_dir/
"""
import argparse
import glob
import logging
import os
import sys
import time

import cv2

import dimaskdino.data  # noqa: F401  (registers the datasets)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from detectron2.utils.logger import setup_logger

from dimaskdino.data.image_io import UnreadableImageError, read_image
from dimaskdino.utils.visualize import Predictor, draw_predictions

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CONFIDENCE_THRESHOLD = 0.3


def get_parser():
    parser = argparse.ArgumentParser(description="DI-MaskDINO demo: predictions drawn on images")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--config-file", metavar="FILE", help="yaml or LazyConfig .py file")
    model.add_argument("--exported", metavar="DIR",
                       help="an export folder of tools/export_model.py (or its model file)")
    parser.add_argument("--input", nargs="+", required=True, help="image files, globs or folders")
    parser.add_argument(
        "--output", required=True, help="folder for the drawings (or a file name for a single image)"
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=DEFAULT_CONFIDENCE_THRESHOLD,
        help=f"minimum score drawn (default {DEFAULT_CONFIDENCE_THRESHOLD})",
    )
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides")
    return parser


def expand_inputs(inputs):
    """Image paths from files, globs and folders (sorted within each argument)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        else:
            found = sorted(glob.glob(os.path.expanduser(item)))
        if not found:
            raise FileNotFoundError(f"No image found for --input {item}")
        paths.extend(found)
    return paths


def output_names(paths):
    """A distinct drawing name per input path: the stem + ".png", then "_2", "_3", ... for repeats."""
    names, used = [], set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, count = stem + ".png", 1
        while name in used:
            count += 1
            name = f"{stem}_{count}.png"
        used.add(name)
        names.append(name)
    return names


def output_paths(output, paths):
    """Where each drawing goes: into the folder ``output``, or to the file ``output`` for one image."""
    if os.path.isdir(output) or len(paths) > 1 or not os.path.splitext(output)[1]:
        os.makedirs(output, exist_ok=True)
        return [os.path.join(output, name) for name in output_names(paths)]
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return [output]


def draw_one(predictor, path, destination, threshold, logger):
    image = read_image(path, format="RGB")
    start = time.perf_counter()
    instances = predictor(image)["instances"]
    keep = int((instances.scores >= threshold).sum())
    logger.info(f"{path}: {keep} instances above {threshold} in {time.perf_counter() - start:.2f}s")
    drawing = draw_predictions(image, instances, predictor.metadata, threshold)
    if not cv2.imwrite(destination, drawing[:, :, ::-1]):
        raise OSError(f"Could not write the drawing of {path} to {destination}")


def main(argv=None):
    """Returns the exit status: 0, or 1 when some inputs could not be read."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    logger = setup_logger()
    if args.exported:
        from dimaskdino.export import ExportedPredictor

        predictor = ExportedPredictor(args.exported)
    else:
        predictor = Predictor.from_config(args.config_file, args.opts)
    paths = expand_inputs(args.input)
    failed = []
    for path, destination in zip(paths, output_paths(args.output, paths)):
        try:
            draw_one(predictor, path, destination, args.confidence_threshold, logger)
        except (FileNotFoundError, UnreadableImageError) as e:
            logger.error(f"Skipped {path}: {e}")
            failed.append(path)
    if failed:
        listing = "\n  ".join(failed)
        logger.error(f"{len(failed)} of {len(paths)} inputs could not be read and were skipped:\n  {listing}")
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
