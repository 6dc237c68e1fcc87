"""Export for deployment: ``torch.export`` (.pt2), AOTInductor (.pt2 package) and ONNX (.onnx) files of the
inference network, each with a JSON sidecar, and :class:`ExportedPredictor` to run them on images.

    python tools/export_model.py --config-file CFG --format onnx --output DIR --dynamic MODEL.WEIGHTS W.pth
"""
from .exporter import export_model
from .formats import FILE_NAMES, FORMATS, load_runner
from .network import INPUT_NAME, OUTPUT_NAMES, InferenceNetwork, check_exportable
from .predictor import ExportedPredictor, instances_from_outputs
from .sidecar import SIDECAR_NAME, ExportSidecar, read_sidecar

__all__ = ["export_model", "FILE_NAMES", "FORMATS", "load_runner", "INPUT_NAME", "OUTPUT_NAMES", "InferenceNetwork",
           "check_exportable", "ExportedPredictor", "instances_from_outputs", "SIDECAR_NAME", "ExportSidecar",
           "read_sidecar"]
