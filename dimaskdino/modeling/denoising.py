"""Denoising (DN) queries for training: noised ground-truth labels and boxes, and their attention mask.

The ground truths of the batch are repeated in G = DN_NUM // (max objects per image) groups. Each
group holds ``single_pad`` (= the largest object count of the batch) slots per image; slot j of group g
(query index ``g * single_pad + j``) reconstructs target j of its image, unused slots stay zero. A
label is replaced by a random class with probability noise_scale / 2; box centres move by up to
noise_scale * w/2 (h/2) and sizes by up to noise_scale * w (h), then boxes are clamped to [0, 1].
The denoising queries come before the matching queries; matching queries cannot see any denoising
query and denoising groups cannot see each other.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

from ..layers.box_ops import inverse_sigmoid
from .outputs import StagePrediction

__all__ = [
    "DenoisingOutput",
    "DenoisingQueries",
    "DenoisingQueryGenerator",
    "denoising_attention_mask",
    "join_denoising",
    "split_denoising",
]


@dataclass
class DenoisingQueries:
    """content: (B, P, C) label embeddings; boxes_unsigmoid: (B, P, 4); attn_mask: (P + Q, P + Q) bool,
    True where attention is blocked; num_groups G, single_pad, pad_size P = G * single_pad."""

    content: torch.Tensor
    boxes_unsigmoid: torch.Tensor
    attn_mask: torch.Tensor
    num_groups: int
    single_pad: int
    pad_size: int


@dataclass
class DenoisingOutput:
    """The denoising queries' predictions: ``final`` (last decoder layer) and ``aux`` (the stages of
    ``PredictorOutput.aux``), each with P = pad_size = num_groups * single_pad queries; query
    ``g * single_pad + j`` reconstructs target j of its image."""

    final: StagePrediction
    aux: List[StagePrediction]
    num_groups: int
    single_pad: int
    pad_size: int


def join_denoising(dn: Optional[DenoisingQueries], queries, boxes_unsigmoid):
    """Denoising queries first, then the matching ones: (B, Q, C), (B, Q, 4) -> (B, P + Q, ...)."""
    if dn is None:
        return queries, boxes_unsigmoid
    return torch.cat([dn.content, queries], dim=1), torch.cat([dn.boxes_unsigmoid, boxes_unsigmoid], dim=1)


def split_denoising(stages: List[StagePrediction], dn: Optional[DenoisingQueries]):
    """Undo :func:`join_denoising` on every stage's predictions.

    Returns:
        the matching queries' stages, and the :class:`DenoisingOutput` (None without denoising)
    """
    if dn is None:
        return stages, None
    matching = [s.queries(dn.pad_size) for s in stages]
    denoised = [s.queries(0, dn.pad_size) for s in stages]
    output = DenoisingOutput(denoised[-1], denoised[:-1], dn.num_groups, dn.single_pad, dn.pad_size)
    return matching, output


def denoising_attention_mask(num_groups: int, single_pad: int, num_queries: int, device=None):
    """(P + Q, P + Q) bool self-attention mask for P = num_groups * single_pad denoising queries
    followed by ``num_queries`` matching queries."""
    pad_size = num_groups * single_pad
    size = pad_size + num_queries
    group = torch.arange(size, device=device) // single_pad
    is_dn = torch.arange(size, device=device) < pad_size
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    # denoising queries see their own group and all matching queries
    mask[:pad_size, :pad_size] = group[:pad_size, None] != group[None, :pad_size]
    # matching queries never see a denoising query
    mask[~is_dn[:, None] & is_dn[None, :]] = True
    return mask


class DenoisingQueryGenerator(nn.Module):
    """Makes the denoising queries; holds the label embedding (``label_enc``)."""

    def __init__(self, num_classes: int, hidden_dim: int, dn_num: int, noise_scale: float):
        super().__init__()
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.dn_num = dn_num
        self.noise_scale = noise_scale
        self.label_enc = nn.Embedding(num_classes, hidden_dim)

    def _random_labels(self, labels):
        """Each label becomes a uniformly drawn class with probability noise_scale / 2. (M,) -> (M,)"""
        replaced = torch.rand(labels.shape, device=labels.device) < self.noise_scale / 2
        drawn = torch.randint(0, self.num_classes, (int(replaced.sum()),), dtype=labels.dtype, device=labels.device)
        noised = labels.clone()
        noised[replaced] = drawn
        return noised

    def _jittered_boxes(self, boxes):
        """Centres move by up to noise_scale * half the size, sizes by up to noise_scale * the size,
        uniformly; the result is clamped to [0, 1]. (M, 4) cxcywh -> (M, 4)"""
        size = boxes[:, 2:]
        extent = torch.cat((size / 2, size), dim=1)
        uniform = torch.rand(boxes.shape, device=boxes.device) * 2 - 1  # in [-1, 1)
        return (boxes + uniform * extent * self.noise_scale).clamp(0.0, 1.0)

    def _noised(self, labels, boxes):
        """labels: (M,), boxes: (M, 4) cxcywh -> noised copies (labels are drawn before boxes)."""
        if self.noise_scale <= 0:
            return labels.clone(), boxes.clone()
        return self._random_labels(labels), self._jittered_boxes(boxes)

    def graph_anchor(self) -> torch.Tensor:
        """0 attached to ``label_enc``: added to a loss input when a training step has no denoising
        queries, so that every parameter is used (distributed training needs it)."""
        return 0.0 * self.label_enc.weight.sum()

    def forward(self, targets: List[Dict[str, torch.Tensor]], num_queries: int) -> Optional[DenoisingQueries]:
        """
        Args:
            targets: per image {"labels": (N,) int64, "boxes": (N, 4) cxcywh normalised}
            num_queries: number of matching queries that follow the denoising ones
        Returns:
            None when the batch has no object or DN_NUM < the largest object count
        """
        counts = [int(t["labels"].shape[0]) for t in targets]
        single_pad = max(counts) if counts else 0
        if single_pad == 0 or self.dn_num // single_pad == 0:
            return None
        num_groups = self.dn_num // single_pad
        pad_size = num_groups * single_pad
        device = targets[0]["labels"].device
        labels = torch.cat([t["labels"] for t in targets]).long()
        boxes = torch.cat([t["boxes"] for t in targets]).float()
        image_index = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
        slot = torch.cat([torch.arange(n, device=device) for n in counts])
        # group-major repetition: group g holds every target of the batch
        labels, boxes = self._noised(labels.repeat(num_groups), boxes.repeat(num_groups, 1))
        image_index = image_index.repeat(num_groups)
        slot = (slot[None, :] + single_pad * torch.arange(num_groups, device=device)[:, None]).reshape(-1)

        batch_size = len(targets)
        content = torch.zeros(batch_size, pad_size, self.hidden_dim, device=device)
        boxes_unsigmoid = torch.zeros(batch_size, pad_size, 4, device=device)
        content[image_index, slot] = self.label_enc(labels)
        boxes_unsigmoid[image_index, slot] = inverse_sigmoid(boxes)
        return DenoisingQueries(
            content=content,
            boxes_unsigmoid=boxes_unsigmoid,
            attn_mask=denoising_attention_mask(num_groups, single_pad, num_queries, device),
            num_groups=num_groups,
            single_pad=single_pad,
            pad_size=pad_size,
        )
