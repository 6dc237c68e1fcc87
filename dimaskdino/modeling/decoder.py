"""The deformable transformer decoder with iterative box refinement.

Each layer: self-attention among the queries (with positional queries), multi-scale deformable
cross-attention into the memory around each query's box, then a ReLU FFN; post-norm throughout. The
positional query of a layer is an MLP of the sine embedding of the current boxes. After every layer a
box head shared by all layers refines the boxes in inverse-sigmoid space; the refined boxes are
detached before they feed the next layer.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import MSDeformAttn
from ..layers.box_ops import inverse_sigmoid
from ..layers.mlp import MLP
from ..layers.position_encoding import box_sine_embedding
from .utils import autocast_disabled

__all__ = ["DeformableDecoderLayer", "DeformableDecoder", "DecoderOutput"]


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
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

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
        queries = self.norm2(queries + self.dropout2(attended))
        n_levels = spatial_shapes.shape[0]
        references = reference_boxes[:, :, None, :].expand(-1, -1, n_levels, -1)
        attended = self.cross_attn(queries + query_pos, references, memory, spatial_shapes, level_start_index)
        queries = self.norm1(queries + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(queries))))
        return self.norm3(queries + self.dropout4(ffn))


@dataclass
class DecoderOutput:
    """hidden_states: per layer, (B, Q, C) outputs after the shared decoder norm;
    references: D + 1 sigmoid boxes (B, Q, 4): the input boxes, then each layer's refined boxes
    (not detached); memory: (B, S, C) the memory after the optional update."""

    hidden_states: List[torch.Tensor]
    references: List[torch.Tensor]
    memory: torch.Tensor


# called before a layer with (layer index, raw queries (B, Q, C), position queries (B, Q, C), memory
# (B, S, C)); returns the memory for this and the following layers
MemoryUpdate = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    def forward(self, queries, boxes_unsigmoid, memory, spatial_shapes, level_start_index, box_head: nn.Module,
                norm: nn.Module, self_attn_mask: Optional[torch.Tensor] = None,
                memory_update: Optional[MemoryUpdate] = None) -> DecoderOutput:
        """
        Args:
            queries: (B, Q, C) initial query contents
            boxes_unsigmoid: (B, Q, 4) initial boxes, logit(cx, cy, w, h)
            memory: (B, S, C); spatial_shapes: (L, 2); level_start_index: (L,)
            box_head: the shared box head; norm: the shared decoder norm
            self_attn_mask: (Q, Q) bool, True where a query may not attend (denoising groups)
            memory_update: optional hook run before every layer (BATO uses layer 1)
        """
        reference = boxes_unsigmoid.sigmoid()
        references = [reference]
        hidden_states = []
        for layer_id, layer in enumerate(self.layers):
            query_pos = self.ref_point_head(box_sine_embedding(reference, self.d_model // 2))
            if memory_update is not None:
                memory = memory_update(layer_id, queries, query_pos, memory)
            with autocast_disabled(queries.device):
                queries = layer(queries, query_pos, reference, memory, spatial_shapes, level_start_index,
                                self_attn_mask)
            refined = (box_head(queries) + inverse_sigmoid(reference)).sigmoid()
            reference = refined.detach()
            references.append(refined)
            hidden_states.append(norm(queries))
        return DecoderOutput(hidden_states=hidden_states, references=references, memory=memory)
