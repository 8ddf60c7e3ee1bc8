"""CorrDiff compression and decompression of one image — the library API behind ``pdc compress``.

Encoder (sees x0)::

    x0 ─pad─▶ g_a ─▶ rANS(z, y) ─▶ ŷ (decoded back from the strings, exactly as the decoder will)
              ŷ ─▶ x_b = g_s(ŷ), x_e = D_e(ŷ)
              corrected DDIM from seed, choosing λ_k against x0 at every step  ─▶ levels ─▶ rANS(λ)
              writes  header | z | y | λ | CRC   and returns the reconstruction it simulated

Decoder: parse + verify ─▶ ŷ ─▶ the same sampler with the transmitted λ levels ─▶ the same image.

Mode corrdiff-nobits runs the same corrected sampler on both sides with :func:`fixed_levels` instead of
the encoder's choice, and writes no λ section: the decoder's correction on its own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from pdc.bitstream import MAX_PIXELS, Mode, Section, Stream, parse
from pdc.errors import BitstreamError, ModelPackageError
from pdc.imageio import uint8_to_tensor
from pdc.progress import progress_bar
from pdc.models.codec import (CODEC_MULTIPLE, decode_latent, encode_latent, encode_latents, latent_shape,
                              pad_to_multiple)
from pdc.models.correction import decode_levels, encode_levels, quantize, uniform_tables
from pdc.models.package import CorrDiffModel
from pdc.models.refine import LatentRefinement, refine_latent
from pdc.models.sampler import SampleResult, correctable_steps, sample


@dataclass(frozen=True)
class LambdaPick:
    """Encoder-only alternative to least squares: try every combination of these λ values on the coded
    steps, decode each exactly as the decoder will, and keep the one with the lowest LPIPS (``net``)
    among those whose PSNR is at most ``psnr_tolerance_db`` below the least-squares choice (which always
    qualifies). The decoder is unchanged: it reads levels, whoever chose them.

    Why: least-squares λ* sits at ≈ 1 on every step (docs/method.md), so the decoder could apply it
    without the encoder's bits; a perceptual criterion that needs the original gives the bits a job.
    Costs ``len(values) ** coded steps`` extra samplings and LPIPS backbone passes per image.
    """

    values: tuple[float, ...] = (0.0, 0.6, 1.0)
    psnr_tolerance_db: float = 0.1
    net: str = "vgg"
    max_candidates: int = 64


class Encoded(NamedTuple):
    data: bytes  # the complete .pdc file
    reconstruction: torch.Tensor  # (1, 3, H, W) in [0, 1]: what the decoder will output
    levels: list[int]  # λ level per sampling step (empty in e2e and codec modes; fixed_levels in corrdiff-nobits)
    lambda_star: list[float]  # unquantized least-squares λ* per corrected step
    lambda_bytes: int  # size of the λ section payload


def _multiple(model: CorrDiffModel) -> int:
    m = model.diffusion.multiple
    return CODEC_MULTIPLE * m // math.gcd(CODEC_MULTIPLE, m)


def _device(model: CorrDiffModel) -> torch.device:
    return next(model.parameters()).device


def step_tables(model: CorrDiffModel, steps: int) -> torch.Tensor:
    """Probability tables of the coded steps: fitted ones when K matches the fit, else uniform."""
    coded = correctable_steps(model.config.correction, steps)
    tables = model.tables if len(model.tables) == steps else uniform_tables(steps, model.config.correction.levels)
    return tables[coded]


def fixed_levels(model: CorrDiffModel, steps: int) -> list[int]:
    """The λ level of every sampling step in corrdiff-nobits mode (0 where no step is coded).

    At a coded step, the level nearest the mean of that step's table (:func:`step_tables`; ties go up):
    the tables are fitted on the levels the encoder chose on training images, so their mean is the
    decoder's best constant guess of the encoder's λ without seeing any bits. Computed from the package
    alone (exactly summed on the CPU), so the encoder and every decoder agree on it.
    """
    levels = [0] * steps
    for k, pmf in zip(correctable_steps(model.config.correction, steps), step_tables(model, steps).cpu().tolist()):
        levels[k] = math.floor(math.fsum(q * p for q, p in enumerate(pmf)) + 0.5)
    return levels


def _as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        return uint8_to_tensor(image)
    return image if image.dim() == 4 else image.unsqueeze(0)


class CodedLatent(NamedTuple):
    padded: torch.Tensor  # the image padded to the model's multiple (what the sampler targets)
    z_strings: bytes
    y_strings: bytes
    y_hat: torch.Tensor  # decoded back from the strings, exactly as the decoder will see it


def refinement_decoder(model: CorrDiffModel, mode: Mode) -> torch.nn.Module:
    """The decoder whose MSE latent refinement minimises in ``mode``: D_e where the mode decodes with it
    (e2e, and the CorrDiff modes' anchor x_e), else g_s (codec, and the diffusion's base x_b)."""
    return model.privileged if "privileged" in _MODE_PARTS[mode] else model.codec.g_s


@torch.no_grad()
def code_latent(model: CorrDiffModel, x: torch.Tensor, *, refine: LatentRefinement | None = None,
                mode: Mode = Mode.CORRDIFF) -> CodedLatent:
    """Pad a (1, 3, H, W) image, entropy-code its latent and decode ŷ back (the encoder's first half).

    ``refine``: search the latent for ``mode``'s :func:`refinement_decoder` at the package's λ_rd instead
    of taking g_a's (:mod:`pdc.models.refine`); the decoder side is unchanged.
    """
    xp = pad_to_multiple(x, _multiple(model))
    if refine is None:
        z_str, y_str = encode_latent(model.codec, xp)
    else:
        lambda_rd = refine.lambda_rd if refine.lambda_rd is not None else (
            model.rate_point.lambda_rd if model.rate_point is not None else None)
        if lambda_rd is None:
            raise ModelPackageError("latent refinement needs the rate point's λ_rd, and this model's package records "
                                    "none (model.json rate_point): give LatentRefinement(lambda_rd=...)")
        with progress_bar(refine.steps, "refine latent", unit="step", terminal_only=True) as bar:
            y, z = refine_latent(model.codec, refinement_decoder(model, mode), xp, x, lambda_rd, refine,
                                 on_step=lambda: bar.update(1))
        z_str, y_str = encode_latents(model.codec, y, z)
    return CodedLatent(xp, z_str, y_str, decode_latent(model.codec, z_str, y_str, latent_shape(*xp.shape[-2:])))


def _pick(model: CorrDiffModel, pick: LambdaPick, least_squares: SampleResult, x: torch.Tensor,
          coded: list[int], decode: Callable[[list[int]], SampleResult]) -> SampleResult:
    """The :class:`LambdaPick` search; ``decode(levels)`` runs the decoder's sampler."""
    from pdc.metrics import psnr
    from pdc.metrics.perceptual import LpipsTo

    n_levels = model.config.correction.levels
    grid = sorted({quantize(v, n_levels) for v in pick.values})
    if len(grid) ** len(coded) > pick.max_candidates:
        raise ValueError(f"λ pick: {len(grid)} values on {len(coded)} coded steps is {len(grid) ** len(coded)} "
                         f"samplings per image (max {pick.max_candidates}); use fewer values or coded steps")
    h, w = x.shape[-2:]
    distance_to_original = LpipsTo(x, pick.net)  # the original's features once, not once per candidate

    def score(res: SampleResult) -> tuple[float, float]:
        image = res.image[..., :h, :w].clamp(0, 1)
        return psnr(image, x), distance_to_original(image)

    floor, best = score(least_squares)
    floor -= pick.psnr_tolerance_db
    chosen = least_squares
    combos = list(itertools.product(grid, repeat=len(coded)))
    with progress_bar(len(combos), "λ pick", unit="candidate", terminal_only=True) as bar:
        for combo in combos:
            bar.update(1)
            levels = [0] * len(least_squares.levels)
            for k, q in zip(coded, combo):
                levels[k] = q
            if levels == least_squares.levels:
                continue
            res = decode(levels)
            quality, distance = score(res)
            if quality >= floor and distance < best:
                chosen, best = SampleResult(res.image, levels, least_squares.lambda_star), distance
    return chosen


#: The trained networks each mode decodes with.
_MODE_PARTS = {Mode.CODEC: ("codec",), Mode.E2E: ("codec", "privileged"), Mode.DIFFUSION: ("codec", "diffusion"),
               Mode.CORRDIFF: ("codec", "diffusion", "privileged"),
               Mode.CORRDIFF_NOBITS: ("codec", "diffusion", "privileged")}


def decodable_modes(trained: Sequence[str]) -> list[Mode]:
    """The modes a package holding these trained networks (``CorrDiffModel.trained``) decodes."""
    return [m for m, parts in _MODE_PARTS.items() if all(p in trained for p in parts)]


def best_mode(model: CorrDiffModel) -> Mode:
    """CorrDiff when the package holds every network, else the richest mode it can decode."""
    usable = decodable_modes(model.trained)
    for mode in (Mode.CORRDIFF, Mode.DIFFUSION, Mode.E2E, Mode.CODEC):
        if mode in usable:
            return mode
    raise ModelPackageError("the model holds no trained codec")


def check_mode(model: CorrDiffModel, mode: Mode) -> None:
    """Refuse a mode whose networks the package does not hold trained (e.g. a codec-only package)."""
    missing = [p for p in _MODE_PARTS[mode] if p not in model.trained]
    if missing:
        usable = [m.label for m in decodable_modes(model.trained)]
        raise ModelPackageError(f"mode {mode.label} needs a trained {' and '.join(missing)} network, which this "
                                f"model does not hold (it has: {', '.join(model.trained)}); use --mode "
                                f"{' or '.join(usable)}")


@torch.no_grad()
def compress(
    model: CorrDiffModel,
    image: np.ndarray | torch.Tensor,
    *,
    mode: Mode = Mode.CORRDIFF,
    steps: int | None = None,
    seed: int = 0,
    gamma: float | None = None,
    pick: LambdaPick | None = None,
    refine: LatentRefinement | None = None,
) -> Encoded:
    """Encode one RGB image (uint8 (H, W, 3) or float (1, 3, H, W) in [0, 1]) on the model's device;
    the reconstruction comes back on the CPU. ``pick``: choose the λ levels by :class:`LambdaPick`
    instead of least squares (CorrDiff mode only). ``refine``: search the latent per image instead of
    taking the analysis transform's (:func:`code_latent`; fewer bits at equal quality, slower encoding,
    any decoder reads it). Mode corrdiff-nobits refuses ``gamma`` and ``pick``: its λ is
    :func:`fixed_levels`."""
    check_mode(model, mode)
    if mode == Mode.CORRDIFF_NOBITS and (gamma is not None or pick is not None):
        # both choose λ at the encoder; this mode's λ is fixed, so either would silently do nothing
        raise ValueError("corrdiff-nobits uses the fixed λ schedule: gamma and pick do not apply to it")
    x = _as_tensor(image).float().to(_device(model))
    h, w = x.shape[-2:]
    steps = model.config.diffusion.steps if steps is None else steps
    if not mode.uses_diffusion:
        steps = 0
    xp, z_str, y_str, y_hat = code_latent(model, x, refine=refine, mode=mode)
    sections = {Section.Z: z_str, Section.Y: y_str}
    levels: list[int] = []
    stars: list[float] = []
    if mode == Mode.E2E:
        recon = model.privileged(y_hat)
    elif mode == Mode.CODEC:
        recon = model.codec.g_s(y_hat).clamp(0, 1)
    else:
        x_base = model.codec.g_s(y_hat).clamp(0, 1)
        dcfg = model.config.diffusion
        common = dict(steps=steps, seed=seed, correction=model.config.correction, residual_scale=dcfg.residual_scale)
        if mode == Mode.CORRDIFF:
            x_e = model.privileged(y_hat)
            res = sample(model.diffusion, model.scheduler, y_hat, x_base, x_e=x_e, target=xp, gamma=gamma, **common)
            coded = correctable_steps(model.config.correction, steps)
            if pick is not None:
                res = _pick(model, pick, res, x, coded, lambda lv: sample(model.diffusion, model.scheduler, y_hat,
                                                                         x_base, x_e=x_e, levels=lv, **common))
            sections[Section.LAMBDA] = encode_levels([res.levels[k] for k in coded], step_tables(model, steps))
        elif mode == Mode.CORRDIFF_NOBITS:
            res = sample(model.diffusion, model.scheduler, y_hat, x_base, x_e=model.privileged(y_hat),
                         levels=fixed_levels(model, steps), **common)
        else:
            res = sample(model.diffusion, model.scheduler, y_hat, x_base, **common)
        recon, levels, stars = res.image, res.levels, res.lambda_star
    stream = Stream(mode, model.hash_bytes, w, h, seed, steps, sections)
    lam = len(sections.get(Section.LAMBDA, b""))
    return Encoded(stream.to_bytes(), recon[..., :h, :w].clamp(0, 1).cpu(), levels, stars, lam)


@torch.no_grad()
def decompress(model: CorrDiffModel, data: bytes, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode a v1 stream written for ``model`` on the model's device; returns (1, 3, H, W) in [0, 1] on
    the CPU.

    ``max_pixels`` bounds the work a stream can ask for (the format allows up to 64 MP); lower it when
    decoding untrusted input on a small machine.
    """
    stream = parse(data, expect_model=model.hash_bytes)
    check_mode(model, stream.mode)
    if stream.width * stream.height > max_pixels:
        raise BitstreamError(f"{stream.width}x{stream.height} exceeds the decoder's limit of {max_pixels} pixels")
    m = _multiple(model)
    hp, wp = -(-stream.height // m) * m, -(-stream.width // m) * m
    try:
        y_hat = decode_latent(model.codec, stream.sections[Section.Z], stream.sections[Section.Y], latent_shape(hp, wp))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise BitstreamError(f"latent sections cannot be decoded ({exc})") from None
    if not torch.isfinite(y_hat).all() or y_hat.abs().max() > 1e5:
        raise BitstreamError("latent decodes to implausible values (corrupted stream)")
    if stream.mode == Mode.E2E:
        recon = model.privileged(y_hat)
    elif stream.mode == Mode.CODEC:
        recon = model.codec.g_s(y_hat).clamp(0, 1)
    else:
        x_base = model.codec.g_s(y_hat).clamp(0, 1)
        dcfg = model.config.diffusion
        levels = [0] * stream.steps
        if stream.mode == Mode.CORRDIFF:
            coded = correctable_steps(model.config.correction, stream.steps)
            for k, q in zip(coded, decode_levels(stream.sections[Section.LAMBDA], step_tables(model, stream.steps))):
                levels[k] = q
        elif stream.mode == Mode.CORRDIFF_NOBITS:
            levels = fixed_levels(model, stream.steps)
        x_e = model.privileged(y_hat) if any(levels) else None
        recon = sample(
            model.diffusion, model.scheduler, y_hat, x_base, steps=stream.steps, seed=stream.seed,
            correction=model.config.correction, residual_scale=dcfg.residual_scale, x_e=x_e, levels=levels,
        ).image
    return recon[..., : stream.height, : stream.width].clamp(0, 1).cpu()
