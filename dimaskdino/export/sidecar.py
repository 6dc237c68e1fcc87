"""The JSON sidecar of an exported model: what the exported file needs around it to be used without the
config files (pre-processing, class names, post-processing settings, input and output names)."""
import dataclasses
import json
import os
from typing import List, Optional, Tuple

__all__ = ["SIDECAR_NAME", "ExportSidecar", "read_sidecar", "write_sidecar"]

SIDECAR_NAME = "export.json"


@dataclasses.dataclass
class ExportSidecar:
    """Everything about an export except the network itself.

    format: "torch_export", "aoti" or "onnx"; file: the model file's name in the export folder
    device: where the network runs ("cpu", or "cuda" for an AOTInductor package compiled for the GPU)
    input_format: "RGB" or "BGR", the channel order the network was trained on
    pixel_mean, pixel_std: per-channel normalisation; size_divisibility: inputs are padded to its multiples
    dynamic: height, width (and batch) are free; else the network takes (1, 3, *image_size) only
    min_side, max_side: bounds of the padded height and width of a dynamic export
    resize_short_edge, resize_max_size: the test-time ResizeShortestEdge (None: images are not resized)
    """

    format: str
    file: str
    device: str
    input_format: str
    pixel_mean: List[float]
    pixel_std: List[float]
    size_divisibility: int
    dynamic: bool
    image_size: Optional[Tuple[int, int]]
    min_side: int
    max_side: int
    resize_short_edge: Optional[Tuple[int, int]]
    resize_max_size: Optional[int]
    class_names: List[str]
    num_classes: int
    max_detections: int
    score_from_box_only: bool
    input_name: str
    output_names: List[str]
    opset: Optional[int]
    torch_version: str
    config: str


def write_sidecar(sidecar: ExportSidecar, folder: str) -> str:
    path = os.path.join(folder, SIDECAR_NAME)
    with open(path, "w") as f:
        json.dump(dataclasses.asdict(sidecar), f, indent=2)
    return path


def read_sidecar(path: str) -> Tuple[ExportSidecar, str]:
    """The sidecar of an export folder, or of the model file ``path`` (the sidecar sits next to it).

    Returns (sidecar, path of the model file).
    """
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    sidecar_path = os.path.join(folder, SIDECAR_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Exported model not found: {path}")
    if not os.path.isfile(sidecar_path):
        raise FileNotFoundError(f"The sidecar {SIDECAR_NAME} of exported model {path} is missing (expected at "
                                f"{sidecar_path}); tools/export_model.py writes it next to the model file")
    with open(sidecar_path) as f:
        data = json.load(f)
    fields = {f.name for f in dataclasses.fields(ExportSidecar)}
    missing = sorted(fields - set(data))
    if missing:
        raise ValueError(f"Sidecar {sidecar_path} lacks the keys {missing}: re-export the model")
    sidecar = ExportSidecar(**{k: data[k] for k in fields})
    model_file = os.path.join(folder, sidecar.file)
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"Sidecar {sidecar_path} names the model file {sidecar.file}, which is missing")
    return sidecar, model_file
