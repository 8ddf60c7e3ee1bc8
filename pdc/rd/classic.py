"""Classic image codecs through Pillow: the JPEG / WebP / AVIF baselines of ``pdc evaluate``.

Every point is a real file: the bytes Pillow's encoder writes are the bytes counted (bpp = 8 × bytes /
pixels), and the reconstruction is what Pillow decodes back from those same bytes. Settings are the
libraries' usual "best effort" ones, fixed here so runs are comparable:

* JPEG (libjpeg-turbo): 4:2:0 chroma subsampling (Pillow's default), ``optimize=True`` (optimal Huffman
  tables, as ``cjpeg -optimize``), baseline, no EXIF/ICC.
* WebP (libwebp): lossy, ``method=6`` (slowest, best compression).
* AVIF (libavif/AOM, only where ``PIL.features.check('avif')``): 4:2:0, ``speed=6`` (Pillow's default).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, features


@dataclass(frozen=True)
class ClassicCodec:
    key: str  # file-safe id: jpeg, webp, avif
    name: str  # display name (CompressAI's plot tool dashes lines whose name contains JPEG/WebP)
    pil_format: str
    ext: str
    qualities: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        """Encode an (H, W, 3) uint8 RGB array; returns the complete file."""
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(
            buf, format=self.pil_format, quality=int(quality), **self.options
        )
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        """Decode a file written by :meth:`encode` back to (H, W, 3) uint8 RGB."""
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


JPEG_QUALITIES = (5, 10, 20, 40)
WEBP_QUALITIES = (5, 15, 30, 50)
AVIF_QUALITIES = (10, 25, 40, 55)


def avif_available() -> bool:
    try:
        return bool(features.check("avif"))
    except (ValueError, KeyError):  # older Pillow: unknown feature name
        return False


def classic_codecs(
    jpeg: tuple[int, ...] = JPEG_QUALITIES,
    webp: tuple[int, ...] = WEBP_QUALITIES,
    avif: tuple[int, ...] | None = AVIF_QUALITIES,
) -> list[ClassicCodec]:
    """The baselines available in this Pillow build (an empty quality tuple leaves a codec out)."""
    out = []
    if jpeg:
        out.append(ClassicCodec("jpeg", "JPEG (Pillow)", "JPEG", "jpg", tuple(jpeg), {"optimize": True}))
    if webp:
        out.append(ClassicCodec("webp", "WebP (Pillow)", "WEBP", "webp", tuple(webp), {"method": 6}))
    if avif and avif_available():
        out.append(ClassicCodec("avif", "AVIF (Pillow)", "AVIF", "avif", tuple(avif), {"speed": 6}))
    return out
