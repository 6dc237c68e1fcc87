"""Deterministic weights, image and targets shared by the exactness fixture's generator and its test.

Only torch here: the generator imports this next to the authors' package, the test next to ours.
"""
import math
from typing import Dict, Tuple

import torch

# the fixture's model: the 12-epoch config made small (hidden dim stays 256, which the authors' code
# requires), as (key, value) overrides
TINY_OPTS = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.SEM_SEG_HEAD.DIM_FEEDFORWARD", "256", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5",
    "MODEL.MaskDINO.DIM_FEEDFORWARD", "256", "MODEL.MaskDINO.DEC_LAYERS", "3", "MODEL.MaskDINO.TI_LAYERS", "2",
    "MODEL.MaskDINO.NUM_OBJECT_QUERIES", "20", "MODEL.MaskDINO.FIRST_SELECTED_QUERIES", "40",
    "MODEL.MaskDINO.NUM_GUIDING_TOKENS", "5", "MODEL.MaskDINO.DN_NUM", "20",
    "TEST.DETECTIONS_PER_IMAGE", "10", "MODEL.WEIGHTS", "",
]
WEIGHT_SEED = 2024
DN_SEED = 99
IMAGE_SIZE = (96, 128)
OUTPUT_SIZE = (120, 150)


def seeded_weights(shapes: Dict[str, Tuple[int, ...]], seed: int = WEIGHT_SEED) -> Dict[str, torch.Tensor]:
    """Random values for every state-dict entry, drawn in sorted key order (names in our naming):
    matrices ~ N(0, 1/fan_in), 1-d weights (norm scales) ~ 1 + N(0, 0.01), running variances in
    [0.5, 1.5), other vectors ~ N(0, 0.01)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key.endswith("running_var"):
            value = torch.rand(shape, generator=g) + 0.5
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = 0.1 * torch.randn(shape, generator=g)
        out[key] = value
    return out


def fixture_image(seed: int = 0) -> torch.Tensor:
    """(3, 96, 128) uint8, smooth random colours."""
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE_SIZE
    low = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g)
    image = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (image * 255).round().to(torch.uint8)


def fixture_targets():
    """Ground truth of the training-mode comparison: (boxes xyxy (3, 4), classes (3,), masks (3, 96, 128))."""
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [30.0, 5.0, 120.0, 70.0], [70.0, 40.0, 100.0, 95.0]])
    classes = torch.tensor([3, 1, 3])
    masks = torch.zeros(3, *IMAGE_SIZE, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    return boxes, classes, masks
