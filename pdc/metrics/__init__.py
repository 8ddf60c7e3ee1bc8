"""Rate, distortion and perception metrics — the single definition used everywhere in pdc.

All image metrics take float tensors in [0, 1], shape (N, 3, H, W) or (3, H, W), RGB.

======== ============================================================================================
metric   definition
======== ============================================================================================
bpp      8 × (bytes actually written) / (H × W) of the original image
PSNR     on 8-bit RGB: both images rounded to 0..255, MSE over all pixels and channels,
         10·log10(255² / MSE); ``inf`` for identical images
MS-SSIM  Wang et al. 2003: 5 scales, 11×11 Gaussian σ=1.5, K1=0.01, K2=0.03, weights
         (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); needs both sides ≥ 161 px (pytorch-msssim, float64)
LPIPS    Zhang et al. 2018 v0.1, AlexNet (default) or VGG16 backbone, inputs scaled to [-1, 1]
FID/KID  InceptionV3 pool features of 256×256 patches (HiFiC / MS-ILLM protocol), see
         :mod:`pdc.metrics.fid`
======== ============================================================================================
"""

from __future__ import annotations

import math

import torch

from pdc.errors import MetricError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN_SIZE = 11
_WIN_SIGMA = 1.5
_K = (0.01, 0.03)
#: Smallest side MS-SSIM accepts: the 11-px window must still fit after 4 halvings.
MS_SSIM_MIN_SIDE = (_WIN_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of a file of ``num_bytes`` bytes coding an image of ``height`` × ``width``."""
    if height <= 0 or width <= 0:
        raise MetricError(f"bpp needs a positive image size, got {height}x{width}")
    return 8.0 * num_bytes / (height * width)


def _batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise MetricError(f"expected RGB images of shape (N, 3, H, W), got {tuple(x.shape)}")
    return x.float()


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _batch(x), _batch(y)
    if x.shape != y.shape:
        raise MetricError(f"images differ in size: {tuple(x.shape[-2:])} vs {tuple(y.shape[-2:])}")
    return x, y


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of 8-bit RGB images (mean over the batch of per-image PSNR)."""
    x, y = _pair(x, y)
    x8 = x.clamp(0, 1).mul(255).round()
    y8 = y.clamp(0, 1).mul(255).round()
    mse = (x8 - y8).double().pow(2).flatten(1).mean(1)
    vals = [math.inf if m == 0 else 10 * math.log10(255.0**2 / m) for m in mse.tolist()]
    return sum(vals) / len(vals)


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """MS-SSIM of RGB images in [0, 1] (per channel, averaged over channels and batch), by pytorch-msssim
    with the parameters above on float64 images (its window is float32: ±2e-6 of a float64 window)."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    x, y = _pair(x, y)
    h, w = x.shape[-2:]
    if min(h, w) < MS_SSIM_MIN_SIDE:
        raise MetricError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE} px, got {w}x{h}")
    val = _ms_ssim(x.double(), y.double(), data_range=1.0, size_average=True, win_size=_WIN_SIZE,
                   win_sigma=_WIN_SIGMA, weights=list(MS_SSIM_WEIGHTS), K=_K)
    return float(val)
