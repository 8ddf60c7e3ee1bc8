"""Per-image evaluation of a model package on a folder of images (``pdc eval``).

For every image and mode, the file is really written (in memory) and its bytes counted; the metrics
come from :mod:`pdc.metrics`. Decoding is checked against the encoder's simulation on the way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pdc.bitstream import Mode
from pdc.codec import compress, decompress
from pdc.imageio import load_tensor
from pdc.metrics import bpp, ms_ssim, psnr, MS_SSIM_MIN_SIDE
from pdc.models.package import CorrDiffModel

def center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if not size:
        return x
    h, w = x.shape[-2:]
    s_h, s_w = min(size, h), min(size, w)
    top, left = (h - s_h) // 2, (w - s_w) // 2
    return x[..., top : top + s_h, left : left + s_w]


def evaluate_images(
    model: CorrDiffModel,
    paths: Sequence[Path],
    modes: Sequence[Mode] = (Mode.CORRDIFF, Mode.DIFFUSION, Mode.E2E),
    *,
    steps: int | None = None,
    gamma: float | None = None,
    crop: int | None = None,
    seed: int = 0,
    with_lpips: bool = True,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Per-image rows and per-mode means of bpp, PSNR, MS-SSIM, LPIPS, timings and λ overhead."""
    lpips_fn = None
    if with_lpips:
        from pdc.metrics.perceptual import lpips as lpips_fn
    rows: list[dict[str, Any]] = []
    for path in paths:
        x = center_crop(load_tensor(path), crop)
        h, w = x.shape[-2:]
        for mode in modes:
            t0 = time.perf_counter()
            enc = compress(model, x, mode=mode, steps=steps, seed=seed, gamma=gamma)
            t1 = time.perf_counter()
            dec = decompress(model, enc.data)
            t2 = time.perf_counter()
            row: dict[str, Any] = {
                "image": path.name,
                "mode": mode.name.lower(),
                "height": h,
                "width": w,
                "bytes": len(enc.data),
                "bpp": bpp(len(enc.data), h, w),
                "lambda_bytes": enc.lambda_bytes,
                "psnr": psnr(dec, x),
                "ms_ssim": ms_ssim(dec, x) if min(h, w) >= MS_SSIM_MIN_SIDE else float("nan"),
                "encode_s": t1 - t0,
                "decode_s": t2 - t1,
                "max_abs_diff_vs_encoder": float((dec - enc.reconstruction).abs().max()),
                "levels": enc.levels,
            }
            if lpips_fn is not None:
                row["lpips"] = lpips_fn(dec, x)
            rows.append(row)
            if on_image is not None:
                on_image(row)
    return {"images": rows, "mean": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean of every numeric field per mode."""
    out: dict[str, dict[str, float]] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        keys = [k for k, v in sel[0].items() if isinstance(v, (int, float)) and k not in ("height", "width")]
        out[mode] = {k: sum(r[k] for r in sel) / len(sel) for k in keys}
        out[mode]["images"] = len(sel)
    return out
