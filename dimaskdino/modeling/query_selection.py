"""Two-stage query selection: every encoder token proposes a box, the best-scoring ones become queries.

Each memory token gets an anchor box centred on its pixel with side ``0.05 * 2**lvl`` (lvl = level
index in the decoder's flattened order), and a class score from the shared class head. The top-k
tokens by their best class score ("first selection") give the query contents and, with the shared box
head's offset added to the anchor in inverse-sigmoid space, their boxes. Anchors touching the border
(any coordinate outside (0.01, 0.99)) are invalid: their tokens are zeroed and their box is +inf.
"""
from dataclasses import dataclass

import torch
from torch import nn

from ..layers.level_shapes import level_shapes
from ..layers.position_encoding import pixel_centres
from .utils import gather_rows

__all__ = ["TwoStageQuerySelection", "SelectedQueries", "encoder_anchor_boxes"]


def encoder_anchor_boxes(spatial_shapes, device):
    """Anchor box of every memory token, in inverse-sigmoid space.

    Args:
        spatial_shapes: (L, 2) (h, w) in the flattened order
    Returns:
        anchors: (S, 4) logit(cx, cy, w, h), +inf where invalid
        valid: (S,) bool
    """
    anchors = []
    for lvl, (h, w) in enumerate(level_shapes(spatial_shapes)):
        centres = pixel_centres(h, w, device)
        sizes = torch.full_like(centres, 0.05) * (2.0 ** lvl)
        anchors.append(torch.cat((centres, sizes), dim=-1))
    anchors = torch.cat(anchors, 0)
    valid = ((anchors > 0.01) & (anchors < 0.99)).all(-1)
    anchors = torch.log(anchors / (1 - anchors))
    return anchors.masked_fill(~valid[:, None], float("inf")), valid


@dataclass
class SelectedQueries:
    """Output of the first selection (K selected tokens per image).

    queries: (B, K, C) token contents after the encoder-output projection (not detached)
    boxes_unsigmoid: (B, K, 4) logit(cx, cy, w, h) (not detached)
    """

    queries: torch.Tensor
    boxes_unsigmoid: torch.Tensor


class TwoStageQuerySelection(nn.Module):
    """Encoder-output projection and top-k token selection."""

    def __init__(self, hidden_dim: int, num_selected: int):
        super().__init__()
        self.num_selected = num_selected
        self.enc_output = nn.Linear(hidden_dim, hidden_dim)
        self.enc_output_norm = nn.LayerNorm(hidden_dim)

    def forward(self, memory, spatial_shapes, class_head: nn.Module, box_head: nn.Module) -> SelectedQueries:
        """
        Args:
            memory: (B, S, C) encoder tokens in the decoder's flattened order
            spatial_shapes: (L, 2)
            class_head: shared classifier, (..., C) -> (..., K classes)
            box_head: shared box head, (..., C) -> (..., 4)
        """
        if memory.shape[1] < self.num_selected:
            raise ValueError(
                f"the image gives {memory.shape[1]} encoder tokens, fewer than the {self.num_selected} queries "
                "to select (FIRST_SELECTED_QUERIES or NUM_OBJECT_QUERIES); use a larger image or fewer queries"
            )
        anchors, valid = encoder_anchor_boxes(spatial_shapes, memory.device)
        tokens = memory.masked_fill(~valid[None, :, None], 0.0)
        tokens = self.enc_output_norm(self.enc_output(tokens))
        scores = class_head(tokens).max(-1).values  # (B, S)
        index = torch.topk(scores, self.num_selected, dim=1).indices  # (B, K)
        queries = gather_rows(tokens, index)
        boxes = box_head(queries) + anchors[index]
        return SelectedQueries(queries=queries, boxes_unsigmoid=boxes)
