"""PSNR, MS-SSIM and bpp against independent implementations and definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as reference_ms_ssim
from skimage.metrics import peak_signal_noise_ratio

from pdc.errors import MetricError
from pdc.imageio import load_tensor
from pdc.metrics import bpp, ms_ssim, psnr


def _noisy_pair(seed: int = 0, size: tuple[int, int] = (200, 240)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, *size, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # some structure, not white noise
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return (x * 255).round() / 255, (y * 255).round() / 255


def test_psnr_matches_skimage():
    x, y = _noisy_pair()
    ref = peak_signal_noise_ratio(
        (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
        (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
        data_range=255,
    )
    assert psnr(x, y) == pytest.approx(ref, abs=1e-4)


def test_psnr_identical_is_inf():
    x, _ = _noisy_pair()
    assert math.isinf(psnr(x, x))


@pytest.mark.parametrize("size", [(200, 240), (181, 197)])  # even and odd sizes
def test_ms_ssim_matches_pytorch_msssim(size):
    x, y = _noisy_pair(1, size)
    ref = float(reference_ms_ssim(x, y, data_range=1.0, size_average=True))
    assert ms_ssim(x, y) == pytest.approx(ref, abs=1e-4)


def test_ms_ssim_on_kodak(kodak):
    x = load_tensor(kodak / "kodim01.png")
    y = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    ref = float(reference_ms_ssim(x, y, data_range=1.0))
    assert ms_ssim(x, y) == pytest.approx(ref, abs=1e-4)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-9)


def test_ms_ssim_rejects_tiny_images():
    x = torch.rand(1, 3, 1, 1)
    with pytest.raises(MetricError, match="at least 161x161"):
        ms_ssim(x, x)


def test_size_mismatch():
    with pytest.raises(MetricError, match="differ in size"):
        psnr(torch.rand(1, 3, 10, 10), torch.rand(1, 3, 10, 12))


def test_bpp_counts_bits_per_pixel():
    assert bpp(48, 16, 24) == 1.0
    assert bpp(0, 1, 1) == 0.0
    with pytest.raises(MetricError):
        bpp(10, 0, 5)
