"""Sine position encodings: one for pixel positions of feature maps, one for query boxes.

Both interleave sine and cosine along the channel axis: channel 2i is sin(p / T**(2i/F)) and
channel 2i+1 is cos(p / T**(2i/F)), with F features per coordinate and temperature T.
"""
import math

import torch

__all__ = ["pixel_centres", "pixel_sine_embedding", "box_sine_embedding"]


def _frequencies(num_feats: int, temperature: float, device):
    """(F,) divisors T ** (2 * (i // 2) / F)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(angles):
    """angles: (..., F) -> (..., F) with sin at even and cos at odd channels."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def pixel_centres(height: int, width: int, device=None):
    """Normalised (x, y) centres of the pixels of a height x width map, row-major: (H * W, 2) float32."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    return torch.stack((xs[None, :].expand(height, width), ys[:, None].expand(height, width)), dim=-1).reshape(-1, 2)


def pixel_sine_embedding(
    height: int,
    width: int,
    num_feats: int,
    device=None,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
):
    """Normalised 2D sine encoding of the pixel grid of one feature map (no padding mask).

    Row i (1-based) is encoded from i / (height + 1e-6) * scale, column j likewise; the y features
    come first.

    Returns:
        (height, width, 2 * num_feats) float32
    """
    eps = 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = _frequencies(num_feats, temperature, device)
    pos_y = _interleave_sin_cos(y[:, None] / dim_t)  # (H, F)
    pos_x = _interleave_sin_cos(x[:, None] / dim_t)  # (W, F)
    return torch.cat(
        (pos_y[:, None, :].expand(height, width, num_feats), pos_x[None, :, :].expand(height, width, num_feats)),
        dim=-1,
    )


def box_sine_embedding(boxes, num_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
    """Sine encoding of normalised query boxes or points.

    Args:
        boxes: (..., 4) cxcywh or (..., 2) cxcy, in [0, 1]
        num_feats: features per coordinate (hidden_dim // 2 in the model)
    Returns:
        (..., 4 * num_feats) in the order (y, x, w, h), or (..., 2 * num_feats) in the order (y, x)
    """
    if boxes.shape[-1] not in (2, 4):
        raise ValueError(f"box_sine_embedding: boxes must end in 2 or 4 coordinates, got shape {tuple(boxes.shape)}")
    dim_t = _frequencies(num_feats, temperature, boxes.device)
    embedded = [_interleave_sin_cos((boxes[..., k] * scale)[..., None] / dim_t) for k in range(boxes.shape[-1])]
    x, y = embedded[0], embedded[1]
    return torch.cat([y, x] + embedded[2:], dim=-1)
