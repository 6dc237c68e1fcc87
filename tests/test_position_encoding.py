"""Sine position encodings against a direct evaluation of their formula."""
import math

import torch

from dimaskdino.layers.position_encoding import box_sine_embedding, pixel_sine_embedding


def sine_features(value: float, num_feats: int, temperature: float = 10000.0):
    """[sin(v / T^(0/F)), cos(v / T^(0/F)), sin(v / T^(2/F)), cos(v / T^(2/F)), ...] in float64."""
    out = []
    for i in range(num_feats):
        angle = value / temperature ** (2 * (i // 2) / num_feats)
        out.append(math.sin(angle) if i % 2 == 0 else math.cos(angle))
    return torch.tensor(out, dtype=torch.float64)


def test_pixel_embedding_formula():
    h, w, f = 3, 5, 8
    pos = pixel_sine_embedding(h, w, f)
    assert pos.shape == (h, w, 2 * f) and pos.dtype == torch.float32
    for i in range(h):
        for j in range(w):
            y = (i + 1) / (h + 1e-6) * 2 * math.pi
            x = (j + 1) / (w + 1e-6) * 2 * math.pi
            expected = torch.cat([sine_features(y, f), sine_features(x, f)])
            assert torch.allclose(pos[i, j].double(), expected, atol=1e-5), (i, j)


def test_box_embedding_order_y_x_w_h():
    f = 6
    box = torch.tensor([[0.1, 0.7, 0.3, 0.05]])
    emb = box_sine_embedding(box, f)
    assert emb.shape == (1, 4 * f)
    two_pi = 2 * math.pi
    expected = torch.cat([sine_features(0.7 * two_pi, f), sine_features(0.1 * two_pi, f),
                          sine_features(0.3 * two_pi, f), sine_features(0.05 * two_pi, f)])
    assert torch.allclose(emb[0].double(), expected, atol=1e-5)
    points = box_sine_embedding(box[:, :2], f)
    assert torch.equal(points, emb[:, : 2 * f])


def test_box_embedding_keeps_leading_dims():
    boxes = torch.rand(2, 7, 4)
    assert box_sine_embedding(boxes, 128).shape == (2, 7, 512)
