"""Backbones beyond detectron2's builtin ResNet (importing registers them)."""
from .swin import SwinTransformerBackbone

__all__ = ["SwinTransformerBackbone"]
