"""Same weights, same image: our model against outputs of the authors' implementation.

``data/authors_tiny_fixture.npz`` was written by ``data/make_authors_fixture.py`` from the authors' code
(commit 6a321a5, their PyTorch deformable-attention path, CPU) for a small configuration with the
seeded weights of ``data/fixture_inputs.py``. With the same PyTorch deformable attention (our
grid_sample reference) the outputs agree to float32 rounding; with the compiled op to ~1e-5.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances

import dimaskdino.layers  # noqa: F401

from test_model import config

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "authors_tiny_fixture.npz"
sys.path.insert(0, str(DATA))
import fixture_inputs  # noqa: E402

pytestmark = pytest.mark.skipif(not FIXTURE.exists(), reason="authors' fixture not generated")


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURE) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture
def reference_op(monkeypatch):
    """Our grid_sample reference in place of the compiled kernel (the authors' fallback is the same
    computation)."""
    module = sys.modules["dimaskdino.layers.ms_deform_attn"]
    monkeypatch.setattr(module, "ms_deform_attn", module.ms_deform_attn_reference)


def seeded_model():
    model = build_model(config("dimaskdino_r50_4scale_bs16_12ep.yaml", *fixture_inputs.TINY_OPTS))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(fixture_inputs.seeded_weights(shapes))
    return model


def eval_outputs(model):
    image = fixture_inputs.fixture_image()
    x = {"image": image, "height": fixture_inputs.OUTPUT_SIZE[0], "width": fixture_inputs.OUTPUT_SIZE[1]}
    model.eval()
    with torch.no_grad():
        images = ImageList.from_tensors(model.normalized_images([x]), model.size_divisibility)
        outputs, _ = model.sem_seg_head(model.backbone(images.tensor))
        instances = model([x])[0]["instances"]
    return outputs, instances


def training_outputs(model):
    model.train()
    boxes, classes, masks = fixture_inputs.fixture_targets()
    gt = Instances(fixture_inputs.IMAGE_SIZE, gt_boxes=Boxes(boxes), gt_classes=classes, gt_masks=masks)
    images = ImageList.from_tensors(model.normalized_images([{"image": fixture_inputs.fixture_image()}]),
                                    model.size_divisibility)
    targets = model.prepare_targets([gt], images)
    features = model.backbone(images.tensor)
    torch.manual_seed(fixture_inputs.DN_SEED)
    return model.sem_seg_head(features, targets=targets)


def assert_instances_match(instances, expected, score_atol, box_atol, mask_mismatch):
    assert torch.equal(instances.pred_classes, expected["inst_classes"])
    assert torch.allclose(instances.scores, expected["inst_scores"], atol=score_atol, rtol=0)
    assert torch.allclose(instances.pred_boxes.tensor, expected["inst_boxes"], atol=box_atol, rtol=0)
    masks = np.unpackbits(expected["inst_masks"].numpy(), axis=-1)[..., : fixture_inputs.OUTPUT_SIZE[1]]
    mismatch = (instances.pred_masks.bool().numpy() != masks.astype(bool)).mean()
    assert mismatch <= mask_mismatch


def test_inference_matches_the_authors(expected, reference_op):
    outputs, instances = eval_outputs(seeded_model())
    for key, atol in (("pred_logits", 1e-5), ("pred_boxes", 1e-6), ("pred_masks", 1e-4)):
        assert torch.allclose(outputs[key][0], expected[f"eval_{key}"], atol=atol, rtol=0), key
    assert instances.image_size == fixture_inputs.OUTPUT_SIZE
    assert_instances_match(instances, expected, score_atol=1e-6, box_atol=1e-4, mask_mismatch=0.0)


def test_training_outputs_match_the_authors(expected, reference_op):
    outputs, dn_meta = training_outputs(seeded_model())

    def check(got, name, atol=1e-5):
        assert torch.allclose(got[0], expected[name], atol=atol, rtol=0), name

    for key in ("pred_logits", "pred_boxes"):
        check(outputs[key], f"train_{key}")
        check(outputs["interm_outputs"][key], f"train_interm_{key}")
        check(dn_meta["outputs"][key], f"train_dn_{key}")
        for i, aux in enumerate(outputs["aux_outputs"]):
            check(aux[key], f"train_aux{i}_{key}")
        for i, ti in enumerate(outputs["ti_outputs"]):
            check(ti[key], f"train_ti{i}_{key}")
    check(outputs["pred_masks"], "train_pred_masks", atol=1e-4)
    check(dn_meta["outputs"]["pred_masks"], "train_dn_pred_masks", atol=1e-4)
    assert len(outputs["aux_outputs"]) == 3 and len(outputs["ti_outputs"]) == 2
    assert dn_meta["pad_size"] == expected["train_dn_pad_size"].item()
    assert dn_meta["num_groups"] == expected["train_dn_num_groups"].item()


def test_inference_with_the_compiled_op_is_within_float_tolerance(expected):
    outputs, instances = eval_outputs(seeded_model())
    assert torch.allclose(outputs["pred_logits"][0], expected["eval_pred_logits"], atol=1e-3, rtol=0)
    assert torch.allclose(outputs["pred_boxes"][0], expected["eval_pred_boxes"], atol=1e-4, rtol=0)
    assert_instances_match(instances, expected, score_atol=1e-4, box_atol=0.05, mask_mismatch=1e-3)
