"""Box conversions, IoU, and the sigmoid-space helpers used by iterative box refinement.

Boxes are ``cxcywh`` (centre x, centre y, width, height) or ``xyxy`` (x0, y0, x1, y1); the model
predicts ``cxcywh`` normalised to [0, 1] by the padded image size.
"""
import torch

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "inverse_sigmoid",
    "masks_to_boxes",
    "masks_to_boxes_exclusive",
]


def box_cxcywh_to_xyxy(boxes):
    """boxes: (..., 4) cxcywh -> (..., 4) xyxy"""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes):
    """boxes: (..., 4) xyxy -> (..., 4) cxcywh"""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes):
    """boxes: (N, 4) xyxy -> (N,)"""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    """Pairwise IoU and union of two sets of xyxy boxes.

    Args:
        boxes1: (N, 4), boxes2: (M, 4)
    Returns:
        iou: (N, M), computed as intersection / (union + 1e-6); union: (N, M)
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    intersection = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - intersection
    return intersection / (union + 1e-6), union


def generalized_box_iou(boxes1, boxes2):
    """Pairwise generalized IoU of xyxy boxes, (N, 4) x (M, 4) -> (N, M).

    The enclosing area gets a 1e-6 guard, as in the authors' code. Degenerate boxes (x1 < x0 or
    y1 < y0) raise a ValueError naming the argument.
    """
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not (boxes[:, 2:] >= boxes[:, :2]).all():
            raise ValueError(f"generalized_box_iou: {name} has boxes with x1 < x0 or y1 < y0")
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / (enclosing + 1e-6)


def inverse_sigmoid(x, eps: float = 1e-5):
    """log(x / (1 - x)) with x clamped to [0, 1] and both x and 1 - x clamped below at ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _mask_extent(masks):
    """Smallest and largest x and y pixel index of each mask.

    Args:
        masks: (N, H, W) bool
    Returns:
        x_min, y_min, x_max, y_max: (N,) float32; an empty mask gives x_min = y_min = 1e8 and
        x_max = y_max = 0.
    """
    n, h, w = masks.shape
    columns = masks.any(dim=1)  # (N, W)
    rows = masks.any(dim=2)  # (N, H)
    xs = torch.arange(w, dtype=torch.float32, device=masks.device).expand(n, w)
    ys = torch.arange(h, dtype=torch.float32, device=masks.device).expand(n, h)
    zero = xs.new_zeros(())
    far = xs.new_full((), 1e8)
    x_max = torch.where(columns, xs, zero).amax(dim=1)
    x_min = torch.where(columns, xs, far).amin(dim=1)
    y_max = torch.where(rows, ys, zero).amax(dim=1)
    y_min = torch.where(rows, ys, far).amin(dim=1)
    return x_min, y_min, x_max, y_max


def masks_to_boxes(masks):
    """Tight xyxy boxes of binary masks from pixel indices (max index, no +1): the 'mask2box' rule.

    Args:
        masks: (N, H, W) bool
    Returns:
        (N, 4) float32 xyxy; an empty mask gives (1e8, 1e8, 0, 0).
    """
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), dtype=torch.float32, device=masks.device)
    return torch.stack(_mask_extent(masks), dim=1)


def masks_to_boxes_exclusive(masks):
    """xyxy boxes of binary masks with exclusive max (max index + 1), as detectron2's
    ``BitMasks.get_bounding_boxes``: the 'bitmask' rule. An empty mask gives (0, 0, 0, 0).

    Args:
        masks: (N, H, W) bool
    Returns:
        (N, 4) float32
    """
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), dtype=torch.float32, device=masks.device)
    x_min, y_min, x_max, y_max = _mask_extent(masks)
    boxes = torch.stack([x_min, y_min, x_max + 1, y_max + 1], dim=1)
    empty = ~masks.flatten(1).any(dim=1)
    return boxes.masked_fill(empty[:, None], 0.0)
