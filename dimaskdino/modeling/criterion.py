"""Training losses of DI-MaskDINO, their names and their weights.

Five loss terms, each a ``loss_<term>`` method of :class:`DIMaskDINOCriterion`:

===========  ======================================================  ===================
name         what                                                    weight key
===========  ======================================================  ===================
loss_ce      sigmoid focal loss of the class logits (alpha .25, g 2)  CLASS_WEIGHT
loss_bbox    L1 of matched normalised (cx, cy, w, h) boxes            BOX_WEIGHT
loss_giou    1 - generalized IoU of matched boxes                     GIOU_WEIGHT
loss_mask    binary cross-entropy of matched masks at sampled points  MASK_WEIGHT
loss_dice    dice loss of matched masks at the same points            DICE_WEIGHT
===========  ======================================================  ===================

They are applied to several stages of the model; the stage is a suffix of the loss name:

* ``""``: the final decoder layer, ``"_{i}"``: auxiliary output i (initial prediction, then
  decoder layers 0..D-2), ``"_interm"``: the two-stage encoder proposals;
  all matched with the full cost and supervised with every term (box terms if BOX_LOSS).
* ``"_dn"`` / ``"_dn_{i}"``: the denoising queries of the last / auxiliary layer i; query
  ``g * single_pad + j`` reconstructs target j, no matching. "seg" denoising uses every term,
  "standard" only class and box.
* ``"_ti{j}"``: token-interaction layer j of the De-Imbalance module, matched with class and box
  costs only and supervised with class and box terms only.

Every sum over instances is divided by the number of ground-truth instances in the batch of all
distributed workers together (at least 1) over the number of workers, so that DDP's gradient
average equals one process on the whole batch (times the number of groups for the denoising
losses). The weights live here and nowhere else; the returned dict holds the weighted
losses, and every term that is computed must have a weight.
"""
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from detectron2.config import configurable
from detectron2.utils.comm import get_world_size
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from ..config import check_supported_losses
from .denoising import DenoisingOutput
from .matcher import HungarianMatcher
from .outputs import PredictorOutput, StagePrediction

__all__ = [
    "DIMaskDINOCriterion",
    "StackedTargetMasks",
    "build_criterion",
    "LOSS_NAMES",
    "sigmoid_focal_loss",
    "dice_loss",
    "sigmoid_ce_loss",
]

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
CLASS_TERMS = ("loss_ce",)
BOX_TERMS = ("loss_bbox", "loss_giou")
MASK_TERMS = ("loss_mask", "loss_dice")

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise sigmoid focal loss (RetinaNet), same shape as ``logits``; alpha < 0 disables
    the alpha weighting."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def sigmoid_ce_loss(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy per mask. point_logits, point_labels: (M, P) -> (M,)."""
    return F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)


def dice_loss(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """Dice loss with +1 smoothing per mask. point_logits, point_labels: (M, P) -> (M,)."""
    prob = point_logits.sigmoid()
    intersection = 2 * (prob * point_labels).sum(-1)
    total = prob.sum(-1) + point_labels.sum(-1)
    return 1 - (intersection + 1) / (total + 1)


def mask_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of mask logits (M, 1, P): points closest to the decision boundary score highest."""
    return -logits.abs()


def uncertain_point_coords(
    mask_logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> torch.Tensor:
    """PointRend's importance sampling of ``num_points`` points per mask, in [0, 1]^2 (x, y).

    Draws ``num_points * oversample_ratio`` uniform candidates, keeps the
    ``importance_sample_ratio * num_points`` most uncertain of them (logit nearest 0) and adds
    uniform points for the rest: the random draws and the chosen set of detectron2's
    ``get_uncertain_point_coords_with_randomness``, but the chosen points are not sorted by
    uncertainty (the losses sum over points; an unsorted top-k is 2-3x faster on the CPU).

    Args:
        mask_logits: (M, 1, H, W)
    Returns:
        (M, num_points, 2)
    """
    num_masks, device = mask_logits.shape[0], mask_logits.device
    candidates = torch.rand(num_masks, int(num_points * oversample_ratio), 2, device=device)
    uncertainty = mask_uncertainty(point_sample(mask_logits, candidates, align_corners=False))[:, 0]
    num_uncertain = int(importance_sample_ratio * num_points)
    chosen = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices
    coords = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, 2))
    if num_points > num_uncertain:
        coords = torch.cat([coords, torch.rand(num_masks, num_points - num_uncertain, 2, device=device)], dim=1)
    return coords


class StackedTargetMasks:
    """Every target mask of the batch in one float tensor, converted once per step, and a reader of
    their values at given points.

    Each supervised stage samples its matched targets at its own points. Gathering the matched
    masks stage by stage and converting them to float (M, H', W') cost more than all the sampling;
    here each target mask is converted once and sampled in place, all pairs of a stage in one call.

    Args:
        targets: B dicts with "masks" (N_b, H', W'), all padded to the same (H', W').
    """

    def __init__(self, targets: Sequence[Mapping[str, torch.Tensor]]):
        shapes = {tuple(t["masks"].shape[-2:]) for t in targets}
        if len(shapes) > 1:
            raise ValueError(
                "criterion: targets[i]['masks'] must all be padded to the batch size, "
                f"got sizes {sorted(shapes)}"
            )
        #: (T, H', W') float32, the targets of image 0, then image 1, ...
        self.masks = torch.cat([t["masks"] for t in targets]).float()
        counts = torch.as_tensor([len(t["masks"]) for t in targets], dtype=torch.int64)
        #: (B,) index in ``masks`` of each image's first target
        self.offsets = (counts.cumsum(0) - counts).tolist()

    def global_index(self, indices: Indices) -> torch.Tensor:
        """(M,) rows of ``masks`` of the targets of B (query_indices, target_indices) pairs, in order."""
        return torch.cat([tgt.to(self.masks.device) + offset for (_, tgt), offset in zip(indices, self.offsets)])

    def values_at(self, rows: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """(M, P) bilinear values (zero outside) of mask ``rows[m]`` at its (P, 2) points ``coords[m]``
        in [0, 1]^2 (x, y); a mask may appear in several pairs (denoising groups) or none."""
        num_pairs, num_points = coords.shape[:2]
        if num_pairs == 0:
            return coords.new_zeros(0, num_points)
        # Points of the k-th pair of mask t go to slot (t, k): one grid_sample over the masks
        # themselves reads every pair, unused slots read a point that is then dropped.
        order = torch.argsort(rows, stable=True)
        sorted_rows = rows[order]
        pairs_per_mask = torch.bincount(sorted_rows, minlength=self.masks.shape[0])
        first_pair = pairs_per_mask.cumsum(0) - pairs_per_mask
        slot = torch.arange(num_pairs, device=rows.device) - first_pair[sorted_rows]
        grid = coords.new_full((self.masks.shape[0], int(pairs_per_mask.max()), num_points, 2), 0.5)
        grid[sorted_rows, slot] = coords[order]
        sampled = point_sample(self.masks[:, None], grid.flatten(1, 2), align_corners=False)
        values = torch.empty_like(coords[..., 0])
        values[order] = sampled.view(grid.shape[:3])[sorted_rows, slot]
        return values


class MatchedPairs:
    """The predictions of one stage paired with their targets, gathered once for all loss terms.

    Args:
        outputs: the stage's predictions (logits (B, Q, K), boxes (B, Q, 4), masks (B, Q, H, W)).
        targets: B dicts with "labels" (N,), "boxes" (N, 4), "masks" (N, H', W').
        indices: B pairs (query_indices, target_indices).
        sample_points: maps matched (M, H, W) mask logits and the reader of their targets'
            values at (M, P, 2) points to (M, P) point logits and labels.
        target_masks: the batch's target masks, converted once for all stages.
    """

    def __init__(
        self,
        outputs: StagePrediction,
        targets: Sequence[Mapping[str, torch.Tensor]],
        indices: Indices,
        sample_points: Callable[[torch.Tensor, Callable], Tuple[torch.Tensor, torch.Tensor]],
        target_masks: StackedTargetMasks,
    ):
        self.outputs = outputs
        self.targets = targets
        self.indices = indices
        self._sample_points = sample_points
        self._target_masks = target_masks
        self._points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        batch_idx = [torch.full_like(src, b) for b, (src, _) in enumerate(indices)]
        self.batch_idx = torch.cat(batch_idx)
        self.query_idx = torch.cat([src for src, _ in indices])
        self.num_matched = int(self.query_idx.numel())

    def _gather_targets(self, key: str) -> torch.Tensor:
        return torch.cat([t[key][tgt] for t, (_, tgt) in zip(self.targets, self.indices)])

    def class_targets(self) -> torch.Tensor:
        """(B, Q, K) one-hot classes: matched queries get their target's class, others none."""
        logits = self.outputs.logits
        onehot = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        labels = self._gather_targets("labels").to(self.query_idx.device)
        onehot[self.batch_idx, self.query_idx, labels] = 1
        return onehot

    def boxes(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(M, 4) matched predicted boxes and their (M, 4) targets, normalised (cx, cy, w, h)."""
        pred = self.outputs.boxes[self.batch_idx, self.query_idx].float()
        return pred, self._gather_targets("boxes").to(pred)

    def mask_points(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(M, P) logits of the matched masks and (M, P) target values at the sampled points."""
        if self._points is None:
            pred = self.outputs.masks[self.batch_idx, self.query_idx].float()
            rows = self._target_masks.global_index(self.indices)
            self._points = self._sample_points(pred, lambda coords: self._target_masks.values_at(rows, coords))
        return self._points


class DIMaskDINOCriterion(nn.Module):
    """Matches every supervised stage of DI-MaskDINO to the targets and returns weighted losses.

    Args:
        num_classes: K.
        matcher: assigns queries to targets (see :class:`HungarianMatcher`).
        weights: the weight of each loss term, by name (all of :data:`LOSS_NAMES` that are used).
        num_points: P, points per mask for the mask terms (TRAIN_NUM_POINTS).
        oversample_ratio, importance_sample_ratio: PointRend importance sampling of those points.
        box_loss: supervise the boxes of the final/aux/interm stages (BOX_LOSS).
        dn: denoising mode, "no", "standard" (class + box) or "seg" (class + box + mask).
        deep_supervision: supervise the auxiliary, auxiliary denoising and TI outputs.
        focal_alpha, focal_gamma: focal-loss parameters.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher,
        weights: Mapping[str, float],
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        box_loss: bool = True,
        dn: str = "seg",
        deep_supervision: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if dn not in ("no", "standard", "seg"):
            raise ValueError(f"criterion: dn must be 'no', 'standard' or 'seg', got {dn!r}")
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError(
                "criterion: need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
                f"{oversample_ratio} and {importance_sample_ratio}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.dn = dn
        self.deep_supervision = deep_supervision

        self.matched_terms = CLASS_TERMS + MASK_TERMS + (BOX_TERMS if box_loss else ())
        self.dn_terms = {"no": (), "standard": CLASS_TERMS + BOX_TERMS, "seg": LOSS_NAMES}[dn]
        self.ti_terms = CLASS_TERMS + BOX_TERMS
        self.weights = self._checked_weights(weights)

    @classmethod
    def from_config(cls, cfg):
        check_supported_losses(cfg)
        mcfg = cfg.MODEL.MaskDINO
        matcher = HungarianMatcher(
            cost_class=mcfg.COST_CLASS_WEIGHT,
            cost_box=mcfg.COST_BOX_WEIGHT,
            cost_giou=mcfg.COST_GIOU_WEIGHT,
            cost_mask=mcfg.COST_MASK_WEIGHT,
            cost_dice=mcfg.COST_DICE_WEIGHT,
            num_points=mcfg.TRAIN_NUM_POINTS,
        )
        weights = {
            "loss_ce": mcfg.CLASS_WEIGHT,
            "loss_bbox": mcfg.BOX_WEIGHT,
            "loss_giou": mcfg.GIOU_WEIGHT,
            "loss_mask": mcfg.MASK_WEIGHT,
            "loss_dice": mcfg.DICE_WEIGHT,
        }
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": matcher,
            "weights": weights,
            "num_points": mcfg.TRAIN_NUM_POINTS,
            "oversample_ratio": mcfg.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mcfg.IMPORTANCE_SAMPLE_RATIO,
            "box_loss": mcfg.BOX_LOSS,
            "dn": mcfg.DN,
            "deep_supervision": mcfg.DEEP_SUPERVISION,
        }

    def _checked_weights(self, weights: Mapping[str, float]) -> Dict[str, float]:
        unknown = set(weights) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(
                f"criterion: unknown loss names {sorted(unknown)} in weights; known: {LOSS_NAMES}"
            )
        used = set(self.matched_terms) | set(self.dn_terms) | set(self.ti_terms)
        missing = used - set(weights)
        if missing:
            raise ValueError(
                f"criterion: no weight for the loss term(s) {sorted(missing)}; every computed "
                "term needs a weight"
            )
        return {name: float(weights[name]) for name in LOSS_NAMES if name in weights}

    # ------------------------------------------------------------------ loss terms (unweighted)
    def loss_ce(self, pairs: MatchedPairs, num_boxes: float) -> torch.Tensor:
        logits = pairs.outputs.logits.float()
        focal = sigmoid_focal_loss(logits, pairs.class_targets(), self.focal_alpha, self.focal_gamma)
        return focal.sum() / num_boxes

    def loss_bbox(self, pairs: MatchedPairs, num_boxes: float) -> torch.Tensor:
        pred, gt = pairs.boxes()
        return F.l1_loss(pred, gt, reduction="sum") / num_boxes

    def loss_giou(self, pairs: MatchedPairs, num_boxes: float) -> torch.Tensor:
        pred, gt = pairs.boxes()
        pred_xyxy = box_convert(pred, "cxcywh", "xyxy")
        gt_xyxy = box_convert(gt, "cxcywh", "xyxy")
        return generalized_box_iou_loss(pred_xyxy, gt_xyxy, reduction="sum") / num_boxes

    def loss_mask(self, pairs: MatchedPairs, num_boxes: float) -> torch.Tensor:
        if pairs.num_matched == 0:
            return pairs.outputs.masks.sum() * 0.0
        point_logits, point_labels = pairs.mask_points()
        return sigmoid_ce_loss(point_logits, point_labels).sum() / num_boxes

    def loss_dice(self, pairs: MatchedPairs, num_boxes: float) -> torch.Tensor:
        if pairs.num_matched == 0:
            return pairs.outputs.masks.sum() * 0.0
        point_logits, point_labels = pairs.mask_points()
        return dice_loss(point_logits, point_labels).sum() / num_boxes

    def sample_mask_points(
        self, pred_masks: torch.Tensor, target_values: Callable[[torch.Tensor], torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """PointRend importance sampling of P points per mask (mostly where the logit is near 0).

        Args:
            pred_masks: (M, H, W) logits.
            target_values: maps (M, P, 2) points in [0, 1]^2 to the (M, P) values of the M
                matched targets there (:meth:`StackedTargetMasks.values_at`).
        Returns:
            (M, P) logits (differentiable) and (M, P) target values.
        """
        pred_masks = pred_masks[:, None]
        with torch.no_grad():
            coords = uncertain_point_coords(
                pred_masks, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = target_values(coords)
        point_logits = point_sample(pred_masks, coords, align_corners=False).squeeze(1)
        return point_logits, point_labels

    # ------------------------------------------------------------------ stages
    def forward(self, outputs: PredictorOutput, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the predictor's stages: ``final``, ``aux``, ``interm`` (optional), ``ti`` (class
                and boxes) and ``denoising`` (None when a step has no denoising queries)
            targets: B dicts with "labels" (N,) int64, "boxes" (N, 4) normalised (cx, cy, w, h)
                and "masks" (N, H', W') padded to the batch size.
        Returns:
            weighted scalar losses by name, e.g. "loss_giou_3", "loss_ce_dn", "loss_bbox_ti1".
        """
        final = outputs.final
        self._check_targets(targets, final.logits.shape[0])
        num_boxes = self._num_boxes(targets, final.logits.device)
        aux_outputs = outputs.aux if self.deep_supervision else []
        masks = StackedTargetMasks(targets)  # shared by every stage's matching and mask losses

        losses = self._matched_stage(final, targets, masks, "", num_boxes)
        for i, aux in enumerate(aux_outputs):
            losses.update(self._matched_stage(aux, targets, masks, f"_{i}", num_boxes))
        if outputs.interm is not None:
            losses.update(self._matched_stage(outputs.interm, targets, masks, "_interm", num_boxes))
        losses.update(self._denoising_losses(outputs, targets, masks, num_boxes))
        if self.deep_supervision:
            for j, ti_outputs in enumerate(outputs.ti):
                indices = self.matcher(ti_outputs, targets, cost_types=("class", "box"))
                pairs = self._pairs(ti_outputs, targets, indices, masks)
                losses.update(self._weighted(pairs, self.ti_terms, f"_ti{j}", num_boxes))
        return losses

    def _matched_stage(self, outputs: StagePrediction, targets, masks, suffix: str, num_boxes: float):
        cost_types = ("class", "box", "mask")
        indices = self.matcher(outputs, targets, cost_types, stacked_masks=masks.masks)
        return self._weighted(self._pairs(outputs, targets, indices, masks), self.matched_terms, suffix, num_boxes)

    def _denoising_losses(self, outputs: PredictorOutput, targets, masks, num_boxes: float):
        if self.dn == "no":
            return {}
        # As the authors: without the two-stage proposals the first auxiliary output has no
        # denoising loss.
        first_aux = 0 if outputs.interm is not None else 1
        num_aux = len(outputs.aux) if self.deep_supervision else 0
        suffixes = ["_dn"] + [f"_dn_{i}" for i in range(first_aux, num_aux)]
        dn = outputs.denoising
        if dn is None:
            # No denoising queries this step (e.g. no instance in the batch): report zeros so the
            # set of logged losses does not change, still attached to the graph.
            zero = outputs.final.logits.sum() * 0.0
            return {f"{name}{suffix}": zero for suffix in suffixes for name in self.dn_terms}

        self._check_denoising(dn, num_aux)
        indices = self.denoising_indices(targets, dn.num_groups, dn.single_pad)
        dn_num_boxes = num_boxes * dn.num_groups
        losses = self._weighted(self._pairs(dn.final, targets, indices, masks), self.dn_terms, "_dn", dn_num_boxes)
        for i in range(first_aux, num_aux):
            pairs = self._pairs(dn.aux[i], targets, indices, masks)
            losses.update(self._weighted(pairs, self.dn_terms, f"_dn_{i}", dn_num_boxes))
        return losses

    @staticmethod
    def _check_denoising(dn: DenoisingOutput, num_aux: int) -> None:
        if dn.num_groups * dn.single_pad != dn.pad_size:
            raise ValueError(
                f"criterion: denoising pad_size must be num_groups * single_pad = "
                f"{dn.num_groups} * {dn.single_pad}, got {dn.pad_size}"
            )
        if dn.final.logits.shape[1] != dn.pad_size:
            raise ValueError(
                f"criterion: the denoising logits have {dn.final.logits.shape[1]} queries, "
                f"expected pad_size={dn.pad_size}"
            )
        if len(dn.aux) < num_aux:
            raise ValueError(
                f"criterion: the denoising output has {len(dn.aux)} auxiliary stages, expected one "
                f"per auxiliary output ({num_aux})"
            )

    @staticmethod
    def denoising_indices(targets, num_groups: int, single_pad: int) -> Indices:
        """Fixed assignment of the denoising queries: query g * single_pad + j <-> target j."""
        indices = []
        for target in targets:
            num_targets = int(target["labels"].numel())
            if num_targets > single_pad:
                raise ValueError(
                    f"criterion: an image has {num_targets} targets but the denoising single_pad "
                    f"is {single_pad}"
                )
            device = target["labels"].device
            target_idx = torch.arange(num_targets, device=device).repeat(num_groups)
            group_start = torch.arange(num_groups, device=device) * single_pad
            query_idx = (group_start[:, None] + torch.arange(num_targets, device=device)).flatten()
            indices.append((query_idx, target_idx))
        return indices

    def _pairs(self, outputs, targets, indices: Indices, masks: StackedTargetMasks) -> MatchedPairs:
        return MatchedPairs(outputs, targets, indices, self.sample_mask_points, masks)

    def _weighted(
        self, pairs: MatchedPairs, terms: Sequence[str], suffix: str, num_boxes: float
    ) -> Dict[str, torch.Tensor]:
        """Compute each term with its ``loss_*`` method, weigh it and name it with the stage suffix."""
        return {
            f"{name}{suffix}": self.weights[name] * getattr(self, name)(pairs, num_boxes)
            for name in terms
        }

    def _check_targets(self, targets, batch_size: int) -> None:
        if len(targets) != batch_size:
            raise ValueError(f"criterion: {len(targets)} targets for a batch of {batch_size} images")
        for i, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"criterion: targets[{i}]['labels'] must lie in [0, {self.num_classes}), got "
                    f"values from {int(labels.min())} to {int(labels.max())}"
                )

    @staticmethod
    def _num_boxes(targets, device) -> float:
        """The loss normaliser of this rank: max(ground-truth instances of the whole global batch,
        1) / number of ranks. DDP averages the ranks' gradients, so the result equals one process
        normalising the whole batch by its instance count (at least 1)."""
        count = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
        return max(count.item(), 1.0) / get_world_size()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, weights={self.weights}, dn={self.dn!r}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}, "
            f"deep_supervision={self.deep_supervision}"
        )


def build_criterion(cfg) -> DIMaskDINOCriterion:
    """The criterion (and its matcher) from the authors' ``MODEL.MaskDINO`` loss keys."""
    return DIMaskDINOCriterion(cfg)
