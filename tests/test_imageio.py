"""Image I/O: explicit conversions, EXIF orientation, bad input, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pdc.errors import ImageError
from pdc.imageio import read_image, tensor_to_uint8, uint8_to_tensor, write_image


def _rgb(h: int = 20, w: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path):
    img = _rgb()
    write_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_tensor_round_trip():
    img = _rgb()
    np.testing.assert_array_equal(tensor_to_uint8(uint8_to_tensor(img)), img)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.arange(200, dtype=np.uint8).reshape(10, 20), "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (10, 20, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out[0, 5, 0] == 5


def test_16bit_is_scaled_to_8bit(tmp_path):
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    arr[0, 0] = 257 * 100
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out[1, 1, 0] == 255 and out[0, 0, 0] == 100


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent except one pixel
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[1, 1]) == (255, 255, 255)


def test_palette_image(tmp_path):
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (20, 30, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(10, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "o.jpg").shape == (30, 10, 3)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "no such file"), (b"", "empty file"), (b"hello, not an image", "not an image")],
)
def test_bad_files_raise_clear_errors(tmp_path, content, reason):
    p = tmp_path / "x.png"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as exc:
        read_image(p)
    assert str(p) in str(exc.value)


def test_truncated_png(tmp_path):
    write_image(tmp_path / "full.png", _rgb(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "cut.png")


def test_pixel_limit_refuses_before_decoding(tmp_path):
    write_image(tmp_path / "big.png", _rgb(100, 100))
    with pytest.raises(ImageError, match="pixel limit"):
        read_image(tmp_path / "big.png", max_pixels=5000)
