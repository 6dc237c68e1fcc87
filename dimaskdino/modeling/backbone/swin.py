"""Swin Transformer backbone for detectron2, built on timm's implementation.

Outputs res2..res5 (strides 4, 8, 16, 32; channels EMBED_DIM * 2**i), each through its own LayerNorm
(``norm0``..``norm3``), as the Swin detection backbones of Mask2Former/MaskDINO. Windows always keep
their configured size and shift (feature maps are padded to whole windows), as in those backbones.
Registered in ``BACKBONE_REGISTRY`` as "SwinTransformerBackbone" and, for the authors' yaml files,
"D2SwinTransformer". Weights converted for the authors' Swin (downsampling at the end of a stage) load
through :class:`dimaskdino.checkpoint.DIMaskDINOCheckpointer`, which moves them to timm's layout.
"""
from typing import Dict

import torch
from torch import nn

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

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        s = cfg.MODEL.SWIN
        problems = _unsupported(s)
        if problems:
            raise ValueError("Swin backbone: unsupported settings: " + "; ".join(problems))
        stage_names = [f"res{i + 2}" for i in range(len(s.DEPTHS))]
        unknown = [f for f in s.OUT_FEATURES if f not in stage_names]
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES {unknown} are not among {stage_names}")
        swin = SwinTransformer(
            img_size=s.PRETRAIN_IMG_SIZE,
            patch_size=s.PATCH_SIZE,
            in_chans=input_shape.channels,
            num_classes=0,
            embed_dim=s.EMBED_DIM,
            depths=tuple(s.DEPTHS),
            num_heads=tuple(s.NUM_HEADS),
            window_size=s.WINDOW_SIZE,
            always_partition=True,
            strict_img_size=False,
            mlp_ratio=s.MLP_RATIO,
            qkv_bias=s.QKV_BIAS,
            drop_rate=s.DROP_RATE,
            proj_drop_rate=s.DROP_RATE,
            attn_drop_rate=s.ATTN_DROP_RATE,
            drop_path_rate=s.DROP_PATH_RATE,
        )
        if s.USE_CHECKPOINT:
            swin.set_grad_checkpointing(True)
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        self._out_features = list(s.OUT_FEATURES)
        self._out_feature_strides = {}
        self._out_feature_channels = {}
        for i, name in enumerate(stage_names):
            channels = int(s.EMBED_DIM * 2 ** i)
            self._out_feature_strides[name] = s.PATCH_SIZE * 2 ** i
            self._out_feature_channels[name] = channels
            if name in self._out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(channels))
        self._stage_names = stage_names

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


BACKBONE_REGISTRY._do_register("D2SwinTransformer", SwinTransformerBackbone)
