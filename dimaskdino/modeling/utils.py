"""Small tensor helpers shared by the model modules."""
import contextlib
from typing import List

import torch

from ..layers.level_shapes import spatial_shapes_tensor

__all__ = ["autocast_disabled", "flatten_levels", "gather_rows"]


def autocast_disabled(device):
    """A context in which mixed precision is off on ``device``'s type (the deformable parts run in
    float32, as in the authors' code)."""
    device_type = torch.device(device).type
    if device_type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def flatten_levels(maps: List[torch.Tensor]):
    """Flatten feature maps into one token sequence.

    Args:
        maps: L tensors (B, C, H_l, W_l)
    Returns:
        tokens: (B, S, C), S = sum of H_l * W_l, level after level, row-major inside a level
        spatial_shapes: (L, 2) int64 (H_l, W_l)
        level_start_index: (L,) int64
    """
    tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
    spatial_shapes = spatial_shapes_tensor([m.shape[-2:] for m in maps], tokens.device)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))
    return tokens, spatial_shapes, level_start_index


def gather_rows(x, index):
    """Pick rows of a batch of sequences.

    Args:
        x: (B, S, ...) ; index: (B, K) int64
    Returns:
        (B, K, ...)
    """
    expanded = index.reshape(index.shape + (1,) * (x.dim() - 2)).expand(index.shape + x.shape[2:])
    return torch.gather(x, 1, expanded)
