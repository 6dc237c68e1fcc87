"""De-Imbalance (DI) module: token interaction layers and the second ("residual double") selection.

The K1 first-selected tokens attend to each other in TI_LAYERS post-norm self-attention layers whose
positional query is an MLP of the sine embedding of each token's box. After every layer a box head,
shared by the layers, refines the boxes in inverse-sigmoid space. The best K2 tokens (ranked by the
shared class head on the normalised output) become the decoder queries, with their refined boxes.
"""
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from ..layers.box_ops import inverse_sigmoid
from ..layers.mlp import MLP
from ..layers.post_norm import add_and_norm, add_feed_forward, feed_forward_and_norm
from ..layers.position_encoding import box_sine_embedding
from .utils import autocast_disabled, gather_rows

__all__ = ["TokenInteractionLayer", "DeImbalanceModule", "DeImbalanceOutput"]


class TokenInteractionLayer(nn.Module):
    """Post-norm self-attention among tokens (with positional queries) followed by a ReLU FFN."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        add_feed_forward(self, d_model, d_ffn, dropout)

    def forward(self, tokens, query_pos):
        """tokens, query_pos: (B, K, C) -> (B, K, C)"""
        q = tokens + query_pos
        attended = self.self_attn(q, q, tokens)[0]
        tokens = add_and_norm(tokens, attended, self.dropout1, self.norm1)
        return feed_forward_and_norm(tokens, self.linear1, self.dropout2, self.linear2, self.dropout3, self.norm2)


@dataclass
class DeImbalanceOutput:
    """queries: (B, K2, C) selected raw layer outputs; boxes: (B, K2, 4) sigmoid cxcywh (not detached);
    layer_outputs: per TI layer, (B, K1, C) normalised outputs; layer_boxes: per TI layer, (B, K1, 4)
    sigmoid boxes after that layer's refinement (not detached)."""

    queries: torch.Tensor
    boxes: torch.Tensor
    layer_outputs: List[torch.Tensor]
    layer_boxes: List[torch.Tensor]


class DeImbalanceModule(nn.Module):
    """Token interaction layers with iterative box refinement, then the second selection."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float, num_layers: int, num_selected: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.MaskDINO.TI_LAYERS must be >= 1 when DI is enabled, got {num_layers}")
        self.d_model = d_model
        self.num_selected = num_selected
        self.layers = nn.ModuleList(
            TokenInteractionLayer(d_model, n_heads, d_ffn, dropout) for _ in range(num_layers)
        )
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.norm = nn.LayerNorm(d_model)
        self.box_embed = MLP(d_model, d_model, 4, 3)
        nn.init.constant_(self.box_embed.layers[-1].weight, 0)
        nn.init.constant_(self.box_embed.layers[-1].bias, 0)

    def forward(self, tokens, boxes_unsigmoid, class_head: nn.Module) -> DeImbalanceOutput:
        """
        Args:
            tokens: (B, K1, C) first-selected queries
            boxes_unsigmoid: (B, K1, 4) their boxes, logit(cx, cy, w, h)
            class_head: the shared classifier, (..., C) -> (..., K classes)
        """
        if tokens.shape[1] < self.num_selected:
            raise ValueError(
                f"FIRST_SELECTED_QUERIES ({tokens.shape[1]}) must be >= NUM_OBJECT_QUERIES ({self.num_selected})"
            )
        with autocast_disabled(tokens.device):
            # under mixed precision the selected tokens arrive in the reduced dtype
            tokens = tokens.float()
            reference = boxes_unsigmoid.float().sigmoid()
            layer_outputs, layer_boxes = [], []
            for layer in self.layers:
                query_pos = self.ref_point_head(box_sine_embedding(reference, self.d_model // 2))
                tokens = layer(tokens, query_pos)
                refined = (self.box_embed(tokens) + inverse_sigmoid(reference)).sigmoid()
                reference = refined.detach()
                layer_boxes.append(refined)
                layer_outputs.append(self.norm(tokens))
            scores = class_head(layer_outputs[-1]).max(-1).values  # (B, K1)
            index = torch.topk(scores, self.num_selected, dim=1).indices
            return DeImbalanceOutput(
                queries=gather_rows(tokens, index),
                boxes=gather_rows(layer_boxes[-1], index),
                layer_outputs=layer_outputs,
                layer_boxes=layer_boxes,
            )
