"""Export (torch.export, AOTInductor, ONNX Runtime): raw outputs and Instances equal to the eager model.

The model is the embedded main-job configuration with weights from a seed. Each format is exported once
per module (dynamic batch, height and width); the AOTInductor export compiles C++ (minutes on 2 cores)
and is marked slow.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model

import dimaskdino.modeling  # noqa: F401  (registers the model)
from dimaskdino import layers as dimaskdino_layers
from dimaskdino.export import (
    SIDECAR_NAME, ExportedPredictor, InferenceNetwork, export_model, read_sidecar,
)
from dimaskdino.utils.config_files import load_yaml_config
from dimaskdino.utils.visualize import Predictor

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "configs" / "embedded" / "dimaskdino_r18_embedded.yaml"
# exporting with dynamic shapes takes over a minute for AOTInductor (C++ compilation) and ONNX on 2 cores
FORMATS = ["torch_export", pytest.param("aoti", marks=pytest.mark.slow), pytest.param("onnx", marks=pytest.mark.slow)]
# (batch, height, width) of the raw-output checks: two padded sizes through one exported file
RAW_INPUTS = [(2, 128, 128), (1, 96, 160)]


def load_script(relative_path):
    """A script of the repository (tools/, demo/) as a module, to call its main() in this process."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seeded_model():
    cfg = load_yaml_config(str(EMBEDDED))
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # the zero-initialised box heads would hide box refinement
        for name, p in model.named_parameters():
            if name.endswith("box_embed.layers.2.weight"):
                p.normal_(0, 0.02)
    return model.eval()


def eager_predictor(model):
    return Predictor(model, T.ResizeShortestEdge([128, 128], 128), "RGB", Metadata(name="test"))


def smooth_image(seed, h, w):
    """An RGB (h, w, 3) uint8 image of smooth blobs (varied enough to give distinct detections)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def raw_input(seed, b, h, w):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return seeded_model()


@pytest.fixture(scope="module", params=FORMATS)
def exported(request, model, tmp_path_factory):
    """(format, export folder) of the seeded model, exported with dynamic shapes."""
    folder = tmp_path_factory.mktemp(f"export_{request.param}")
    export_model(eager_predictor(model), request.param, str(folder), dynamic=True)
    return request.param, folder


@pytest.fixture(scope="module")
def exported_predictor(exported):
    return ExportedPredictor(str(exported[1]))


def test_raw_outputs_equal_eager(exported, exported_predictor, model):
    fmt = exported[0]
    sidecar, run = exported_predictor.sidecar, exported_predictor.run
    network = InferenceNetwork(model)
    for seed, (b, h, w) in enumerate(RAW_INPUTS):
        images = raw_input(seed, b, h, w)
        with torch.no_grad():
            expected = network(images)
        got = run(images)
        for name, e, g, atol in zip(sidecar.output_names, expected, got, (1e-4, 1e-4, 1e-3)):
            assert tuple(g.shape) == tuple(e.shape), name
            assert torch.allclose(g, e, atol=atol, rtol=0), \
                f"{fmt} {name} at {(b, h, w)}: max diff {(g - e).abs().max()}"


def assert_same_instances(got, expected):
    assert got.image_size == expected.image_size
    order_got = torch.argsort(got.scores, descending=True)
    order_expected = torch.argsort(expected.scores, descending=True)
    got, expected = got[order_got], expected[order_expected]
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert torch.allclose(got.scores, expected.scores, atol=1e-4, rtol=0)
    assert torch.allclose(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=0.01, rtol=0)
    a, b = got.pred_masks.bool().flatten(1), expected.pred_masks.bool().flatten(1)
    union = (a | b).sum(1)
    iou = torch.where(union > 0, (a & b).sum(1) / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))
    assert iou.min() >= 0.99, f"mask IoU down to {iou.min():.4f}"


def test_predictor_gives_the_eager_instances(exported_predictor, model):
    predictor = exported_predictor
    eager = eager_predictor(model)
    # two sizes: 128x128, and 90x120 resized to 96x128 (padded 96x128)
    for seed, (h, w) in enumerate([(128, 128), (90, 120)]):
        image = smooth_image(seed, h, w)
        expected = eager(image)["instances"]
        got = predictor(image)["instances"]
        assert len(expected) == 50
        assert_same_instances(got, expected)


def test_sidecar_describes_the_export(exported, model):
    fmt, folder = exported
    data = json.loads((folder / SIDECAR_NAME).read_text())
    assert data["format"] == fmt and (folder / data["file"]).is_file()
    assert data["output_names"] == ["pred_logits", "pred_boxes", "pred_masks"] and data["input_name"] == "images"
    assert data["pixel_mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert data["size_divisibility"] == 32 and data["dynamic"] is True
    assert data["min_side"] == 64  # 40 first-selected queries need 8*8 + 4*4 + 2*2 >= 40 tokens: 64x64
    assert data["resize_short_edge"] == [128, 128] and data["max_detections"] == 50
    if fmt == "onnx":
        assert data["opset"] >= 18  # GridSample on 4-D inputs since opset 16; torch 2.14 writes 20


def _run_isolated(script, *args):
    """Run ``script`` in a fresh interpreter that cannot import the project (no PYTHONPATH, other cwd)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script, *args], cwd="/", env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


ONNX_ALONE = """
import sys, numpy as np, onnxruntime
data = np.load(sys.argv[2])
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
outputs = session.run(["pred_logits", "pred_boxes", "pred_masks"], {"images": data["images"]})
assert not any(m.startswith("dimaskdino") for m in sys.modules)
for name, out, atol in zip(["pred_logits", "pred_boxes", "pred_masks"], outputs, (1e-4, 1e-4, 1e-3)):
    assert out.shape == data[name].shape, name
    assert np.abs(out - data[name]).max() <= atol, (name, np.abs(out - data[name]).max())
print("ok")
"""

AOTI_ALONE = """
import sys, numpy as np, torch
torch.ops.load_library(sys.argv[3])  # the op library only, no dimaskdino Python code
data = np.load(sys.argv[2])
runner = torch._inductor.aoti_load_package(sys.argv[1])
outputs = runner(torch.from_numpy(data["images"]))
assert not any(m.startswith("dimaskdino") for m in sys.modules)
for name, out, atol in zip(["pred_logits", "pred_boxes", "pred_masks"], outputs, (1e-4, 1e-4, 1e-3)):
    assert np.abs(out.numpy() - data[name]).max() <= atol, (name, np.abs(out.numpy() - data[name]).max())
print("ok")
"""


def _save_case(model, path):
    images = raw_input(5, 1, 96, 128)
    with torch.no_grad():
        logits, boxes, masks = InferenceNetwork(model)(images)
    np.savez(path, images=images.numpy(), pred_logits=logits.numpy(), pred_boxes=boxes.numpy(),
             pred_masks=masks.numpy())


def test_exported_file_runs_without_dimaskdino(exported, model, tmp_path):
    fmt, folder = exported
    if fmt == "torch_export":
        pytest.skip("a torch.export program keeps the custom op's Python registration (fake kernel)")
    case = tmp_path / "case.npz"
    _save_case(model, case)
    _, path = read_sidecar(str(folder))
    if fmt == "onnx":
        assert _run_isolated(ONNX_ALONE, path, str(case)).strip() == "ok"
    else:
        library = sys.modules["dimaskdino.layers.ms_deform_attn"]._C.__file__  # the compiled op library
        assert _run_isolated(AOTI_ALONE, path, str(case), library).strip() == "ok"


def test_onnx_graph_uses_standard_ops_only(exported):
    fmt, folder = exported
    if fmt != "onnx":
        pytest.skip("ONNX only")
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    op_types = {node.op_type for node in graph.node}
    domains = {node.domain for node in graph.node}
    assert "GridSample" in op_types
    assert domains <= {"", "ai.onnx"}, f"non-standard domains {domains - {'', 'ai.onnx'}}"


# --------------------------------------------------------------------------------------------------
# errors and the command line


def test_missing_sidecar_is_named(exported, tmp_path):
    fmt, folder = exported
    _, path = read_sidecar(str(folder))
    lone = tmp_path / os.path.basename(path)
    lone.write_bytes(Path(path).read_bytes())
    with pytest.raises(FileNotFoundError, match="sidecar export.json"):
        ExportedPredictor(str(lone))


def test_bad_images_are_refused(exported_predictor):
    predictor = exported_predictor
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*got shape \(64, 64, 4\)"):
        predictor(np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*got shape \(64, 64\)"):
        predictor(np.zeros((64, 64), np.uint8))
    with pytest.raises(TypeError, match="uint8.*float32"):
        predictor(np.zeros((64, 64, 3), np.float32))


def test_unexportable_models_are_refused(model, tmp_path):
    predictor = eager_predictor(model)
    model.size_divisibility = 0
    try:
        with pytest.raises(ValueError, match="SIZE_DIVISIBILITY resolves to 0"):
            export_model(predictor, "torch_export", str(tmp_path), dynamic=True)
    finally:
        model.size_divisibility = 32
    with pytest.raises(ValueError, match="only the DIMaskDINO meta-architecture"):
        InferenceNetwork(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="multiples of the size divisibility 32"):
        export_model(predictor, "torch_export", str(tmp_path), image_size=(100, 128))
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(predictor, "tflite", str(tmp_path), dynamic=True)


def test_export_tool_static_size(model, tmp_path):
    """tools/export_model.py from the yaml config and a checkpoint: a static 96x128 torch.export file whose
    predictor pads smaller images to that size and refuses larger ones."""
    from detectron2.checkpoint import DetectionCheckpointer

    tool = load_script("tools/export_model.py")

    DetectionCheckpointer(model, str(tmp_path)).save("seeded")
    out = tmp_path / "out"
    tool.main(["--config-file", str(EMBEDDED), "--format", "torch_export", "--output", str(out),
               "--image-size", "96", "128", "MODEL.WEIGHTS", str(tmp_path / "seeded.pth"),
               "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"])
    sidecar, path = read_sidecar(str(out))
    assert sidecar.dynamic is False and tuple(sidecar.image_size) == (96, 128)
    assert sidecar.class_names == ["circle", "square", "triangle", "star"]
    assert "DIMaskDINO" in sidecar.config or "MaskDINO" in sidecar.config
    predictor = ExportedPredictor(str(out))
    image = smooth_image(3, 96, 128)
    eager = Predictor(model, T.ResizeShortestEdge([96, 96], 128), "RGB", Metadata(name="test"))
    assert_same_instances(predictor(image)["instances"], eager(image)["instances"])
    with pytest.raises(ValueError, match="larger than the static exported input size"):
        predictor.predict_tensor(torch.zeros(3, 128, 128, dtype=torch.uint8), (128, 128))


def test_demo_draws_with_an_exported_model(exported, tmp_path):
    import cv2

    demo = load_script("demo/demo.py")

    image = smooth_image(7, 100, 120)
    cv2.imwrite(str(tmp_path / "in.png"), image[:, :, ::-1])
    demo.main(["--exported", str(exported[1]), "--input", str(tmp_path / "in.png"), "--output", str(tmp_path / "out"),
               "--confidence-threshold", "0"])
    drawing = cv2.imread(str(tmp_path / "out" / "in.png"))
    assert drawing is not None and drawing.shape == (100, 120, 3)
    assert not np.array_equal(drawing[:, :, ::-1], image)  # the predictions are drawn on it


# --------------------------------------------------------------------------------------------------
# the pieces that make the model traceable


def test_level_shapes_come_back_as_python_sizes():
    from dimaskdino.layers.level_shapes import level_shapes, spatial_shapes_tensor

    shapes = spatial_shapes_tensor([(16, 20), (8, 10)], "cpu")
    assert shapes.dtype == torch.int64 and shapes.tolist() == [[16, 20], [8, 10]]
    assert level_shapes(shapes) == [(16, 20), (8, 10)]
    assert level_shapes(torch.tensor([[3, 4]])) == [(3, 4)]  # any other tensor is read
    assert level_shapes([(5, 6)]) == [(5, 6)]


@pytest.mark.skipif(not dimaskdino_layers.ms_deform_attn_backends()["cpu"], reason="needs the compiled CPU op")
def test_reference_switch_runs_grid_sample_inside_only():
    from dimaskdino.layers import ms_deform_attn, ms_deform_attn_reference, reference_ms_deform_attn

    op_module = sys.modules["dimaskdino.layers.ms_deform_attn"]
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[4, 5], [2, 3]])
    args = (torch.rand(1, 26, 2, 4, generator=g), shapes, torch.tensor([0, 20]),
            torch.rand(1, 3, 2, 2, 2, 2, generator=g), torch.rand(1, 3, 2, 2, 2, generator=g))
    calls = []
    original = op_module.ms_deform_attn_reference

    def recording(*a):
        calls.append(1)
        return original(*a)

    op_module.ms_deform_attn_reference = recording
    try:
        with reference_ms_deform_attn():
            inside = ms_deform_attn(*args)
        assert len(calls) == 1
        outside = ms_deform_attn(*args)
        assert len(calls) == 1  # the compiled op again
        with pytest.raises(RuntimeError):
            with reference_ms_deform_attn():
                raise RuntimeError("left the context")
        ms_deform_attn(*args)
        assert len(calls) == 1
    finally:
        op_module.ms_deform_attn_reference = original
    assert torch.equal(inside, ms_deform_attn_reference(*args))
    assert torch.allclose(inside, outside, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not dimaskdino_layers.ms_deform_attn_backends()["cuda"],
                    reason="needs a GPU and dimaskdino._C built with FORCE_CUDA=1")
def test_aoti_cuda_package_equals_eager_on_the_gpu(tmp_path):
    model = seeded_model().cuda()
    export_model(eager_predictor(model), "aoti", str(tmp_path), dynamic=True)
    predictor = ExportedPredictor(str(tmp_path))
    assert predictor.sidecar.device.startswith("cuda")
    images = raw_input(0, 1, 96, 128).cuda()
    with torch.no_grad():
        expected = InferenceNetwork(model)(images)
    for e, g, atol in zip(expected, predictor.run(images), (1e-4, 1e-4, 1e-3)):
        assert torch.allclose(g, e, atol=atol, rtol=0)


def test_a_tracing_failure_names_the_model_code():
    from dimaskdino.export.formats import trace

    class BadAttention(torch.nn.Module):
        def forward(self, x):  # value must be 4-D: ms_deform_attn refuses (B, S, C)
            shapes = torch.tensor([[2, 2]])
            return dimaskdino_layers.ms_deform_attn(x, shapes, torch.tensor([0]), torch.rand(1, 1, 1, 1, 1, 2),
                                                    torch.rand(1, 1, 1, 1, 1))

    with pytest.raises(RuntimeError, match=r"could not trace dimaskdino/layers/ms_deform_attn\.py:\d+ .*"
                                           r"value must be \(B, S, H, D\)"):
        trace(BadAttention(), torch.rand(1, 4, 8), None)
