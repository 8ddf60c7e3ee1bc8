"""Validation and import of image folders, with a JSON report.

Every candidate file (any regular, non-hidden file under the folder) ends up in exactly one state:

* ``ok``        – an 8-bit RGB image in an accepted format, copied as PNG unchanged in pixels;
* ``converted`` – usable after an explicit conversion (grayscale, palette, alpha, CMYK, 16-bit, EXIF
  orientation, extra TIFF frames); each conversion is listed;
* ``rejected``  – unusable, with the reason: zero-byte, non-image, corrupt, truncated, over the pixel
  limit (decompression-bomb guard, checked from the header before decoding), smaller than the minimum
  side (the training crop size), an unaccepted format, or a name clash after normalization.

Decoding and conversion rules are those of :func:`pdc.imageio.read_image`, the single entry point for
images in pdc.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pdc.fsutil import list_files, staging_dir, write_file
from pdc.errors import DataError, ImageError
from pdc.fsutil import atomic_write_bytes
from pdc.imageio import MAX_PIXELS, encode_png, read_image

#: Formats accepted for import (Pillow format names); MPO is the multi-picture JPEG some cameras write.
ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF")
#: Default minimum width and height: the training crop size.  Smaller images are rejected.
DEFAULT_MIN_SIZE = 256

Status = Literal["ok", "converted", "rejected"]
Progress = Callable[[int, int], None]


@dataclass
class FileResult:
    """The outcome for one file (paths are relative POSIX paths)."""

    path: str
    status: Status
    reason: str | None = None
    conversions: list[str] = field(default_factory=list)
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    output: str | None = None


@dataclass
class Report:
    """Validation/import report, written as JSON."""

    source: str
    min_size: int
    max_pixels: int
    files: list[FileResult] = field(default_factory=list)
    destination: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        c = {"ok": 0, "converted": 0, "rejected": 0}
        for f in self.files:
            c[f.status] += 1
        return c

    @property
    def rejected(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "rejected"]

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "destination": self.destination,
            "min_size": self.min_size,
            "max_pixels": self.max_pixels,
            "counts": self.counts,
            "files": [asdict(f) for f in self.files],
        }


def write_report(report: Report, path: Path) -> None:
    """Write ``report`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(report.to_dict(), indent=2) + "\n").encode())


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _describe(path: Path) -> tuple[str, str, list[str]]:
    """(format, mode, conversions) from the header of a file that :func:`read_image` already accepted."""
    conv: list[str] = []
    with Image.open(path) as img:
        fmt, mode = str(img.format), img.mode
        info = dict(img.info)
        orientation = img.getexif().get(0x0112, 1)
        n_frames = getattr(img, "n_frames", 1)
        bits: tuple[int, ...] = ()
        if fmt == "TIFF":
            raw = img.tag_v2.get(258, ())  # BitsPerSample
            bits = tuple(raw) if isinstance(raw, tuple) else (int(raw),)
    if fmt == "PNG" and (_png_bit_depth(path) or 8) > 8 or any(b > 8 for b in bits):
        conv.append("16-bit -> 8-bit")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        if "16-bit -> 8-bit" not in conv:
            conv.append("16-bit -> 8-bit")
        conv.append("grayscale -> RGB")
    elif mode == "F":
        conv.append("float -> 8-bit")
        conv.append("grayscale -> RGB")
    elif mode in ("L", "1"):
        conv.append("grayscale -> RGB")
    elif mode == "P":
        conv.append("palette -> RGB")
        if "transparency" in info:
            conv.append("alpha composited over white")
    elif mode in ("LA", "La"):
        conv.append("grayscale -> RGB")
        conv.append("alpha composited over white")
    elif mode in ("RGBA", "RGBa", "PA"):
        conv.append("alpha composited over white")
    elif mode == "CMYK":
        conv.append("CMYK -> RGB")
    elif mode != "RGB":
        conv.append(f"{mode} -> RGB")
    if orientation not in (None, 1):
        conv.append(f"EXIF orientation {orientation} applied")
    if n_frames > 1:
        conv.append(f"first of {n_frames} frames kept")
    return fmt, mode, conv


def inspect_file(
    path: Path, rel: str, *, min_size: int = DEFAULT_MIN_SIZE, max_pixels: int = MAX_PIXELS
) -> tuple[FileResult, np.ndarray | None]:
    """Check one file; return its result and, unless rejected, its pixels as (H, W, 3) uint8 RGB."""
    try:
        pixels = read_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        return FileResult(rel, "rejected", reason=exc.reason), None
    fmt, mode, conversions = _describe(path)
    h, w = pixels.shape[:2]
    res = FileResult(
        rel, "converted" if conversions else "ok", conversions=conversions, format=fmt, mode=mode, width=w, height=h
    )
    if fmt not in ACCEPTED_FORMATS:
        res.status, res.reason = "rejected", f"unsupported format {fmt} (accepted: PNG, JPEG, WebP, TIFF)"
        return res, None
    if min(w, h) < min_size:
        res.status, res.reason = "rejected", f"too small: {w}x{h}, both sides must be >= {min_size} (crop size)"
        return res, None
    return res, pixels


def _check_folder(src: Path) -> Path:
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: no such folder")
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    return src


def validate_folder(
    src: Path,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = MAX_PIXELS,
    progress: Progress | None = None,
) -> Report:
    """Check every file under ``src`` without writing anything; return the report."""
    src = _check_folder(src)
    files = list_files(src)
    report = Report(source=str(src), min_size=min_size, max_pixels=max_pixels)
    for i, rel in enumerate(files):
        res, _ = inspect_file(src / rel, rel.as_posix(), min_size=min_size, max_pixels=max_pixels)
        report.files.append(res)
        if progress:
            progress(i + 1, len(files))
    return report


def import_folder(
    src: Path,
    dest: Path,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = MAX_PIXELS,
    progress: Progress | None = None,
) -> Report:
    """Copy every usable image under ``src`` into ``dest`` as 8-bit RGB PNG (same relative paths, ``.png``).

    ``dest`` is replaced as a whole, atomically (built in a staging folder next to it, then renamed).
    Raises :class:`DataError` if ``src`` is missing or nothing in it is usable.
    """
    src = _check_folder(src)
    dest = Path(dest)
    if dest.resolve() == src.resolve() or src.resolve() in dest.resolve().parents:
        raise DataError(f"{dest}: destination must not be inside the source folder {src}")
    files = list_files(src)
    report = Report(source=str(src), destination=str(dest), min_size=min_size, max_pixels=max_pixels)
    taken: dict[str, str] = {}
    with staging_dir(dest) as tmp:
        for i, rel in enumerate(files):
            res, pixels = inspect_file(src / rel, rel.as_posix(), min_size=min_size, max_pixels=max_pixels)
            if pixels is not None:
                out = rel.with_suffix(".png").as_posix()
                if out in taken:
                    res.status, res.reason = "rejected", f"output name {out} already taken by {taken[out]}"
                else:
                    taken[out] = res.path
                    res.output = out
                    write_file(tmp / out, encode_png(pixels))
            report.files.append(res)
            if progress:
                progress(i + 1, len(files))
        if not taken:
            raise DataError(f"{src}: no usable image among {len(files)} file(s); nothing imported")
    return report


def default_report_path(name: str, root: Path = Path("data/reports")) -> Path:
    """``data/reports/<name>.json``."""
    return Path(root) / f"{os.path.basename(os.path.normpath(str(name))) or 'report'}.json"
