"""Write ``authors_tiny_fixture.npz``: outputs of the authors' DI-MaskDINO for ``test_exactness.py``.

Runs the authors' implementation (github.com/CQU-ADHRI-Lab/DI-MaskDINO at commit 6a321a5, not part of
this project) on the CPU with the seeded weights, image and targets of ``fixture_inputs.py``:

    python tests/data/make_authors_fixture.py --authors-repo /path/to/DI-MaskDINO

Their compiled deformable-attention op is replaced by their own PyTorch fallback when it is not
built, and their hard-coded CUDA device moves are redirected to the CPU. This file imports the
authors' ``dimaskdino`` package, never ours (both register the same detectron2 names); our
``checkpoint.py`` is loaded by path for the key names.
"""
import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _cpu_only():
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        return original_to(self, *args, **kwargs)

    torch.Tensor.to = to


def _pytorch_deformable_attention():
    try:
        import MultiScaleDeformableAttention  # noqa: F401
        return
    except ImportError:
        pass
    module = types.ModuleType("MultiScaleDeformableAttention")

    def unavailable(*args, **kwargs):
        raise RuntimeError("not built: the authors' module falls back to its PyTorch implementation")

    module.ms_deform_attn_forward = module.ms_deform_attn_backward = unavailable
    sys.modules["MultiScaleDeformableAttention"] = module


def _load_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-repo", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=HERE / "authors_tiny_fixture.npz")
    args = parser.parse_args()

    _cpu_only()
    _pytorch_deformable_attention()
    inputs = _load_by_path("fixture_inputs", HERE / "fixture_inputs.py")
    ours = _load_by_path("our_checkpoint", REPO / "dimaskdino" / "checkpoint.py")
    sys.path.insert(0, str(args.authors_repo))
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.projects.deeplab import add_deeplab_config
    from detectron2.structures import Boxes, ImageList, Instances
    from dimaskdino import add_dimaskdino_config  # the authors' package

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_dimaskdino_config(cfg)
    cfg.merge_from_file(str(args.authors_repo / "configs" / "dimaskdino_r50_4scale_bs16_12ep.yaml"))
    cfg.merge_from_list(inputs.TINY_OPTS)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)

    state = model.state_dict()
    our_name = {k: next(iter(ours.convert_authors_state_dict({k: v})), None) for k, v in state.items()}
    weights = inputs.seeded_weights({n: tuple(state[k].shape) for k, n in our_name.items() if n is not None})
    model.load_state_dict({k: weights[n] if n is not None else state[k] for k, n in our_name.items()})

    result = {}
    image = inputs.fixture_image()
    x = {"image": image, "height": inputs.OUTPUT_SIZE[0], "width": inputs.OUTPUT_SIZE[1]}
    model.eval()
    with torch.no_grad():
        images = ImageList.from_tensors([(image - model.pixel_mean) / model.pixel_std], model.size_divisibility)
        outputs, _ = model.sem_seg_head(model.backbone(images.tensor))
        instances = model([x])[0]["instances"]
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        result[f"eval_{key}"] = outputs[key][0]
    result["inst_scores"] = instances.scores
    result["inst_classes"] = instances.pred_classes
    result["inst_boxes"] = instances.pred_boxes.tensor
    result["inst_masks"] = torch.from_numpy(np.packbits(instances.pred_masks.bool().numpy(), axis=-1))

    model.train()
    boxes, classes, masks = inputs.fixture_targets()
    gt = Instances(inputs.IMAGE_SIZE, gt_boxes=Boxes(boxes), gt_classes=classes, gt_masks=masks)
    images = ImageList.from_tensors([(image - model.pixel_mean) / model.pixel_std], model.size_divisibility)
    targets = model.prepare_targets([gt], images)
    features = model.backbone(images.tensor)
    torch.manual_seed(inputs.DN_SEED)
    outputs, dn = model.sem_seg_head(features, targets=targets)
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        result[f"train_{key}"] = outputs[key][0]
    for i, aux in enumerate(outputs["aux_outputs"]):
        result[f"train_aux{i}_pred_logits"] = aux["pred_logits"][0]
        result[f"train_aux{i}_pred_boxes"] = aux["pred_boxes"][0]
    for key in ("pred_logits", "pred_boxes"):
        result[f"train_interm_{key}"] = outputs["interm_outputs"][key][0]
    for i, ti in enumerate(outputs["oldm_outputs"]):
        result[f"train_ti{i}_pred_logits"] = ti["pred_logits"][0]
        result[f"train_ti{i}_pred_boxes"] = ti["pred_boxes"][0]
    known = dn["output_known_lbs_bboxes"]
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        result[f"train_dn_{key}"] = known[key][0]
    result["train_dn_pad_size"] = torch.tensor(dn["pad_size"])
    result["train_dn_num_groups"] = torch.tensor(dn["scalar"])

    np.savez_compressed(args.out, **{k: v.detach().numpy() for k, v in result.items()})
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
