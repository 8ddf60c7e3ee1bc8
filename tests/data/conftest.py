"""Fixtures for the data tests: small image files of every kind, written into tmp_path."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 noise: incompressible, so file sizes and corruptions are realistic."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit RGB, with a tiny (bogus) IDAT: never decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def write_kind(folder: Path, kind: str, name: str | None = None, size: int = 48) -> Path:
    """Write one file of the given kind into ``folder``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = noise(size, size)
    if kind == "rgb":
        p = folder / (name or "rgb.png")
        p.write_bytes(png_bytes(rgb))
    elif kind == "jpeg":
        p = folder / (name or "photo.jpg")
        Image.fromarray(rgb).save(p, quality=90)
    elif kind == "webp":
        p = folder / (name or "photo.webp")
        Image.fromarray(rgb).save(p, lossless=True)
    elif kind == "corrupt":
        p = folder / (name or "corrupt.png")
        data = bytearray(png_bytes(rgb))
        idat = data.index(b"IDAT")
        for i in range(idat + 40, idat + 80):  # inside the compressed stream: the chunk CRC no longer matches
            data[i] ^= 0xFF
        p.write_bytes(bytes(data))
    elif kind == "truncated":
        p = folder / (name or "truncated.png")
        data = png_bytes(rgb)
        p.write_bytes(data[: len(data) // 2])
    elif kind == "zero":
        p = folder / (name or "zero.png")
        p.write_bytes(b"")
    elif kind == "nonimage":
        p = folder / (name or "notes.png")
        p.write_text("this is not an image\n")
    elif kind == "small":
        p = folder / (name or "small.png")
        p.write_bytes(png_bytes(noise(8, 40)))
    elif kind == "gigapixel":
        p = folder / (name or "huge.png")
        p.write_bytes(huge_png_header(10_000, 8_000))  # 80 Mpx > the 64 Mpx limit
    elif kind == "cmyk":
        p = folder / (name or "cmyk.jpg")
        Image.new("CMYK", (size, size), (0, 255, 255, 0)).save(p, quality=95)
    elif kind == "16bit":
        p = folder / (name or "gray16.png")
        Image.fromarray(np.full((size, size), 40000, dtype=np.uint16)).save(p)
    elif kind == "palette":
        p = folder / (name or "palette.png")
        img = Image.new("P", (size, size), 1)
        img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        img.save(p)
    elif kind == "alpha":
        p = folder / (name or "alpha.png")
        rgba = np.zeros((size, size, 4), dtype=np.uint8)
        rgba[..., 0] = 200
        rgba[: size // 2, :, 3] = 255  # top half opaque red, bottom half fully transparent
        Image.fromarray(rgba, mode="RGBA").save(p)
    elif kind == "gray":
        p = folder / (name or "gray.png")
        Image.fromarray(noise(size, size)[..., 0], mode="L").save(p)
    elif kind == "gif":
        p = folder / (name or "anim.gif")
        Image.fromarray(rgb).convert("P").save(p)
    else:  # pragma: no cover
        raise ValueError(kind)
    return p


@pytest.fixture
def make_file() -> Callable[..., Path]:
    return write_kind


@pytest.fixture
def rgb_folder(tmp_path: Path) -> Callable[[Path, int], list[Path]]:
    """Factory: ``n`` clean RGB PNGs (64x80 noise, distinct seeds) under ``folder``."""

    def make(folder: Path, n: int, start: int = 0, h: int = 64, w: int = 80) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for i in range(start, start + n):
            p = folder / f"img{i:03d}.png"
            p.write_bytes(png_bytes(noise(h, w, seed=i)))
            out.append(p)
        return out

    return make
