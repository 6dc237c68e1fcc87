"""Hungarian matching between queries and ground-truth instances.

The matching cost of query q and instance n is a weighted sum of

* a focal classification cost: the focal loss of predicting class ``labels[n]`` as positive minus
  the focal loss of predicting it as negative (alpha 0.25, gamma 2, as the authors),
* the L1 distance of the normalised (cx, cy, w, h) boxes,
* the negative generalized IoU of the boxes,
* the binary cross-entropy and the dice loss of the mask logits against the ground-truth mask,
  both measured on one set of uniformly random points shared by all masks of the image.

The optimal one-to-one assignment per image comes from ``scipy.optimize.linear_sum_assignment``.
The costs are computed for the whole batch at once (every query against every instance of the
batch, a few small tensors); only the assignment itself loops over the images.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from .outputs import StagePrediction

__all__ = [
    "HungarianMatcher",
    "COST_TYPES",
    "focal_class_cost",
    "mask_bce_cost",
    "mask_dice_cost",
]

#: Cost groups a caller can switch on: "class" (focal), "box" (L1 + GIoU), "mask" (BCE + dice).
COST_TYPES = ("class", "box", "mask")


def focal_class_cost(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal-loss matching cost of predicting each target's class.

    Args:
        logits: (..., Q, K) class logits.
        labels: (N,) int64 target classes in [0, K).
    Returns:
        (..., Q, N) cost; lower means query q is a better fit for target n.
    """
    prob = logits.sigmoid()
    eps = 1e-8
    cost_if_negative = (1 - alpha) * prob.pow(gamma) * -(1 - prob + eps).log()
    cost_if_positive = alpha * (1 - prob).pow(gamma) * -(prob + eps).log()
    return cost_if_positive[..., labels] - cost_if_negative[..., labels]


def mask_bce_cost(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every predicted mask against every target mask.

    Args:
        point_logits: (..., Q, P) mask logits at P points.
        point_labels: (N, P) target mask values in [0, 1] at the same points.
    Returns:
        (..., Q, N) cost.
    """
    num_points = point_logits.shape[-1]
    # BCE(x, t) = softplus(x) - x * t, so the sum over points is one reduction and one matmul.
    cost = F.softplus(point_logits).sum(-1, keepdim=True) - point_logits @ point_labels.T
    return cost / num_points


def mask_dice_cost(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """Dice loss (with +1 smoothing) of every predicted mask against every target mask:
    (..., Q, P) logits and (N, P) target values at the same points -> (..., Q, N), as
    :func:`mask_bce_cost`."""
    prob = point_logits.sigmoid()
    intersection = 2 * prob @ point_labels.T
    total = prob.sum(-1, keepdim=True) + point_labels.sum(-1)
    return 1 - (intersection + 1) / (total + 1)


def _empty_match(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return empty, empty.clone()


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth instances, image by image.

    Args:
        cost_class, cost_box, cost_giou, cost_mask, cost_dice: weights of the cost terms
            (the authors' ``MODEL.MaskDINO.COST_*_WEIGHT`` keys).
        num_points: P, number of random points on which the mask costs are measured.
        focal_alpha, focal_gamma: focal-loss parameters of the class cost.
    """

    def __init__(
        self,
        *,
        cost_class: float = 4.0,
        cost_box: float = 5.0,
        cost_giou: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_box = cost_box
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def forward(
        self,
        outputs: StagePrediction,
        targets: List[Dict[str, torch.Tensor]],
        cost_types: Sequence[str] = COST_TYPES,
        stacked_masks: Optional[torch.Tensor] = None,
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: one stage's logits (B, Q, K); boxes (B, Q, 4) sigmoid (cx, cy, w, h) when
                "box" is among cost_types; masks (B, Q, H, W) logits when "mask" is.
            targets: B dicts with "labels" (N,) int64, "boxes" (N, 4) normalised (cx, cy, w, h)
                and "masks" (N, H', W') covering the same padded image as the predicted masks.
            cost_types: which cost groups to use, a subset of ("class", "box", "mask"); the
                token-interaction outputs of the DI module are matched with ("class", "box").
            stacked_masks: optional (T, H', W') float32 masks of all targets, image after image
                (the criterion converts them once per step); else built from ``targets``.
        Returns:
            B pairs (query_indices, target_indices), int64 tensors of length min(Q, N).
        """
        unknown = set(cost_types) - set(COST_TYPES)
        if unknown or "class" not in cost_types:
            raise ValueError(
                f"HungarianMatcher: cost_types must include 'class' and be a subset of "
                f"{COST_TYPES}, got {tuple(cost_types)}"
            )
        if len(targets) != outputs.logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: {len(targets)} targets for a batch of "
                f"{outputs.logits.shape[0]} predictions"
            )
        device = outputs.logits.device
        matches = [_empty_match(device) for _ in targets]
        images = [b for b, target in enumerate(targets) if target["labels"].numel() > 0]
        if not images:
            return matches
        costs = self.batch_costs(outputs, targets, images, cost_types, stacked_masks)
        total = sum(costs.values())
        # one transfer for the whole batch; image i's own block is total[i, :, its targets]
        total_np = total.cpu().numpy()
        end = 0
        for i, b in enumerate(images):
            start, end = end, end + int(targets[b]["labels"].numel())
            block = total_np[i, :, start:end]
            if not np.isfinite(block).all():
                bad = [name for name, cost in costs.items() if not torch.isfinite(cost[i, :, start:end]).all()]
                raise FloatingPointError(
                    f"HungarianMatcher: non-finite matching cost in image {b} from the {bad} term(s); "
                    "the predictions contain NaN or inf"
                )
            query_idx, target_idx = linear_sum_assignment(block)
            matches[b] = (
                torch.as_tensor(query_idx, dtype=torch.int64, device=device),
                torch.as_tensor(target_idx, dtype=torch.int64, device=device),
            )
        return matches

    def batch_costs(
        self,
        outputs,
        targets: List[Dict[str, torch.Tensor]],
        images: Sequence[int],
        cost_types: Sequence[str],
        stacked_masks: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """The weighted (I, Q, T) cost matrices, by term name, of the queries of the I images listed
        in ``images`` against all T targets of those images (concatenated in that order). Only
        each image's block against its own targets is used; computing all pairs at once replaces a
        few dozen small operations per image by the same few for the batch."""
        index = torch.as_tensor(images, dtype=torch.int64, device=outputs.logits.device)
        chosen = [targets[b] for b in images]
        with torch.autocast(device_type=outputs.logits.device.type, enabled=False):
            logits = outputs.logits.index_select(0, index).float()
            labels = torch.cat([t["labels"] for t in chosen]).to(logits.device)
            costs = {
                "class": self.cost_class * focal_class_cost(logits, labels, self.focal_alpha, self.focal_gamma)
            }
            if "box" in cost_types:
                pred_boxes = outputs.boxes.index_select(0, index).float()
                gt_boxes = torch.cat([t["boxes"] for t in chosen]).to(pred_boxes)
                costs["box"] = self.cost_box * torch.cdist(
                    pred_boxes, gt_boxes.expand(len(images), -1, -1), p=1
                )
                giou = generalized_box_iou(
                    box_convert(pred_boxes.flatten(0, 1), "cxcywh", "xyxy"), box_convert(gt_boxes, "cxcywh", "xyxy")
                )
                costs["giou"] = -self.cost_giou * giou.view(len(images), -1, gt_boxes.shape[0])
            if "mask" in cost_types:
                point_logits, point_labels = self._sample_mask_points(
                    outputs.masks.index_select(0, index), chosen, stacked_masks
                )
                costs["mask"] = self.cost_mask * mask_bce_cost(point_logits, point_labels)
                costs["dice"] = self.cost_dice * mask_dice_cost(point_logits, point_labels)
        return costs

    def _sample_mask_points(
        self,
        pred_masks: torch.Tensor,
        targets: Sequence[Dict[str, torch.Tensor]],
        stacked_masks: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Values of all masks at P uniformly random points, one set of points per image.

        Args:
            pred_masks: (I, Q, H, W) logits of I images.
            targets: their I target dicts, "masks" (N_i, H', W') over the same padded image.
            stacked_masks: the same masks, concatenated and float (the empty images add none).
        Returns:
            (I, Q, P) logits and (T, P) target values, T = sum of N_i.
        """
        coords = self.random_point_coords(pred_masks.shape[0], pred_masks.device)
        # an image's masks are the channels of one input, so one grid (its points) serves them all
        point_logits = point_sample(pred_masks.float(), coords, align_corners=False)
        gt_masks = torch.cat([t["masks"] for t in targets]) if stacked_masks is None else stacked_masks
        gt_masks = gt_masks.to(point_logits)
        image_of_target = torch.repeat_interleave(
            torch.arange(len(targets), device=coords.device),
            torch.as_tensor([len(t["masks"]) for t in targets], device=coords.device),
        )
        point_labels = point_sample(gt_masks[:, None], coords[image_of_target], align_corners=False)[:, 0]
        return point_logits, point_labels

    def random_point_coords(self, num_images: int, device: torch.device) -> torch.Tensor:
        """(I, P, 2) uniformly random (x, y) points in [0, 1], one set per image (drawn in one call:
        the same numbers as one draw per image in turn)."""
        return torch.rand(num_images, self.num_points, 2, device=device)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_box={self.cost_box}, cost_giou={self.cost_giou}, "
            f"cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
