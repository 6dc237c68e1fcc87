"""Box helpers against hand-computed values and detectron2's own implementations."""
import math

import pytest
import torch

from detectron2.structures import BitMasks, Boxes, pairwise_iou

from dimaskdino.layers.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
    masks_to_boxes,
    masks_to_boxes_exclusive,
)


def test_conversions_by_hand():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [10.0, 20.0, 4.0, 6.0]])
    xyxy = torch.tensor([[0.4, 0.3, 0.6, 0.7], [8.0, 17.0, 12.0, 23.0]])
    assert torch.allclose(box_cxcywh_to_xyxy(cxcywh), xyxy)
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), cxcywh)
    # leading dimensions are kept
    assert box_cxcywh_to_xyxy(cxcywh[None].expand(3, 2, 4)).shape == (3, 2, 4)


def test_iou_by_hand_and_against_detectron2():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 5.0, 5.0]])
    iou, union = box_iou(a, b)
    assert iou[0, 0].item() == pytest.approx(1 / 7, abs=1e-6)
    assert union[0].tolist() == [7.0, 5.0]
    assert iou[0, 1].item() == 0.0
    torch.manual_seed(0)
    x0y0 = torch.rand(6, 2) * 50
    boxes1 = torch.cat([x0y0, x0y0 + torch.rand(6, 2) * 30 + 1], 1)
    x0y0 = torch.rand(5, 2) * 50
    boxes2 = torch.cat([x0y0, x0y0 + torch.rand(5, 2) * 30 + 1], 1)
    assert torch.allclose(box_iou(boxes1, boxes2)[0], pairwise_iou(Boxes(boxes1), Boxes(boxes2)), atol=1e-6)


def test_generalized_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    giou = generalized_box_iou(a, b)
    # overlap: iou 1/7, enclosing box 3x3 = 9, union 7 -> 1/7 - 2/9
    assert giou[0, 0].item() == pytest.approx(1 / 7 - 2 / 9, abs=1e-6)
    # disjoint: iou 0, enclosing 6x2 = 12, union 8 -> -4/12
    assert giou[0, 1].item() == pytest.approx(-1 / 3, abs=1e-6)
    assert generalized_box_iou(a, a)[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_generalized_iou_rejects_degenerate_boxes():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="boxes2"):
        generalized_box_iou(good, bad)


def test_inverse_sigmoid_clamps_at_eps():
    x = torch.tensor([0.5, 0.25, 0.0, 1.0, -3.0, 7.0])
    y = inverse_sigmoid(x)
    assert y[0].item() == 0.0
    assert y[1].item() == pytest.approx(math.log(0.25 / 0.75), abs=1e-6)
    assert y[2].item() == pytest.approx(math.log(1e-5), rel=1e-5)
    assert y[3].item() == pytest.approx(-math.log(1e-5), rel=1e-5)
    assert y[4].item() == y[2].item() and y[5].item() == y[3].item()
    z = torch.rand(100) * 0.98 + 0.01
    assert torch.allclose(inverse_sigmoid(z).sigmoid(), z, atol=1e-6)


def test_masks_to_boxes_by_hand():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True  # rows 1..3, columns 2..6
    masks[1, 5, 0] = True  # a single pixel
    boxes = masks_to_boxes(masks)
    assert boxes[0].tolist() == [2.0, 1.0, 6.0, 3.0]  # max index, no +1
    assert boxes[1].tolist() == [0.0, 5.0, 0.0, 5.0]
    assert boxes[2].tolist() == [1e8, 1e8, 0.0, 0.0]  # empty mask
    assert masks_to_boxes(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


def test_exclusive_boxes_match_detectron2_bitmasks():
    torch.manual_seed(1)
    masks = torch.rand(7, 13, 17) > 0.93
    masks[3] = False
    expected = BitMasks(masks).get_bounding_boxes().tensor
    assert torch.equal(masks_to_boxes_exclusive(masks), expected)
