"""A tiny DI-MaskDINO overfits two synthetic images: the training loss falls at least tenfold and
inference then finds exactly the painted objects, with their classes, boxes and masks."""
from pathlib import Path

import torch
from detectron2.structures import pairwise_iou

from dimaskdino.engine import build_optimizer_from_cfg
from tiny_training import TWO_IMAGES, one_thread, painted_image, tiny_cfg, tiny_model  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 100


def _mask_iou(a, b):
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def test_tiny_model_overfits_two_images(one_thread):
    cfg = tiny_cfg(REPO)
    # GroupNorm instead of BatchNorm: the same normalisation in training and inference, so the
    # check below does not depend on how far BatchNorm's running statistics lag the weights.
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    model = tiny_model(cfg)
    optimizer = build_optimizer_from_cfg(cfg, model)
    batch = [painted_image(objects) for objects in TWO_IMAGES]

    history = []
    for _ in range(ITERATIONS):
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    first, last = history[0], sum(history[-5:]) / 5
    assert last * 10 <= first, f"loss fell only from {first:.2f} to {last:.2f}"

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": x["image"]} for x in batch])
    for inputs, output in zip(batch, outputs):
        gt = inputs["instances"]
        predicted = output["instances"]
        confident = predicted[predicted.scores > 0.5]
        assert sorted(confident.pred_classes.tolist()) == sorted(gt.gt_classes.tolist())
        box_iou = pairwise_iou(gt.gt_boxes, confident.pred_boxes)
        for i, label in enumerate(gt.gt_classes.tolist()):
            j = int(box_iou[i].argmax())
            assert confident.pred_classes[j].item() == label
            assert box_iou[i, j] > 0.8
            assert _mask_iou(gt.gt_masks.tensor[i], confident.pred_masks[j] > 0.5) > 0.8
