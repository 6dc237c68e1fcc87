#!/usr/bin/env python
"""
Export a trained DI-MaskDINO for deployment: the inference network (normalised image batch in, raw
final-stage outputs pred_logits / pred_boxes / pred_masks out) in one of three formats, plus a JSON
sidecar (export.json: config, class names, input format, pixel mean/std, size divisibility, resize,
input/output names) so that the export runs without the config files.

    python tools/export_model.py --config-file configs/embedded/dimaskdino_r18_embedded.yaml \\
        --format torch_export --output exported/ --dynamic MODEL.WEIGHTS output/embedded_r18/model_final.pth
    python tools/export_model.py --config-file CFG --format aoti --output DIR --image-size 800 1344 MODEL.WEIGHTS W
    python tools/export_model.py --config-file CFG --format onnx --output DIR --dynamic MODEL.WEIGHTS W

Formats: torch_export (model.pt2, torch.export with our deformable-attention op), aoti (model_aoti.pt2,
AOTInductor package for MODEL.DEVICE) and onnx (model.onnx, deformable attention lowered to GridSample).
--image-size H W fixes the padded input (multiples of the size divisibility); --dynamic leaves batch,
height and width free (height and width in multiples of the size divisibility). Overrides are KEY VALUE
for yaml configs and key=value for LazyConfig .py files. Run the export with ``demo/demo.py --exported DIR``
or ``dimaskdino.export.ExportedPredictor(DIR)``.
"""
import argparse
import logging
import os

import dimaskdino.data  # noqa: F401  (registers the datasets: class names)
import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino.export import FORMATS, export_model
from dimaskdino.utils.config_files import is_lazy_config, load_config
from dimaskdino.utils.visualize import Predictor

logger = logging.getLogger("dimaskdino.export")


def get_parser():
    parser = argparse.ArgumentParser(description="Export DI-MaskDINO to torch.export, AOTInductor or ONNX")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="yaml or LazyConfig .py file")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the model file and export.json")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"), help="static padded input size")
    size.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="config overrides")
    return parser


def config_text(config_file, opts) -> str:
    """The full config as text, for the sidecar."""
    cfg = load_config(config_file, opts)
    if is_lazy_config(config_file):
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(cfg)
    return cfg.dump()


def main(argv=None):
    args = get_parser().parse_args(argv)
    predictor = Predictor.from_config(args.config_file, args.opts)
    path = export_model(predictor, args.format, args.output, image_size=args.image_size, dynamic=args.dynamic,
                        config_text=config_text(args.config_file, args.opts))
    logger.info(f"wrote {path} and {os.path.join(args.output, 'export.json')}")
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
