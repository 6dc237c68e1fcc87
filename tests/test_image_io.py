"""Image reading: 16-bit images scaled to 8 bits (not clipped to white), formats that already
worked unchanged (checked against detectron2's reader), unreadable files named."""
import copy
import pathlib

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import detection_utils as d2_utils
from PIL import Image

from dimaskdino.data.image_io import UnreadableImageError, read_image
from dimaskdino.data.mappers import DETRInstanceDatasetMapper


def _pattern(height=48, width=64):
    """(H, W, 3) uint8 RGB with every value 0..255 present."""
    values = np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3)
    return ((values * 7) % 256).astype(np.uint8)


def _write_16bit(path, rgb8, gray):
    sixteen = rgb8.astype(np.uint16) * 257  # the exact 16-bit version of an 8-bit image
    cv2.imwrite(str(path), sixteen[:, :, 0] if gray else sixteen[:, :, ::-1])
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_16bit_grayscale_png_reads_as_its_8bit_version_not_white(tmp_path):
    rgb = _pattern()
    _write_16bit(tmp_path / "g16.png", rgb, gray=True)
    cv2.imwrite(str(tmp_path / "g8.png"), rgb[:, :, 0])
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert (d2_utils.read_image(str(tmp_path / "g16.png"), "RGB") == 255).mean() > 0.99  # detectron2's bug
    for fmt in ("RGB", "BGR", "L"):
        ours = read_image(str(tmp_path / "g16.png"), fmt)
        assert np.array_equal(ours, d2_utils.read_image(str(tmp_path / "g8.png"), fmt)), fmt


def test_16bit_values_are_scaled_over_the_full_range(tmp_path):
    values = np.array([[0, 257, 32768, 65535, 128, 129]], np.uint16)
    cv2.imwrite(str(tmp_path / "ramp.png"), values)
    expected = np.array([0, 1, 128, 255, 0, 1], np.uint8)  # round(v * 255 / 65535) by hand
    assert read_image(str(tmp_path / "ramp.png"), "L")[0, :, 0].tolist() == expected.tolist()


def test_16bit_rgb_png_reads_as_its_8bit_version(tmp_path):
    rgb = _pattern()
    _write_16bit(tmp_path / "rgb16.png", rgb, gray=False)
    assert np.array_equal(read_image(str(tmp_path / "rgb16.png"), "RGB"), rgb)


@pytest.mark.parametrize(
    "name, make",
    [
        ("one_pixel.png", lambda: Image.new("RGB", (1, 1), (10, 20, 30))),
        ("gray.png", lambda: Image.fromarray(_pattern()[:, :, 0])),
        ("rgba.png", lambda: Image.fromarray(np.dstack([_pattern(), _pattern()[:, :, :1]]))),
        ("palette.png", lambda: Image.fromarray(_pattern()).convert("P")),
        ("cmyk.jpg", lambda: Image.fromarray(_pattern()).convert("CMYK")),
        ("wide.png", lambda: Image.fromarray(_pattern(2, 900))),
        ("tall.png", lambda: Image.fromarray(_pattern(900, 1))),
        ("bilevel.png", lambda: Image.fromarray(_pattern()[:, :, 0]).convert("1")),
    ],
)
@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_8bit_formats_read_as_detectron2_reads_them(tmp_path, name, make, fmt):
    path = str(tmp_path / name)
    make().save(path)
    ours = read_image(path, fmt)
    assert ours.dtype == np.uint8 and ours.ndim == 3 and ours.shape[2] == 3
    assert np.array_equal(ours, d2_utils.read_image(path, fmt))


def test_float_and_wide_integer_images_are_refused_naming_file_and_mode(tmp_path):
    path = str(tmp_path / "depth.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(path)
    with pytest.raises(UnreadableImageError, match=r"depth.tif: mode 'F' \(32-bit float\)"):
        read_image(path)
    path = str(tmp_path / "wide.tif")
    Image.fromarray(np.full((4, 4), 100000, np.int32)).save(path)
    with pytest.raises(UnreadableImageError, match=r"wide.tif: mode 'I' .*100000"):
        read_image(path)


def test_missing_corrupt_and_truncated_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        read_image(str(tmp_path / "nowhere.png"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UnreadableImageError, match="corrupt.png: not an image, or the file is corrupt"):
        read_image(str(corrupt))
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), _pattern())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UnreadableImageError, match="truncated.jpg"):
        read_image(str(truncated))


def test_16bit_png_gives_the_same_detections_as_its_8bit_version(tmp_path):
    from tiny_training import tiny_cfg, tiny_model

    rgb = _pattern(64, 64)
    _write_16bit(tmp_path / "x16.png", rgb, gray=False)
    _write_16bit(tmp_path / "g16.png", rgb, gray=True)
    cv2.imwrite(str(tmp_path / "x8.png"), rgb[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "g8.png"), rgb[:, :, 0])
    cfg = tiny_cfg(pathlib.Path(__file__).resolve().parents[1])
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 64
    model = tiny_model(cfg).eval()
    mapper = DETRInstanceDatasetMapper(cfg, is_train=False)  # the evaluation loader's mapper
    for name16, name8 in (("x16.png", "x8.png"), ("g16.png", "g8.png")):
        inputs = [mapper({"file_name": str(tmp_path / n), "height": 64, "width": 64, "image_id": 0})
                  for n in (name16, name8)]
        assert np.array_equal(inputs[0]["image"], inputs[1]["image"])
        with torch.no_grad():
            out16, out8 = (model([copy.deepcopy(x)])[0]["instances"] for x in inputs)
        assert torch.equal(out16.scores, out8.scores) and torch.equal(out16.pred_boxes.tensor, out8.pred_boxes.tensor)
        assert torch.equal(out16.pred_masks, out8.pred_masks)
    assert len(out8) > 0
    assert (np.asarray(inputs[0]["image"]) < 250).any()  # not an all-white image
