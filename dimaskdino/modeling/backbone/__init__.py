"""Backbones beyond detectron2's builtin ResNet (importing registers them) and a faster stem pooling
for it."""
from .resnet_stem import ChannelsLastPoolStem, use_channels_last_stem_pooling
from .swin import SwinTransformerBackbone

__all__ = ["ChannelsLastPoolStem", "SwinTransformerBackbone", "use_channels_last_stem_pooling"]
