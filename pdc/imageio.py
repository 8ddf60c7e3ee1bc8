"""Image input/output: the one place where files become tensors and back.

Every image that enters pdc goes through :func:`read_image`, which returns 8-bit RGB (H, W, 3) uint8:

* EXIF orientation is applied, so what you see in a viewer is what gets coded;
* grayscale, grayscale+alpha, palette, CMYK, 16-bit and RGBA inputs are converted explicitly
  (16-bit is scaled to 8-bit by rounding, alpha is composited over white);
* a pixel limit guards against decompression bombs before any pixel is decoded;
* any failure raises :class:`pdc.errors.ImageError` naming the file and the problem.

:func:`write_image` writes PNG atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pdc.errors import ImageError
from pdc.fsutil import atomic_write_bytes

#: Default ceiling on width × height (≈ 8K × 8K); larger files are refused before decoding.
MAX_PIXELS = 64_000_000
#: File suffixes treated as images when a folder is listed (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
#: The formats a training/test corpus is imported from (``pdc data import/fetch``, the folder loader).
DATASET_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB with explicit, documented rules."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale the full 16-bit range to 8 bits with rounding.
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.round(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow's conversions are exact for L/1 and standard for the rest.
    return img.convert("RGB")


def read_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as 8-bit RGB, shape (H, W, 3), dtype uint8.

    Raises :class:`ImageError` for a missing file, a non-image, a truncated or corrupt file, or an
    image over ``max_pixels``.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(p, "no such file")
    if not p.is_file():
        raise ImageError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise ImageError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(p, f"{w}x{h} exceeds the pixel limit of {max_pixels} (decompression bomb guard)")
                if w < 1 or h < 1:
                    raise ImageError(p, f"invalid size {w}x{h}")
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb8(img)
                arr = np.array(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(p, "not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(p, f"too many pixels: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncation and corrupt streams as OSError/SyntaxError.
        raise ImageError(p, f"corrupt or truncated image ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - _to_rgb8 guarantees this
        raise ImageError(p, f"unexpected decoded shape {arr.shape}")
    return arr


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array (deterministic: no timestamps, fixed compression)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_image(path: str | os.PathLike[str], image: np.ndarray | torch.Tensor) -> None:
    """Write an RGB image atomically as PNG. Accepts uint8 (H, W, 3) or a float tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = tensor_to_uint8(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"write_image expects (H, W, 3) uint8, got {image.shape} {image.dtype}")
    atomic_write_bytes(path, encode_png(image))


def uint8_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] → (H, W, 3) uint8, rounding to nearest."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError("tensor_to_uint8 takes a single image")
        x = x[0]
    arr = x.detach().float().clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(arr)


def load_tensor(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """:func:`read_image` as a (1, 3, H, W) float tensor in [0, 1]."""
    return uint8_to_tensor(read_image(path, max_pixels=max_pixels))
