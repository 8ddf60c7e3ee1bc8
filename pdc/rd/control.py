"""The "e2e + matched noise" control: is CorrDiff's perceptual gain more than added noise?

LPIPS and FID reward texture, and Gaussian noise is texture. The control takes the e2e decoder's
reconstruction (the same file and bpp: the noise would be drawn at the decoder for free) and adds
Gaussian noise whose σ is chosen per image so that the noisy image's PSNR equals CorrDiff's PSNR on
that image. At equal rate and equal PSNR, CorrDiff should then beat the control on the perceptual
metrics; if it does not, its gain over e2e is what any noise would buy.

Two noise shapes: white (every band), and high-band (``band_sigma`` > 0: (I − L_σ)·n, the draw minus its
Gaussian low-pass at the correction's σ, rescaled to unit std). With a band-limited correction CorrDiff
departs from x_e through that same split, so the high-band control adds noise where CorrDiff adds detail;
white noise also disturbs the low band CorrDiff leaves faithful, which would make the control look worse
than a fair one.

σ is an oracle (chosen against the original and not counted in the rate), which only favours the
control. The noise draw is fixed by a seed, so the measured PSNR is a deterministic function of σ and
σ is found by bisection on that measurement, through :func:`pdc.metrics.psnr` itself (clamp to [0, 1],
round to 8 bit): the metric the evaluation reports is the one that is matched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pdc.metrics import psnr
from pdc.models.correction import lowpass

#: Upper end of the σ search (images in [0, 1]): beyond this, clamping saturates almost every pixel.
SIGMA_MAX = 4.0
#: Stop when the measured PSNR is this close to the target (dB).
PSNR_TOL_DB = 0.005


@dataclass(frozen=True)
class NoiseMatch:
    """Result of :func:`match_noise`: the noisy image, its σ and the PSNR it measures."""

    image: torch.Tensor  # (base + σ·noise) clamped to [0, 1], shape of the base
    sigma: float  # noise standard deviation on the [0, 1] scale (0: the base already meets the target)
    psnr: float  # measured PSNR of ``image`` against the reference
    target_psnr: float


def gaussian_noise(like: torch.Tensor, seed: int, band_sigma: float = 0.0) -> torch.Tensor:
    """A standard Gaussian of ``like``'s (N, C, H, W) shape, drawn on the CPU from ``seed``
    (device-independent). ``band_sigma`` > 0 keeps only what lies above the Gaussian low-pass of that σ
    (:func:`pdc.models.correction.lowpass`), rescaled to unit standard deviation."""
    noise = torch.randn(like.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    if band_sigma > 0:
        noise = noise - lowpass(noise, band_sigma)
        noise = noise / noise.std()
    return noise.to(like.device, like.dtype)


def match_noise(base: torch.Tensor, ref: torch.Tensor, target_psnr: float, *, seed: int, band_sigma: float = 0.0,
                tol_db: float = PSNR_TOL_DB, max_iter: int = 60) -> NoiseMatch:
    """Gaussian noise on ``base`` whose σ brings PSNR(noisy, ref) down to ``target_psnr``.

    σ = 0 when ``base`` is already at or below the target (noise cannot raise PSNR). Otherwise σ is
    bisected on the measured PSNR of ``(base + σ·n).clamp(0, 1)`` (``n`` one fixed draw, so PSNR falls
    with σ up to 8-bit rounding) until it lies within ``tol_db`` of the target; a target below what
    ``SIGMA_MAX`` reaches returns ``SIGMA_MAX`` with its (higher) PSNR. ``band_sigma``: see
    :func:`gaussian_noise`.
    """
    base = base.clamp(0, 1)
    clean = psnr(base, ref)
    if not clean > target_psnr:  # also a NaN target: nothing to match
        return NoiseMatch(base, 0.0, clean, target_psnr)
    noise = gaussian_noise(base, seed, band_sigma)

    def at(sigma: float) -> NoiseMatch:
        noisy = (base + sigma * noise).clamp(0, 1)
        return NoiseMatch(noisy, sigma, psnr(noisy, ref), target_psnr)

    best = at(SIGMA_MAX)
    if best.psnr >= target_psnr:
        return best
    lo, hi = 0.0, SIGMA_MAX
    for _ in range(max_iter):
        cand = at((lo + hi) / 2)
        if abs(cand.psnr - target_psnr) < abs(best.psnr - target_psnr):
            best = cand
        if abs(cand.psnr - target_psnr) <= tol_db:
            break
        lo, hi = (cand.sigma, hi) if cand.psnr > target_psnr else (lo, cand.sigma)
    return best


def noise_seed(seed: int, index: int) -> int:
    """Seed of the noise draw for image ``index`` (test images first, then FID images) of a run."""
    return seed * 1_000_003 + index
