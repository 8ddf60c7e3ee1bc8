"""Per-step correction weights: λ* at the encoder, a uniform quantizer, and their entropy code.

At sampling step k the decoder has the diffusion estimate x̂0_k and the privileged reconstruction x_e.
The encoder, which also knows the original x0, picks the weight that brings the corrected estimate
x̃0_k = x̂0_k + λ d_k closest to x0 in the least-squares sense::

    d_k  = L_σ(x_e − x̂0_k)                        # correction direction; L_σ = Gaussian low-pass, L_0 = identity
    λ*_k = clip(⟨x0 − x̂0_k, d_k⟩ / ‖d_k‖², 0, 1)

then sends level q_k = round(γ · λ*_k · (L − 1)) ∈ {0, …, L−1}; the decoder uses λ_k = q_k / (L − 1).
Levels are coded with CompressAI's rANS coder under per-step probability tables fitted on training
images (:func:`fit_tables`), so a typical step costs one or two bits.

With σ = 0 this is the paper's correction (pull the whole estimate towards x_e). With σ > 0 only the
band below the low-pass cut-off is pulled: x_e is faithful there, while the fine texture the MSE decoder
blurs away stays the diffusion's, whatever λ is (see docs/method.md, "Band-limited correction").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ans import RansDecoder, RansEncoder

from pdc.errors import BitstreamError

#: rANS precision (bits) of the quantized CDFs, as in CompressAI's entropy models.
PRECISION = 16
#: Probability mass reserved for out-of-range symbols (never used by a valid encoder).
_TAIL = 1e-6


def lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (N, C, H, W) tensor with standard deviation ``sigma`` pixels.

    Edges are mirrored (no dark border, no edge bias for texture); the kernel is cut at 3σ (and at the
    image size). ``sigma == 0`` returns ``x`` itself.
    """
    if sigma <= 0:
        return x
    radius = max(1, min(math.ceil(3 * sigma), x.shape[-1] - 1, x.shape[-2] - 1))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(dtype=x.dtype, device=x.device)
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def correction_direction(x0_hat: torch.Tensor, x_e: torch.Tensor, sigma: float) -> torch.Tensor:
    """d = L_σ(x_e − x̂0): the direction a correction moves the diffusion estimate in."""
    return lowpass(x_e - x0_hat, sigma)


def lambda_star(x0: torch.Tensor, x0_hat: torch.Tensor, direction: torch.Tensor) -> float:
    """Least-squares weight λ ∈ [0, 1] so that ``x0_hat + λ·direction`` best approximates ``x0``.

    With ``direction = x_e − x0_hat`` this pulls the whole estimate towards ``x_e`` (σ = 0).
    """
    d = direction
    # float32 products, float64 accumulation: no double-precision copies of full-size images
    denom = float(torch.sum(d * d, dtype=torch.float64))
    if denom <= 1e-12:
        return 0.0
    return min(1.0, max(0.0, float(torch.sum((x0 - x0_hat) * d, dtype=torch.float64)) / denom))


def quantize(lam: float, levels: int) -> int:
    return int(round(min(1.0, max(0.0, lam)) * (levels - 1)))


def dequantize(level: int, levels: int) -> float:
    return level / (levels - 1)


def fit_tables(levels_per_step: list[list[int]], levels: int, smoothing: float = 0.5) -> torch.Tensor:
    """Per-step pmfs (K, L) from observed levels, with additive smoothing so every level stays codable."""
    k = len(levels_per_step)
    counts = torch.full((k, levels), smoothing, dtype=torch.float64)
    for step, observed in enumerate(levels_per_step):
        for q in observed:
            counts[step, q] += 1
    return (counts / counts.sum(1, keepdim=True)).float()


def uniform_tables(steps: int, levels: int) -> torch.Tensor:
    return torch.full((steps, levels), 1.0 / levels)


def _cdfs(tables: torch.Tensor) -> tuple[list[list[int]], list[int], list[int]]:
    cdfs = []
    for pmf in tables.double().tolist():
        scaled = [p * (1 - _TAIL) for p in pmf] + [_TAIL]
        cdfs.append(pmf_to_quantized_cdf(scaled, PRECISION))
    return cdfs, [len(c) for c in cdfs], [0] * len(cdfs)


def _pad_single(levels: list[int], tables: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    # CompressAI's RansEncoder corrupts its heap ("double free") when given exactly one symbol; both
    # sides code a second, constant symbol in that case (a fraction of a bit under the same table).
    if len(tables) == 1:
        return levels + [0], tables.repeat(2, 1)
    return levels, tables


def encode_levels(levels: list[int], tables: torch.Tensor) -> bytes:
    """rANS-code one level per coded step (``levels[i]`` under ``tables[i]``)."""
    if len(levels) != len(tables):
        raise ValueError(f"{len(levels)} levels for {len(tables)} tables")
    if not levels:
        return b""
    levels, tables = _pad_single(list(levels), tables)
    cdfs, lengths, offsets = _cdfs(tables)
    return RansEncoder().encode_with_indexes(levels, list(range(len(levels))), cdfs, lengths, offsets)


def decode_levels(data: bytes, tables: torch.Tensor) -> list[int]:
    """Inverse of :func:`encode_levels`; refuses a string that decodes to impossible levels."""
    if len(tables) == 0:
        if data:
            raise BitstreamError("λ section is not empty but no step carries a correction")
        return []
    if len(data) < 4:
        raise BitstreamError(f"λ section too short ({len(data)} bytes)")
    n_coded = len(tables)
    _, tables = _pad_single([], tables)
    cdfs, lengths, offsets = _cdfs(tables)
    padded = data + bytes(4 * len(tables) + 64)  # see pdc.models.codec.guard_padding
    out = RansDecoder().decode_with_indexes(padded, list(range(len(tables))), cdfs, lengths, offsets)
    n_levels = tables.shape[1]
    if any(q < 0 or q >= n_levels for q in out):
        raise BitstreamError("λ section decodes to out-of-range levels (corrupted stream)")
    return list(out)[:n_coded]
