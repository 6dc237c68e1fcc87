"""Instance inference: from per-query predictions of one image to detectron2 ``Instances``.

Stages without masks (the DI module's token-interaction layers) keep the same top-k and boxes,
scored by class score alone (:func:`box_instance_inference`).

The top-k (query, class) pairs by sigmoid class score are kept. Their mask logits are upsampled
(bilinear) to the padded input size, cropped to the image, resized to the requested output size; a
mask is its pixels with logit > 0, and the final score is the class score times the mean mask
probability inside the mask. Boxes (cxcywh relative to the padded image) are scaled by the padded size
times output size / image size.
"""
from typing import Tuple

import torch
from torch.nn import functional as F

from detectron2.structures import Boxes, Instances

from ..layers.box_ops import box_cxcywh_to_xyxy
from .outputs import StagePrediction

__all__ = [
    "box_instance_inference",
    "instance_inference",
    "postprocess_prediction",
    "scale_boxes",
    "top_query_class_pairs",
]


def scale_boxes(boxes, padded_size: Tuple[int, int], image_size: Tuple[int, int], output_size: Tuple[int, int]):
    """Normalised cxcywh boxes (relative to the padded input) -> absolute xyxy in the output image.

    Args:
        boxes: (N, 4); padded_size, image_size, output_size: (height, width)
    """
    out_h = padded_size[0] / image_size[0] * output_size[0]
    out_w = padded_size[1] / image_size[1] * output_size[1]
    scale = torch.tensor([out_w, out_h, out_w, out_h]).to(boxes)
    return box_cxcywh_to_xyxy(boxes) * scale


def _resize_masks(mask_logits, padded_size, image_size, output_size):
    """(N, h, w) mask logits at 1/4 of the padded input -> (N, H_out, W_out)."""
    masks = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    masks = masks[:, :, : image_size[0], : image_size[1]]
    if tuple(output_size) == tuple(image_size):  # resizing to the same size copies exactly: skip it
        return masks[0]
    return F.interpolate(masks, size=output_size, mode="bilinear", align_corners=False)[0]


def top_query_class_pairs(logits, max_detections: int):
    """The top-k (query, class) pairs by sigmoid class score (unsorted).

    Args:
        logits: (Q, K) class logits
    Returns:
        scores: (k,), query_index: (k,), classes: (k,) with k = min(max_detections, Q * K)
    """
    num_classes = logits.shape[1]
    scores = logits.sigmoid().flatten()
    top_scores, top_index = scores.topk(min(max_detections, scores.numel()), sorted=False)
    return top_scores, torch.div(top_index, num_classes, rounding_mode="floor"), top_index % num_classes


def _pair_instances(scores, query_index, classes, boxes, padded_size, image_size, output_size) -> Instances:
    """Instances of the kept (query, class) pairs: scores, classes and their queries' scaled boxes."""
    result = Instances(tuple(output_size))
    result.pred_boxes = Boxes(scale_boxes(boxes[query_index], padded_size, image_size, output_size))
    result.scores = scores
    result.pred_classes = classes
    return result


def instance_inference(
    logits,
    mask_logits,
    boxes,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    max_detections: int = 100,
    score_from_box_only: bool = False,
) -> Instances:
    """
    Args:
        logits: (Q, K) class logits; mask_logits: (Q, h, w) at 1/4 of the padded input;
        boxes: (Q, 4) sigmoid cxcywh relative to the padded input
        padded_size: (H_pad, W_pad) of the network input; image_size: (H_img, W_img) before padding
        output_size: (height, width) of the returned instances
        max_detections: k of the top-k over (query, class) pairs
        score_from_box_only: score = class score alone (``dimaskdino.config.score_from_box_only``)
    Returns:
        Instances of size ``output_size`` with pred_masks (N, height, width) float 0/1, pred_boxes
        (xyxy), scores and pred_classes, N = min(max_detections, Q * K), in top-k order.
    """
    top_scores, query_index, classes = top_query_class_pairs(logits, max_detections)
    # only the masks of the kept queries are resized; a query may be kept with several classes
    kept, inverse = torch.unique(query_index, return_inverse=True)
    masks = _resize_masks(mask_logits[kept], padded_size, image_size, output_size)
    binary = (masks > 0).float()
    mask_scores = (masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)

    scores = top_scores if score_from_box_only else top_scores * mask_scores[inverse]
    result = _pair_instances(scores, query_index, classes, boxes, padded_size, image_size, output_size)
    result.pred_masks = binary[inverse]
    return result


def box_instance_inference(
    logits,
    boxes,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    max_detections: int = 100,
) -> Instances:
    """Instances of a stage without masks: the top-k (query, class) pairs by sigmoid class score, as
    :func:`instance_inference` with ``score_from_box_only``.

    Args:
        logits: (Q, K) class logits; boxes: (Q, 4) sigmoid cxcywh relative to the padded input
        padded_size, image_size, output_size: (height, width), see :func:`instance_inference`
    Returns:
        Instances of size ``output_size`` with pred_boxes (xyxy), scores and pred_classes
    """
    top_scores, query_index, classes = top_query_class_pairs(logits, max_detections)
    return _pair_instances(top_scores, query_index, classes, boxes, padded_size, image_size, output_size)


def postprocess_prediction(
    prediction: StagePrediction,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    max_detections: int = 100,
    score_from_box_only: bool = False,
) -> Instances:
    """Instances of one image from one stage's raw predictions (logits (Q, K), boxes (Q, 4), masks
    (Q, h, w) or None): :func:`instance_inference`, or :func:`box_instance_inference` without masks.
    ``DIMaskDINO.inference`` post-processes every stage with it; so can an exported model's caller."""
    if prediction.masks is None:
        return box_instance_inference(prediction.logits, prediction.boxes, padded_size, image_size, output_size,
                                      max_detections)
    return instance_inference(prediction.logits, prediction.masks, prediction.boxes, padded_size, image_size,
                              output_size, max_detections, score_from_box_only)
