"""The three export formats: tracing with ``torch.export``, saving each format, and loading it back as a
function from an image batch to the raw outputs.

- ``torch_export``: the ``ExportedProgram`` (our deformable attention kept as the custom op
  ``dimaskdino::ms_deform_attn_forward``), saved with ``torch.export.save``.
- ``aoti``: the same program compiled by AOTInductor for the model's device, a ``.pt2`` package that
  runs with ``torch`` and the op library ``dimaskdino/_C*.so`` only.
- ``onnx``: ``torch.onnx.export(dynamo=True)`` with the deformable attention traced through the
  ``grid_sample`` reference (``reference_ms_deform_attn``), so stock ONNX Runtime runs it (GridSample).
"""
import os
import traceback
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ..layers import reference_ms_deform_attn
from .network import INPUT_NAME, OUTPUT_NAMES

__all__ = ["FORMATS", "FILE_NAMES", "MAX_SIDE", "dynamic_shapes", "trace", "save_format", "load_runner",
           "onnx_opset"]

FORMATS = ("torch_export", "aoti", "onnx")
FILE_NAMES = {"torch_export": "model.pt2", "aoti": "model_aoti.pt2", "onnx": "model.onnx"}
MAX_SIDE = 4096  # upper bound of the dynamic height and width
MAX_BATCH = 64

Outputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def dynamic_shapes(size_divisibility: int, min_side: int, max_side: int = MAX_SIDE) -> Dict:
    """Free batch, and height and width in multiples of ``size_divisibility`` within [min_side, max_side]."""
    blocks = dict(min=max(1, min_side // size_divisibility), max=max_side // size_divisibility)
    height = torch.export.Dim("height_blocks", **blocks)
    width = torch.export.Dim("width_blocks", **blocks)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return {"images": {0: batch, 2: size_divisibility * height, 3: size_divisibility * width}}


def _failure_location(error: BaseException) -> str:
    """The innermost dimaskdino source line of an error's traceback: the part of the model that failed."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(package)]
    if not frames:
        return "the model"
    frame = frames[-1]
    return f"{os.path.relpath(frame.filename, os.path.dirname(package))}:{frame.lineno} ({frame.name}: {frame.line})"


def trace(network: nn.Module, example: torch.Tensor, shapes: Optional[Dict]) -> torch.export.ExportedProgram:
    """``torch.export`` of the network; a failure names the model code that could not be traced."""
    try:
        with torch.no_grad():
            return torch.export.export(network, (example,), dynamic_shapes=shapes)
    except Exception as error:
        raise RuntimeError(f"torch.export could not trace {_failure_location(error)}: "
                           f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error


def _save_onnx(network: nn.Module, example: torch.Tensor, shapes: Optional[Dict], path: str) -> None:
    with reference_ms_deform_attn(), torch.no_grad():
        torch.onnx.export(network, (example,), path, dynamo=True, dynamic_shapes=shapes, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), external_data=False, verbose=False)


def save_format(fmt: str, network: nn.Module, example: torch.Tensor, shapes: Optional[Dict], path: str) -> None:
    """Export ``network`` traced at ``example`` in format ``fmt`` to ``path``."""
    if fmt == "onnx":
        _save_onnx(network, example, shapes, path)
        return
    program = trace(network, example, shapes)
    if fmt == "torch_export":
        torch.export.save(program, path)
    elif fmt == "aoti":
        torch._inductor.aoti_compile_and_package(program, package_path=path)
    else:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")


def onnx_opset(path: str) -> int:
    """The default-domain opset of an ONNX file."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def load_runner(fmt: str, path: str) -> Callable[[torch.Tensor], Outputs]:
    """A function (B, 3, H, W) float32 images -> (pred_logits, pred_boxes, pred_masks) for an exported file."""
    if fmt == "torch_export":
        import dimaskdino.layers  # noqa: F401  (registers the op the program calls)

        module = torch.export.load(path).module()
        return lambda images: tuple(module(images))
    if fmt == "aoti":
        import dimaskdino.layers  # noqa: F401  (loads the op library the package calls)

        runner = torch._inductor.aoti_load_package(path)
        return lambda images: tuple(runner(images))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run(images):
            outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.detach().cpu().numpy()})
            return tuple(torch.from_numpy(o) for o in outputs)

        return run
    raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
