#!/usr/bin/env python
"""
Run a trained DI-MaskDINO on images and save detectron2 Visualizer drawings (boxes, masks,
class labels and scores).

    python demo/demo.py --config-file configs/embedded/dimaskdino_r18_embedded.yaml \
        --input image.jpg more/*.png a_folder/ --output out_dir/ \
        --opts MODEL.WEIGHTS output/embedded_r18/model_final.pth

With a LazyConfig file the overrides are key=value (e.g. ``train.init_checkpoint=...``).
"""
import argparse
import glob
import logging
import os
import time

import cv2


import dimaskdino.data  # noqa: F401  (registers the datasets)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from detectron2.data import detection_utils as utils
from detectron2.utils.logger import setup_logger

from dimaskdino.utils.visualize import Predictor, draw_predictions

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_parser():
    parser = argparse.ArgumentParser(description="DI-MaskDINO demo: predictions drawn on images")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="yaml or LazyConfig .py file")
    parser.add_argument("--input", nargs="+", required=True, help="image files, globs or folders")
    parser.add_argument(
        "--output", required=True, help="folder for the drawings (or a file name for a single image)"
    )
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score drawn")
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


def output_path(output, image_path, num_images):
    if os.path.isdir(output) or num_images > 1 or not os.path.splitext(output)[1]:
        os.makedirs(output, exist_ok=True)
        stem = os.path.splitext(os.path.basename(image_path))[0]
        return os.path.join(output, stem + ".png")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return output


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    logger = setup_logger()
    predictor = Predictor.from_config(args.config_file, args.opts)
    paths = expand_inputs(args.input)
    for path in paths:
        try:
            image = utils.read_image(path, format="RGB")
        except Exception as e:
            raise RuntimeError(f"Could not read image {path}: {e}") from e
        start = time.perf_counter()
        instances = predictor(image)["instances"]
        keep = int((instances.scores >= args.confidence_threshold).sum())
        logger.info(f"{path}: {keep} instances above {args.confidence_threshold} in {time.perf_counter() - start:.2f}s")
        drawing = draw_predictions(image, instances, predictor.metadata, args.confidence_threshold)
        cv2.imwrite(output_path(args.output, path, len(paths)), drawing[:, :, ::-1])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
