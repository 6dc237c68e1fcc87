"""Swin Transformer backbone for detectron2, built on timm's implementation.

Outputs res2..res5 (strides 4, 8, 16, 32; channels EMBED_DIM * 2**i), each through its own LayerNorm
(``norm0``..``norm3``), as the Swin detection backbones of Mask2Former/MaskDINO. Windows always keep
their configured size and shift (feature maps are padded to whole windows), as in those backbones.
Registered in ``BACKBONE_REGISTRY`` as "SwinTransformerBackbone" and, for the authors' yaml files,
"D2SwinTransformer". Weights converted for the authors' Swin (downsampling at the end of a stage) load
through :class:`dimaskdino.checkpoint.DIMaskDINOCheckpointer`, which moves them to timm's layout.
"""
from typing import Dict, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["SwinTransformerBackbone"]


def _unsupported(cfg_swin):
    problems = []
    if cfg_swin.APE:
        problems.append("MODEL.SWIN.APE=True (absolute position embedding)")
    if not cfg_swin.PATCH_NORM:
        problems.append("MODEL.SWIN.PATCH_NORM=False")
    if cfg_swin.QK_SCALE is not None:
        problems.append(f"MODEL.SWIN.QK_SCALE={cfg_swin.QK_SCALE} (only None, i.e. head_dim ** -0.5)")
    return problems


@BACKBONE_REGISTRY.register()
class SwinTransformerBackbone(Backbone):
    """Swin Transformer with detectron2's Backbone interface (NCHW features by name)."""

    @configurable
    def __init__(
        self,
        *,
        in_chans: int = 3,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        """Arguments as the MODEL.SWIN keys of the same names (lower case); ``in_chans``: input channels."""
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        stage_names = [f"res{i + 2}" for i in range(len(depths))]
        unknown = [f for f in out_features if f not in stage_names]
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES {unknown} are not among {stage_names}")
        swin = SwinTransformer(
            img_size=pretrain_img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
            embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size,
            always_partition=True, strict_img_size=False, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_rate=drop_rate, proj_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
        )
        if use_checkpoint:
            swin.set_grad_checkpointing(True)
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        self._out_features = list(out_features)
        self._out_feature_strides = {}
        self._out_feature_channels = {}
        for i, name in enumerate(stage_names):
            channels = int(embed_dim * 2 ** i)
            self._out_feature_strides[name] = patch_size * 2 ** i
            self._out_feature_channels[name] = channels
            if name in self._out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(channels))
        self._stage_names = stage_names

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        s = cfg.MODEL.SWIN
        problems = _unsupported(s)
        if problems:
            raise ValueError("Swin backbone: unsupported settings: " + "; ".join(problems))
        return {
            "in_chans": input_shape.channels, "pretrain_img_size": s.PRETRAIN_IMG_SIZE, "patch_size": s.PATCH_SIZE,
            "embed_dim": s.EMBED_DIM, "depths": s.DEPTHS, "num_heads": s.NUM_HEADS, "window_size": s.WINDOW_SIZE,
            "mlp_ratio": s.MLP_RATIO, "qkv_bias": s.QKV_BIAS, "drop_rate": s.DROP_RATE,
            "attn_drop_rate": s.ATTN_DROP_RATE, "drop_path_rate": s.DROP_PATH_RATE, "out_features": s.OUT_FEATURES,
            "use_checkpoint": s.USE_CHECKPOINT,
        }

    def forward(self, x) -> Dict[str, torch.Tensor]:
        """x: (B, 3, H, W) with H, W multiples of 32 -> {"res2": (B, C, H/4, W/4), ...}"""
        if x.dim() != 4:
            raise ValueError(f"Swin backbone expects (B, C, H, W) input, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.patch_embed(x)  # (B, H/4, W/4, C)
        for i, (name, stage) in enumerate(zip(self._stage_names, self.layers)):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous()
        return outputs

    def output_shape(self):
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32


@BACKBONE_REGISTRY.register()
def D2SwinTransformer(cfg, input_shape: ShapeSpec) -> SwinTransformerBackbone:  # noqa: N802 (the authors' name)
    return SwinTransformerBackbone(cfg, input_shape)
