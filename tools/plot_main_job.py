#!/usr/bin/env python
"""
Pictures of a finished training run: ``loss_curve.png`` (losses and learning rate from
metrics.json) and ``predictions_val.png`` (predictions of model_final.pth on validation images,
ground truth below), both written into the run's output folder.

    python tools/plot_main_job.py --output-dir output/embedded_r18
"""
import argparse
import logging
import os


import dimaskdino.data  # noqa: F401  (registers the datasets)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from detectron2.data import DatasetCatalog

from dimaskdino.utils.visualize import Predictor, plot_loss_curves, prediction_grid


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="OUTPUT_DIR of the run")
    parser.add_argument("--config-file", help="default: <output-dir>/config.yaml (saved by train_net.py)")
    parser.add_argument("--weights", help="default: <output-dir>/model_final.pth")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.3, help="minimum score drawn")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    curve = plot_loss_curves(
        os.path.join(args.output_dir, "metrics.json"), os.path.join(args.output_dir, "loss_curve.png")
    )
    print(f"loss curve: {curve}")
    config_file = args.config_file or os.path.join(args.output_dir, "config.yaml")
    weights = args.weights or os.path.join(args.output_dir, "model_final.pth")
    predictor = Predictor.from_config(config_file, weights=weights)
    dataset = DatasetCatalog.get(predictor.metadata.name)[: args.num_images]
    grid = prediction_grid(
        predictor, dataset, os.path.join(args.output_dir, "predictions_val.png"), args.score_threshold
    )
    print(f"predictions on {len(dataset)} validation images: {grid}")


if __name__ == "__main__":
    main()
