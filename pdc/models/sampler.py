"""The corrected DDIM sampler: one loop, run identically by the encoder (simulation) and the decoder.

All arithmetic happens in the diffusion's residual space r = s·(x − x_b) (see
:mod:`pdc.models.diffusion`); λ is scale-invariant, so it is the same weight as in image space::

    r_T ~ N(0, τ² I) from the seed in the header (τ = noise_temperature)
    for k, t in enumerate(timesteps t_1 > … > t_K):      (trailing or power spacing, see step_times)
        (r̂0, ε̂) from the network output (ε-, v- or x0-parameterised; see split_prediction)
        r̂0  clipped so that x_b + r̂0/s ∈ [0, 1]
        d_k  = L_σ(r_e − r̂0)                             (σ = lowpass_sigma; L_0 = identity)
        λ_k  = encoder: quantize(γ · λ*(r0, r̂0, d_k));  decoder: from the bitstream
        r̃0  = r̂0 + λ_k d_k
        ε̃   = ε̂ ("network")  or  (r_t − √ᾱ_t r̃0) / √(1−ᾱ_t) ("rederive")
        r_t' = √ᾱ_t' r̃0 + √(1−ᾱ_t') ε̃
    output x_b + r̃0/s of the last step
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from diffusers import DDIMScheduler

from pdc.config import CorrectionConfig, DiffusionConfig
from pdc.models.correction import correction_direction, dequantize, lambda_star, quantize
from pdc.models.diffusion import ConditionalDenoiser, split_prediction


class SampleResult(NamedTuple):
    image: torch.Tensor  # (1, 3, H, W) in [0, 1]
    levels: list[int]  # λ level used at each step (0 where uncorrected)
    lambda_star: list[float]  # encoder's unquantized λ* per step (empty on the decoder)


def correctable_steps(cfg: CorrectionConfig, steps: int) -> list[int]:
    """Step indices (0 = first sampling step) that carry a λ in the bitstream."""
    allowed = range(steps) if cfg.correct_steps is None else cfg.correct_steps
    return [k for k in allowed if 0 <= k < steps]


def timesteps(scheduler: DDIMScheduler, cfg: DiffusionConfig, steps: int) -> list[tuple[int, float, float]]:
    """(t, ᾱ_t, ᾱ_prev) for each sampling step t_1 > … > t_K; after the last step ᾱ_prev = 1 (clean).

    "trailing" takes diffusers' DDIM tables as they are (ᾱ_prev at t − T//K); "power" places the steps
    at t_k = t_min + (T−1−t_min)·(1 − k/(K−1))^ρ and moves each step to the next one's noise level.
    """
    ac = scheduler.alphas_cumprod
    if cfg.timestep_spacing == "trailing":
        scheduler.set_timesteps(steps)
        stride = scheduler.config.num_train_timesteps // steps
        pairs = [(int(t), int(t) - stride) for t in scheduler.timesteps.tolist()]
    else:
        times = power_times(cfg.train_timesteps, steps, cfg.t_min, cfg.spacing_power)
        pairs = list(zip(times, times[1:] + [-1]))
    return [(t, float(ac[t]), float(ac[p]) if p >= 0 else 1.0) for t, p in pairs]


def power_times(train_timesteps: int, steps: int, t_min: int, power: float) -> list[int]:
    """Strictly decreasing integer timesteps from T−1 down to ``t_min``, spaced by a power law."""
    if steps == 1:
        return [train_timesteps - 1]
    if steps > train_timesteps - t_min:
        raise ValueError(f"{steps} steps do not fit between t_min={t_min} and {train_timesteps - 1}")
    top = train_timesteps - 1 - t_min
    times = [int(round(t_min + top * (1 - k / (steps - 1)) ** power)) for k in range(steps)]
    for k in range(steps - 2, -1, -1):  # rounding must not merge two steps: lift the crowded low end
        times[k] = max(times[k], times[k + 1] + 1)
    return times


@torch.no_grad()
def sample(
    denoiser: ConditionalDenoiser,
    scheduler: DDIMScheduler,
    y_hat: torch.Tensor,
    x_base: torch.Tensor,
    *,
    steps: int,
    seed: int,
    correction: CorrectionConfig,
    residual_scale: float,
    x_e: torch.Tensor | None = None,
    levels: list[int] | None = None,
    target: torch.Tensor | None = None,
    gamma: float | None = None,
    adjust: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> SampleResult:
    """Run K corrected DDIM steps.

    Encoder: pass ``target`` (the padded original) and ``x_e``; λ levels are chosen on the fly.
    Decoder: pass ``levels`` (one per step) and ``x_e`` when any level is non-zero.
    Plain diffusion: neither (all λ = 0).
    ``adjust(k, r̂0, r̃0) -> r̃0`` (experiments only, never set by the codec) replaces the corrected
    estimate of step k, in residual space, before the DDIM update: benchmarks screen other uses of the
    privileged channel with it (``benchmarks/screen_privileged_bits.py``).
    """
    s = residual_scale
    kind = denoiser.cfg.prediction_type
    n_levels = correction.levels
    gamma = correction.gamma if gamma is None else gamma
    allowed = set(correctable_steps(correction, steps))
    if levels is not None and len(levels) != steps:
        raise ValueError(f"need {steps} levels, got {len(levels)}")
    needs_anchor = target is not None or (levels is not None and any(levels))
    if needs_anchor and x_e is None:
        raise ValueError("x_e is required when corrections are applied")
    r_e = (x_e - x_base) * s if x_e is not None else None
    r0 = (target - x_base) * s if target is not None else None
    lo, hi = (0 - x_base) * s, (1 - x_base) * s

    gen = torch.Generator(device="cpu").manual_seed(seed)
    temperature = denoiser.cfg.noise_temperature
    r_t = torch.randn(x_base.shape, generator=gen, dtype=torch.float32).mul_(temperature).to(x_base.device)
    used: list[int] = []
    stars: list[float] = []
    r_tilde = r_t
    for k, (t, a_t, a_prev) in enumerate(timesteps(scheduler, denoiser.cfg, steps)):
        r_hat, eps = split_prediction(kind, denoiser(r_t, t, y_hat, x_base), r_t, a_t)
        r_hat = torch.maximum(torch.minimum(r_hat, hi), lo)
        if target is not None and k in allowed:
            direction = correction_direction(r_hat, r_e, correction.lowpass_sigma)
            star = lambda_star(r0, r_hat, direction)
            stars.append(star)
            q = quantize(gamma * star, n_levels)
        else:
            q = levels[k] if levels is not None else 0
            direction = correction_direction(r_hat, r_e, correction.lowpass_sigma) if q else None
        used.append(q)
        lam = dequantize(q, n_levels)
        r_tilde = r_hat + lam * direction if q else r_hat
        if adjust is not None:
            r_tilde = adjust(k, r_hat, r_tilde)
        if correction.eps_mode == "rederive":
            eps = (r_t - a_t**0.5 * r_tilde) / (1 - a_t) ** 0.5
        r_t = a_prev**0.5 * r_tilde + (1 - a_prev) ** 0.5 * eps
    image = (x_base + r_tilde / s).clamp(0, 1)
    return SampleResult(image, used, stars)
