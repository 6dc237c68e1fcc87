"""Balance-Aware Tokens Optimization (BATO).

Once, after decoder layer 0 (``LAYERS_BEFORE_BATO``), the top NUM_GUIDING_TOKENS queries (class
score of the raw layer-0 output, denoising queries excluded) become guiding tokens: their mask embeddings are the keys' content
and values, their box position queries the keys' positions. Every memory token (with its sine position)
cross-attends to them (post-norm, then a ReLU FFN); the updated memory serves the remaining decoder
layers. The last flattened level of the updated memory (stride 8 in the published configs) is
upsampled to the mask-feature size, added to the mask features and passed through a 3x3 convolution
without bias, GroupNorm(32) and ReLU: decoder layers >= 1 predict masks from these features.
"""
from dataclasses import dataclass

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, get_norm

from ..layers.level_shapes import level_shapes
from ..layers.post_norm import add_and_norm, add_feed_forward, feed_forward_and_norm
from .decoder import DecoderMemory
from .utils import gather_rows

__all__ = ["BalanceAwareTokenOptimization", "BATOOutput", "LAYERS_BEFORE_BATO"]

# BATO runs once, after this many decoder layers (the paper: after the first one)
LAYERS_BEFORE_BATO = 1


@dataclass
class BATOOutput:
    """memory: (B, S, C) updated memory tokens; mask_features: (B, C, H/4, W/4) updated mask features;
    guide_index: (B, G) indices of the guiding tokens among the matching queries."""

    memory: torch.Tensor
    mask_features: torch.Tensor
    guide_index: torch.Tensor


class BalanceAwareTokenOptimization(nn.Module):
    """Guiding-token cross-attention of the memory and the mask-feature update."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float, num_guiding_tokens: int):
        super().__init__()
        self.layers_before = LAYERS_BEFORE_BATO
        if d_model % 32 != 0:
            raise ValueError(f"MODEL.MaskDINO.HIDDEN_DIM must be a multiple of 32 (GroupNorm(32)), got {d_model}")
        self.num_guiding_tokens = num_guiding_tokens
        self.multihead_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        add_feed_forward(self, d_model, d_ffn, dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.mask_output_conv = Conv2d(
            d_model, d_model, kernel_size=3, padding=1, bias=False, norm=get_norm("GN", d_model), activation=F.relu
        )
        weight_init.c2_xavier_fill(self.mask_output_conv)

    def select_guiding_tokens(self, queries, query_pos, class_head: nn.Module, mask_head: nn.Module):
        """Top-G queries by their best class score.

        Args:
            queries, query_pos: (B, Q, C) matching queries (no denoising queries)
        Returns:
            content: (B, G, C) mask embeddings; pos: (B, G, C); index: (B, G)
        """
        if queries.shape[1] < self.num_guiding_tokens:
            raise ValueError(
                f"NUM_GUIDING_TOKENS ({self.num_guiding_tokens}) must be <= NUM_OBJECT_QUERIES ({queries.shape[1]})"
            )
        scores = class_head(queries).max(-1).values  # (B, Q)
        embeddings = mask_head(queries)
        index = torch.topk(scores, self.num_guiding_tokens, dim=1).indices
        return gather_rows(embeddings, index), gather_rows(query_pos, index), index

    def update_memory(self, memory, memory_pos, guide_content, guide_pos):
        """memory: (B, S, C), memory_pos: (1 or B, S, C), guide_*: (B, G, C) -> (B, S, C)"""
        attended = self.multihead_attn(memory + memory_pos, guide_content + guide_pos, guide_content)[0]
        memory = add_and_norm(memory, attended, self.dropout1, self.norm1)
        return feed_forward_and_norm(memory, self.linear1, self.dropout2, self.linear2, self.dropout3, self.norm2)

    def update_mask_features(self, memory, spatial_shapes, level_start_index, mask_features):
        """Fuse the last flattened level of ``memory`` into ``mask_features`` (B, C, H/4, W/4)."""
        shapes = level_shapes(spatial_shapes)
        h, w = shapes[-1]
        start = sum(level_h * level_w for level_h, level_w in shapes[:-1])  # = level_start_index[-1]
        level = memory[:, start:start + h * w].transpose(1, 2).reshape(memory.shape[0], -1, h, w)
        upsampled = F.interpolate(level, size=mask_features.shape[-2:], mode="bilinear", align_corners=False)
        return self.mask_output_conv(mask_features + upsampled)

    def forward(self, queries, query_pos, num_denoising: int, class_head, mask_head, memory: DecoderMemory,
                mask_features) -> BATOOutput:
        """
        Args:
            queries: (B, P + Q, C) raw outputs of the decoder layers before BATO (P denoising queries
                first); only the Q matching queries guide
            query_pos: (B, P + Q, C) their position queries for the next layer
            class_head, mask_head: the shared heads
            memory: the decoder's memory (tokens (B, S, C), sine positions (1, S, C), levels)
            mask_features: (B, C, H/4, W/4)
        """
        matching, matching_pos = queries[:, num_denoising:], query_pos[:, num_denoising:]
        content, pos, index = self.select_guiding_tokens(matching, matching_pos, class_head, mask_head)
        tokens = self.update_memory(memory.tokens, memory.pos, content, pos)
        mask_features = self.update_mask_features(tokens, memory.spatial_shapes, memory.level_start_index,
                                                  mask_features)
        return BATOOutput(memory=tokens, mask_features=mask_features, guide_index=index)
