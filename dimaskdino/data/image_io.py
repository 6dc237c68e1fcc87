"""The one function that reads image files for training, evaluation, the demo and the tools.

detectron2's ``read_image`` converts a 16-bit grayscale PNG (Pillow mode "I;16" or "I") to RGB by
clipping every value above 255, so such an image becomes all white. Here high-bit-depth images are
scaled to 8 bits over their full range (value * 255 / 65535, rounded; an 8-bit image saved as 16
bits by multiplying by 257 reads back exactly), and images that cannot be scaled without guessing
(32-bit float, 32-bit integers beyond 16 bits) are refused with an error naming the file and mode.
16-bit RGB(A) PNGs are already reduced to 8 bits per channel by Pillow (the high byte of each value).
Every other Pillow mode (1, L, P, RGB, RGBA, CMYK, LA, ...) goes through detectron2's conversion
unchanged, after the EXIF orientation is applied.
"""
import os

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["UnreadableImageError", "read_image", "to_8bit"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_UINT16_MAX = 65535


class UnreadableImageError(ValueError):
    """An image file that is not an image, is corrupt or truncated, or has an unsupported mode."""


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """(H, W) integers in [0, 65535] -> (H, W) uint8, 65535 -> 255, rounded to nearest."""
    return np.round(values.astype(np.float64) * (255.0 / _UINT16_MAX)).astype(np.uint8)


def to_8bit(image: Image.Image, path: str = "<image>") -> Image.Image:
    """A Pillow image with 8 bits per channel: 16-bit grayscale scaled to mode "L"; other 8-bit
    modes returned as they are.

    Raises:
        UnreadableImageError naming ``path`` and the mode when the image cannot be scaled.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(_scale_16_to_8(np.asarray(image)))
    if image.mode == "I":  # 32-bit signed; Pillow also reads 16-bit PNGs this way
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
            raise UnreadableImageError(
                f"Image {path}: mode 'I' (32-bit integers) with values in [{values.min()}, {values.max()}] "
                "cannot be scaled to 8 bits without guessing its range; convert it to an 8- or 16-bit image."
            )
        return Image.fromarray(_scale_16_to_8(values))
    if image.mode == "F" or image.mode.startswith("I;"):
        raise UnreadableImageError(
            f"Image {path}: mode {image.mode!r} ({'32-bit float' if image.mode == 'F' else 'high bit depth'}) "
            "is not supported; convert it to an 8- or 16-bit image."
        )
    return image


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """Read ``path`` as (H, W, C) uint8 in ``format`` ("BGR", "RGB", "L" gives C=1, ...), as
    detectron2's ``read_image`` does, with honest high-bit-depth handling (module docstring).

    Raises:
        FileNotFoundError when the file does not exist; UnreadableImageError (a ValueError) naming
        the file when it is not an image, is corrupt or truncated, or cannot be scaled to 8 bits.
    """
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path}")
    with PathManager.open(path, "rb") as f:
        try:
            image = Image.open(f)
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UnreadableImageError(
                f"Cannot read image {path}: not an image, or the file is corrupt or truncated ({e})."
            ) from None
        image = to_8bit(ImageOps.exif_transpose(image), path)
        return utils.convert_PIL_to_numpy(image, format)
