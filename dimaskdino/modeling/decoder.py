"""The deformable transformer decoder with iterative box refinement.

Each layer: self-attention among the queries (with positional queries), multi-scale deformable
cross-attention into the memory around each query's box, then a ReLU FFN; post-norm throughout. The
positional query of a layer is an MLP of the sine embedding of the current boxes. After every layer a
box head shared by all layers refines the boxes in inverse-sigmoid space; the refined boxes are
detached before they feed the next layer.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from ..layers.ms_deform_attn import MSDeformAttn, reset_deformable_transformer
from ..layers.box_ops import inverse_sigmoid
from ..layers.mlp import MLP
from ..layers.post_norm import add_and_norm, add_feed_forward, feed_forward_and_norm
from ..layers.position_encoding import box_sine_embedding
from .utils import autocast_disabled

__all__ = ["DeformableDecoderLayer", "DeformableDecoder", "DecoderMemory", "DecoderState"]


class DeformableDecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention and FFN, each followed by add & LayerNorm.

    Parameter names follow the published checkpoints: ``norm2`` after self-attention, ``norm1``
    after cross-attention, ``norm3`` after the FFN.
    """

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        add_feed_forward(self, d_model, d_ffn, dropout, dropout_names=("dropout3", "dropout4"), norm_name="norm3")

    def forward(self, queries, query_pos, reference_boxes, memory, spatial_shapes, level_start_index,
                self_attn_mask: Optional[torch.Tensor] = None):
        """
        Args:
            queries, query_pos: (B, Q, C)
            reference_boxes: (B, Q, 4) sigmoid cxcywh
            memory: (B, S, C); spatial_shapes: (L, 2); level_start_index: (L,)
            self_attn_mask: (Q, Q) bool, True where a query may not attend
        Returns:
            (B, Q, C)
        """
        q = queries + query_pos
        attended = self.self_attn(q, q, queries, attn_mask=self_attn_mask)[0]
        queries = add_and_norm(queries, attended, self.dropout2, self.norm2)
        n_levels = spatial_shapes.shape[0]
        references = reference_boxes[:, :, None, :].expand(-1, -1, n_levels, -1)
        attended = self.cross_attn(queries + query_pos, references, memory, spatial_shapes, level_start_index)
        queries = add_and_norm(queries, attended, self.dropout1, self.norm1)
        return feed_forward_and_norm(queries, self.linear1, self.dropout3, self.linear2, self.dropout4, self.norm3)


@dataclass
class DecoderMemory:
    """What the decoder attends to. tokens: (B, S, C) encoder output in the decoder's level order;
    pos: (1, S, C) sine positions (read by BATO); spatial_shapes: (L, 2); level_start_index: (L,)"""

    tokens: torch.Tensor
    pos: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor


@dataclass
class DecoderState:
    """The decoder between two layers. queries: (B, Q, C) raw output of the last layer run (the
    input queries before the first); reference: (B, Q, 4) sigmoid boxes the next layer reads (the
    input boxes, then the last refined boxes detached); hidden_states: per layer run, (B, Q, C)
    outputs after the shared decoder norm; references: the input boxes, then each layer's refined
    boxes (not detached); query_pos: the next layer's positional queries once computed
    (:meth:`DeformableDecoder.position_queries`), reused by that layer."""

    queries: torch.Tensor
    reference: torch.Tensor
    hidden_states: List[torch.Tensor] = field(default_factory=list)
    references: List[torch.Tensor] = field(default_factory=list)
    query_pos: Optional[torch.Tensor] = None

    @property
    def next_layer(self) -> int:
        return len(self.hidden_states)


class DeformableDecoder(nn.Module):
    """A stack of :class:`DeformableDecoderLayer` with box refinement by a shared box head."""

    def __init__(self, d_model: int, n_heads: int, num_layers: int, d_ffn: int, dropout: float, n_levels: int,
                 n_points: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.MaskDINO.DEC_LAYERS must be >= 1, got {num_layers}")
        self.d_model = d_model
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points) for _ in range(num_layers)
        )
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        reset_deformable_transformer(self)

    @staticmethod
    def initial_state(queries, boxes_unsigmoid) -> DecoderState:
        """queries: (B, Q, C) initial contents; boxes_unsigmoid: (B, Q, 4) logit(cx, cy, w, h)."""
        reference = boxes_unsigmoid.sigmoid()
        return DecoderState(queries=queries, reference=reference, references=[reference])

    def position_queries(self, state: DecoderState):
        """(B, Q, C) positional queries of the next layer: an MLP of the sine embedding of its boxes
        (kept in ``state`` for that layer)."""
        if state.query_pos is None:
            state.query_pos = self.ref_point_head(box_sine_embedding(state.reference, self.d_model // 2))
        return state.query_pos

    def forward(self, state: DecoderState, num_layers: int, memory: DecoderMemory, box_head: nn.Module,
                norm: nn.Module, self_attn_mask: Optional[torch.Tensor] = None) -> DecoderState:
        """Run the next ``num_layers`` layers from ``state``.

        Args:
            state: from :meth:`initial_state` or a previous call
            box_head: the shared box head; norm: the shared decoder norm
            self_attn_mask: (Q, Q) bool, True where a query may not attend (denoising groups)
        """
        if state.next_layer + num_layers > len(self.layers):
            raise ValueError(f"decoder: layers {state.next_layer}..{state.next_layer + num_layers - 1} asked, "
                             f"it has {len(self.layers)}")
        for layer in self.layers[state.next_layer:state.next_layer + num_layers]:
            query_pos = self.position_queries(state)
            with autocast_disabled(state.queries.device):
                queries = layer(state.queries.float(), query_pos.float(), state.reference.float(),
                                memory.tokens.float(), memory.spatial_shapes, memory.level_start_index,
                                self_attn_mask)
            refined = (box_head(queries) + inverse_sigmoid(state.reference)).sigmoid()
            state = DecoderState(queries, refined.detach(), state.hidden_states + [norm(queries)],
                                 state.references + [refined])
        return state
