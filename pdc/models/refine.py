"""Encoder-side latent refinement: spend encode time to find a better latent for the same decoder.

g_a is one forward pass trained to be good on average; for one given image the encoder can do better by
searching the latent directly (Campos et al. 2019, Yang et al. 2020: "amortization gap")::

    y, z ← g_a(x), h_a(g_a(x))                    (the one-pass encoder's latent, the starting point)
    repeat `steps` times, Adam on (y, z):
        ẑ = ⌊z − median⌉ + median,  (μ, σ) = h_s(ẑ),  ŷ = ⌊y − μ⌉ + μ     (straight-through rounding)
        loss = bits(ŷ | μ, σ) + bits(ẑ)  / pixels   +   λ_rd · 255² · MSE(decoder(ŷ), x)
    keep the (y, z) of the lowest loss seen, the starting point included

The rounding is the entropy coder's own (same medians and means), so the loss is the rate–distortion
cost of the file that will be written, up to the entropy model's estimate of the bits. λ_rd is the rate
point's own (the trade-off its codec was trained for). The decoder is unchanged: it reads ŷ, however the
encoder found it. Costs about three decoder passes (forward and backward) per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from compressai.models import MeanScaleHyperprior
from torch import nn


@dataclass(frozen=True)
class LatentRefinement:
    """How long and how fast the encoder refines its latent (:func:`refine_latent`).

    Defaults chosen on BSDS500 val with the shipped model set (benchmarks/screen_refinement.py,
    docs/results.md): a larger step size oscillates under the straight-through rounding, 120 steps add
    little for twice the time.
    """

    steps: int = 60
    lr: float = 0.002
    lambda_rd: float | None = None  # the rate–distortion trade-off; None: the package's rate point's

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"latent refinement needs at least 1 step, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"latent refinement needs a positive step size, got {self.lr}")


def _round_ste(values: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``round(values − offset) + offset`` forward, identity backward (straight-through)."""
    rounded = torch.round(values - offset) + offset
    return values + (rounded - values).detach()


def rd_cost(codec: MeanScaleHyperprior, decoder: nn.Module, y: torch.Tensor,
            z: torch.Tensor, x: torch.Tensor, lambda_rd: float) -> torch.Tensor:
    """bpp + λ_rd·255²·MSE of the latent (y, z) quantized as the entropy coder will, decoded by ``decoder``
    and compared with ``x`` (the unpadded image; the decoder's output is cropped to it)."""
    eb, gc = codec.entropy_bottleneck, codec.gaussian_conditional
    z_hat = _round_ste(z, eb._get_medians().reshape(1, -1, 1, 1))
    scales, means = codec.h_s(z_hat).chunk(2, 1)
    y_hat = _round_ste(y, means)
    y_likelihood = gc.likelihood_lower_bound(gc._likelihood(y_hat, scales, means))
    z_values = z_hat.permute(1, 0, 2, 3).reshape(z_hat.size(1), 1, -1)  # the bottleneck's (C, 1, N) layout
    z_likelihood, _, _ = eb._likelihood(z_values)
    z_likelihood = eb.likelihood_lower_bound(z_likelihood)
    h, w = x.shape[-2:]
    bits = -(torch.log2(y_likelihood).sum() + torch.log2(z_likelihood).sum())
    mse = torch.mean((decoder(y_hat)[..., :h, :w] - x) ** 2)
    return bits / (h * w) + lambda_rd * 255**2 * mse


def refine_latent(codec: MeanScaleHyperprior, decoder: nn.Module, x_padded: torch.Tensor,
                  x: torch.Tensor, lambda_rd: float, settings: LatentRefinement,
                  on_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The refined (y, z) of one padded image (module docstring); ``x``: the unpadded image the distortion
    is measured on. Deterministic for a given device and thread count. Never worse than the one-pass
    latent by :func:`rd_cost`."""
    with torch.no_grad():
        y0 = codec.g_a(x_padded)
        z0 = codec.h_a(y0)
    params = [*codec.parameters(), *decoder.parameters()]
    frozen = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)  # gradients for the latent only, not for every weight
    y, z = y0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=settings.lr)
    best_cost, best = float("inf"), (y0, z0)
    try:
        with torch.enable_grad():
            for _ in range(settings.steps):
                cost = rd_cost(codec, decoder, y, z, x, lambda_rd)
                if cost.item() < best_cost:  # the cost of the current iterate, before it moves
                    best_cost, best = cost.item(), (y.detach().clone(), z.detach().clone())
                opt.zero_grad(set_to_none=True)
                cost.backward()
                opt.step()
                if on_step is not None:
                    on_step()
            with torch.no_grad():
                if rd_cost(codec, decoder, y, z, x, lambda_rd).item() < best_cost:
                    best = (y.detach().clone(), z.detach().clone())
    finally:
        for p, flag in zip(params, frozen):
            p.requires_grad_(flag)
    return best
