"""The pixel decoder ("MaskDINOEncoder"): a deformable-attention encoder over multi-scale features.

Backbone levels (res3..res5 by default) are projected to ``conv_dim`` channels, an extra level is made
by a stride-2 convolution of the coarsest one (stride 64), and a stack of deformable self-attention
layers refines all levels jointly. The stride-4 mask features fuse res2 with the upsampled finest
encoder level. Padding is never masked (as in the authors' code).
"""
import math
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.level_shapes import level_shapes
from ..layers.ms_deform_attn import MSDeformAttn, reset_deformable_transformer
from ..layers.position_encoding import pixel_centres, pixel_sine_embedding
from ..layers.post_norm import add_and_norm, add_feed_forward, feed_forward_and_norm
from .utils import autocast_disabled, flatten_levels

__all__ = ["MaskDINOEncoder", "DeformableEncoderLayer", "DeformableTransformerEncoder", "build_pixel_decoder"]


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    return SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU feed-forward network."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        add_feed_forward(self, d_model, d_ffn, dropout)

    def forward(self, tokens, pos, reference_points, spatial_shapes, level_start_index):
        """
        Args:
            tokens, pos: (B, S, C)
            reference_points: (B, S, L, 2) normalised (x, y) of every token, the same on every level
            spatial_shapes: (L, 2) (h, w); level_start_index: (L,)
        Returns:
            (B, S, C)
        """
        attended = self.self_attn(tokens + pos, reference_points, tokens, spatial_shapes, level_start_index)
        tokens = add_and_norm(tokens, attended, self.dropout1, self.norm1)
        return feed_forward_and_norm(tokens, self.linear1, self.dropout2, self.linear2, self.dropout3, self.norm2)


class DeformableTransformerEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` with a learned embedding per level."""

    def __init__(self, d_model: int, n_heads: int, num_layers: int, d_ffn: int, dropout: float, n_levels: int,
                 n_points: int):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points) for _ in range(num_layers)
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self):
        reset_deformable_transformer(self)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(spatial_shapes, device):
        """Pixel centres of every level, normalised: (1, S, 1, 2) (x, y)."""
        points = [pixel_centres(h, w, device) for h, w in level_shapes(spatial_shapes)]
        return torch.cat(points, 0)[None, :, None, :]

    def forward(self, maps: List[torch.Tensor], pos: List[torch.Tensor]):
        """
        Args:
            maps: L maps (B, C, H_l, W_l); pos: L position encodings (H_l, W_l, C)
        Returns:
            tokens: (B, S, C); spatial_shapes: (L, 2); level_start_index: (L,)
        """
        tokens, spatial_shapes, level_start_index = flatten_levels(maps)
        pos_tokens = torch.cat(
            [p.reshape(-1, p.shape[-1]) + self.level_embed[lvl] for lvl, p in enumerate(pos)], 0
        )[None]
        b, n_levels = tokens.shape[0], len(maps)
        reference_points = self.reference_points(spatial_shapes, tokens.device).expand(b, -1, n_levels, -1)
        for layer in self.layers:
            tokens = layer(tokens, pos_tokens, reference_points, spatial_shapes, level_start_index)
        return tokens, spatial_shapes, level_start_index


def _check_arguments(input_shape, transformer_in_features, conv_dim: int, feature_order: str) -> None:
    if feature_order not in ("low2high", "high2low"):
        raise ValueError(f"MODEL.SEM_SEG_HEAD.FEATURE_ORDER must be 'low2high' or 'high2low', got {feature_order!r}")
    if conv_dim % 32 != 0:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.CONVS_DIM must be a multiple of 32 (GroupNorm(32)), got {conv_dim}")
    missing = [f for f in transformer_in_features if f not in input_shape]
    if missing:
        raise ValueError(
            f"DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES {missing} are not among the backbone features "
            f"{sorted(input_shape)}"
        )


def _input_projections(projected_channels: List[int], num_extra: int, conv_dim: int) -> nn.ModuleList:
    """1x1 conv + GroupNorm per encoder input feature, then ``num_extra`` stride-2 3x3 convs + GroupNorm
    for the extra levels (the first from the widest input)."""
    projections = [
        nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim)) for c in projected_channels
    ]
    in_channels = max(projected_channels)
    for _ in range(num_extra):
        projections.append(
            nn.Sequential(
                nn.Conv2d(in_channels, conv_dim, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, conv_dim)
            )
        )
        in_channels = conv_dim
    for proj in projections:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.constant_(proj[0].bias, 0)
    return nn.ModuleList(projections)


@SEM_SEG_HEADS_REGISTRY.register()
class MaskDINOEncoder(nn.Module):
    """Multi-scale deformable encoder and mask-feature branch (registered as in the authors' code).

    ``feature_order`` 'low2high' (the published configs) orders the encoder levels by increasing
    stride (8, 16, 32, 64); 'high2low' by decreasing stride. The output ``multi_scale_features``
    keep this order.

    Args:
        input_shape: backbone features used (res2..res5), name -> ShapeSpec
        transformer_*: encoder depth, heads, FFN width, dropout and sampling points per level
        conv_dim: channels of the encoder and of the multi-scale outputs (= decoder hidden dim)
        mask_dim: channels of the mask features
        norm: normalisation of the mask-branch convolutions ("GN" in the published configs)
        transformer_in_features: backbone features fed to the encoder (res3..res5)
        common_stride: stride of the mask features (4)
        total_num_feature_levels: encoder levels including the extra downsampled ones (4)
        feature_order: 'low2high' or 'high2low', see the class docstring
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int,
        conv_dim: int,
        mask_dim: int,
        norm: str,
        transformer_in_features: List[str],
        common_stride: int,
        total_num_feature_levels: int,
        feature_order: str,
    ):
        super().__init__()
        _check_arguments(input_shape, transformer_in_features, conv_dim, feature_order)
        self.feature_order = feature_order
        self.conv_dim = conv_dim
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in by_stride]
        transformer_shapes = sorted(
            ((k, v) for k, v in input_shape.items() if k in transformer_in_features),
            key=lambda kv: -kv[1].stride if feature_order == "low2high" else kv[1].stride,
        )
        # the authors index their projections by this reversed list: ascending stride for low2high
        self.projected_features = [k for k, _ in transformer_shapes][::-1]
        projected_channels = [input_shape[k].channels for k in self.projected_features]
        self.total_num_feature_levels = total_num_feature_levels
        num_extra = total_num_feature_levels - len(self.projected_features)
        if num_extra < 0:
            raise ValueError(
                f"TOTAL_NUM_FEATURE_LEVELS ({total_num_feature_levels}) is smaller than the number of "
                f"encoder input features ({len(self.projected_features)})"
            )
        # the extra levels start from the widest (coarsest) backbone feature
        self.extra_source = self.projected_features[projected_channels.index(max(projected_channels))]

        self.input_proj = _input_projections(projected_channels, num_extra, conv_dim)

        self.encoder = DeformableTransformerEncoder(
            d_model=conv_dim, n_heads=transformer_nheads, num_layers=transformer_enc_layers,
            d_ffn=transformer_dim_feedforward, dropout=transformer_dropout, n_levels=total_num_feature_levels,
            n_points=transformer_n_points,
        )

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        min_stride = min(input_shape[k].stride for k in self.projected_features)
        self.num_fpn_levels = max(int(math.log2(min_stride) - math.log2(common_stride)), 1)
        self.fpn_features = self.in_features[: self.num_fpn_levels][::-1]  # coarse to fine
        self._add_fpn_convs(input_shape, conv_dim, norm)
        # which encoder output feeds the FPN: the finest encoder level
        self.high_resolution_index = 0 if feature_order == "low2high" else -1

    def _add_fpn_convs(self, input_shape: Dict[str, ShapeSpec], conv_dim: int, norm: str) -> None:
        """``adapter_i`` (1x1 lateral) and ``layer_i`` (3x3 output) of each FPN level, finest first."""
        use_bias = norm == ""
        for idx, name in enumerate(self.in_features[: self.num_fpn_levels]):
            lateral = Conv2d(input_shape[name].channels, conv_dim, kernel_size=1, bias=use_bias,
                             norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                            norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MaskDINO.DROPOUT,
            "transformer_nheads": cfg.MODEL.MaskDINO.NHEADS,
            "transformer_dim_feedforward": head.DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
            "total_num_feature_levels": head.TOTAL_NUM_FEATURE_LEVELS,
            "feature_order": head.FEATURE_ORDER,
        }

    def _fpn_modules(self, idx):
        """Lateral and output convolutions of FPN level ``idx`` counted coarse to fine."""
        number = self.num_fpn_levels - idx
        return getattr(self, f"adapter_{number}"), getattr(self, f"layer_{number}")

    def _encoder_inputs(self, features):
        """Projected maps and their sine positions, in encoder level order."""
        maps = [self.input_proj[i](features[name].float()) for i, name in enumerate(self.projected_features)]
        pos = [pixel_sine_embedding(m.shape[-2], m.shape[-1], self.conv_dim // 2, m.device) for m in maps]
        extra_maps, extra_pos = [], []
        source = features[self.extra_source].float()
        for proj in self.input_proj[len(self.projected_features):]:
            source = proj(source)
            extra_maps.append(source)
            extra_pos.append(pixel_sine_embedding(source.shape[-2], source.shape[-1], self.conv_dim // 2, source.device))
        extra_maps, extra_pos = extra_maps[::-1], extra_pos[::-1]
        if self.feature_order == "low2high":
            return maps + extra_maps, pos + extra_pos
        return extra_maps + maps, extra_pos + pos

    def forward(self, features: Dict[str, torch.Tensor]):
        """
        Args:
            features: backbone outputs, name -> (B, C_name, H_name, W_name)
        Returns:
            mask_features: (B, mask_dim, H/4, W/4)
            multi_scale_features: L maps (B, conv_dim, H_l, W_l) in encoder level order
        """
        with autocast_disabled(features[self.extra_source].device):
            maps, pos = self._encoder_inputs(features)
            tokens, spatial_shapes, level_start_index = self.encoder(maps, pos)
            b = tokens.shape[0]
            shapes = level_shapes(spatial_shapes)
            out = [
                t.transpose(1, 2).reshape(b, -1, h, w)
                for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], dim=1), shapes)
            ]
            multi_scale_features = out[: self.total_num_feature_levels]
            for idx, name in enumerate(self.fpn_features):
                lateral, output = self._fpn_modules(idx)
                x = lateral(features[name].float())
                upsampled = F.interpolate(out[self.high_resolution_index], size=x.shape[-2:], mode="bilinear",
                                          align_corners=False)
                out.append(output(x + upsampled))
            return self.mask_features(out[-1]), multi_scale_features
