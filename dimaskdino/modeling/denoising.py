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

__all__ = ["DenoisingQueries", "DenoisingQueryGenerator", "denoising_attention_mask"]


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

    def _noised(self, labels, boxes):
        """labels: (M,), boxes: (M, 4) cxcywh -> noised copies."""
        labels = labels.clone()
        boxes = boxes.clone()
        if self.noise_scale > 0:
            p = torch.rand_like(labels.float())
            chosen = torch.nonzero(p < (self.noise_scale * 0.5)).view(-1)
            new_labels = torch.randint_like(chosen, 0, self.num_classes)
            labels.scatter_(0, chosen, new_labels)
            diff = torch.zeros_like(boxes)
            diff[:, :2] = boxes[:, 2:] / 2
            diff[:, 2:] = boxes[:, 2:]
            boxes = boxes + torch.mul(torch.rand_like(boxes) * 2 - 1.0, diff) * self.noise_scale
            boxes = boxes.clamp(min=0.0, max=1.0)
        return labels, boxes

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
