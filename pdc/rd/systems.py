"""The systems ``pdc evaluate`` compares, and the per-point record of their measurements."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pdc.bitstream import Mode
from pdc.rd.classic import ClassicCodec

#: Metrics averaged over the test images (per-image values, then the mean, as CompressAI does).
#: ``lpips`` is LPIPS-alex (the headline, as in papers); ``lpips_vgg`` is reported beside it, so a
#: texture gain that only one backbone sees stands out.
IMAGE_METRICS = ("bpp", "psnr", "ms_ssim", "lpips", "lpips_vgg")
#: Key of the "e2e + matched noise" control (:mod:`pdc.rd.control`) matched to least-squares CorrDiff;
#: :func:`control_systems` names the others.
CONTROL_KEY = "e2e-noise"


@dataclass(frozen=True)
class System:
    key: str  # file-safe id: corrdiff, diffusion, e2e, codec, corrdiff-g0.5, e2e-noise, jpeg, webp, avif
    name: str  # display name (JSON "name", plot legends)
    description: str
    kind: str  # "learned" (one point per rate point) or "classic" (one point per quality)
    mode: Mode | None = None
    gamma: float | None = None  # learned CorrDiff only: explicit γ (None = the model's own)
    codec: ClassicCodec | None = None
    pick: bool = False  # learned CorrDiff only: λ levels by the encoder's perceptual pick (pdc.codec.LambdaPick)
    matched_to: str | None = None  # a control: key of the system whose PSNR its noise matches, per image
    high_band: bool = False  # a control whose noise lies only above the correction's low-pass
    refine: bool = False  # learned only: the encoder refines the latent per image (pdc.models.refine)

    @property
    def is_control(self) -> bool:
        return self.matched_to is not None

    @property
    def ext(self) -> str:
        return self.codec.ext if self.codec is not None else "pdc"


def learned_systems(gammas: tuple[float, ...] = ()) -> list[System]:
    """CorrDiff and the three baselines that come out of the same model, plus a CorrDiff per extra γ."""
    out = [
        System("corrdiff", "CorrDiff", "Diffusion decoder corrected per step towards the privileged decoder "
               "(λ per step coded in the file; the model's γ)", "learned", Mode.CORRDIFF),
        System("diffusion", "Diffusion (λ≡0)", "The same diffusion decoder without corrections (CDC-like baseline)",
               "learned", Mode.DIFFUSION),
        System("e2e", "E2E (privileged)", "The privileged end-to-end MSE decoder D_e on the same latent",
               "learned", Mode.E2E),
        System("codec", "Hyperprior g_s", "The hyperprior codec's own synthesis transform g_s on the same latent",
               "learned", Mode.CODEC),
    ]
    for g in gammas:
        out.append(System(f"corrdiff-g{g:g}", f"CorrDiff γ={g:g}",
                          f"CorrDiff with correction strength γ={g:g} (distortion–perception knob)",
                          "learned", Mode.CORRDIFF, gamma=float(g)))
    return out


#: Learned systems that run only when ``--systems`` names them (the pick costs many samplings per image;
#: the no-bits control one more sampling per image and rate point).
OPT_IN_SYSTEMS = (
    System("corrdiff-nobits", "CorrDiff without λ bits",
           "The same correction towards the privileged decoder with the decoder's fixed λ schedule (per step, the "
           "mean level of the λ tables) and no λ section: what the decoder does alone, without the encoder's bits",
           "learned", Mode.CORRDIFF_NOBITS),
    System("corrdiff-pick", "CorrDiff (perceptual λ pick)",
           "CorrDiff whose encoder tries λ ∈ {0, 0.6, 1} on every coded step and keeps the lowest LPIPS-VGG "
           "within 0.1 dB of the least-squares PSNR (VGG is what it optimises: read alex and FID as held out)",
           "learned", Mode.CORRDIFF, pick=True),
    System("e2e-refine", "E2E, refined latent",
           "The e2e decoder D_e on a latent the encoder searched per image for D_e's rate–distortion cost at the rate "
           "point's λ_rd (pdc.models.refine, default settings) instead of the one-pass g_a's: what encode time buys "
           "the same decoder and file format", "learned", Mode.E2E, refine=True),
    System("corrdiff-refine", "CorrDiff, refined latent",
           "CorrDiff on the latent refined for its anchor D_e (as e2e-refine): whether the diffusion decoder keeps "
           "the refined latent's gain", "learned", Mode.CORRDIFF, refine=True),
)


#: Key of :data:`E2E_LPIPS`.
E2E_LPIPS_KEY = "e2e-lpips"
#: The loss control (``pdc evaluate --e2e-lpips``): the diffusion decoder trains on MSE + LPIPS-VGG, D_e on
#: MSE alone, so "diffusion beats e2e on LPIPS" may only say that a decoder trained on LPIPS beats one that is
#: not. This D_e comes from another package set with the same codec, trained with the diffusion's loss.
E2E_LPIPS = System(
    E2E_LPIPS_KEY, "E2E trained with the diffusion's loss",
    "A privileged decoder D_e trained on the same frozen latent with the diffusion stage's loss (mse_weight·MSE + "
    "lpips_weight·LPIPS, `pdc train privileged --loss diffusion`) instead of MSE, from the package set given to "
    "--e2e-lpips (same codec: the e2e file and bpp): what the diffusion's training loss alone buys a one-pass decoder",
    "learned", Mode.E2E)


#: The CorrDiff systems a matched-noise control is matched to (key → suffix of the control's key).
CONTROL_TARGETS = {"corrdiff": "", "corrdiff-pick": "-pick"}


def control_systems(targets: set[str], band_limited: bool) -> list[System]:
    """E2E reconstruction + Gaussian noise matched per image to a CorrDiff system's PSNR (same e2e file,
    same bpp): one control per target in ``targets`` (keys of :data:`CONTROL_TARGETS`), white noise, and
    with ``band_limited`` (the model's correction has a low-pass) a second one whose noise lies only
    above that low-pass, where CorrDiff departs from x_e."""
    out = []
    for target, suffix in CONTROL_TARGETS.items():
        if target not in targets:
            continue
        name = "CorrDiff" if target == "corrdiff" else "CorrDiff (pick)"
        for high in (False, True) if band_limited else (False,):
            band = "high-band " if high else ""
            out.append(System(
                f"{CONTROL_KEY}{'-hf' if high else ''}{suffix}", f"E2E + matched {band}noise → {name}",
                f"The e2e decoder's reconstruction (same file and bpp) plus {band or 'white '}Gaussian noise "
                f"{'above the correction low-pass ' if high else ''}whose σ is chosen per image so that its PSNR "
                f"equals {name}'s: what noise alone buys on the perceptual metrics",
                "learned", Mode.E2E, matched_to=target, high_band=high))
    return out


def classic_systems(codecs: list[ClassicCodec]) -> list[System]:
    return [System(c.key, c.name, f"{c.pil_format} encoded and decoded by Pillow, qualities {list(c.qualities)}",
                   "classic", codec=c) for c in codecs]


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None]
    if not vals or any(isinstance(v, float) and math.isnan(v) for v in vals):
        return math.nan
    return sum(vals) / len(vals)


@dataclass
class Point:
    """One system at one operating point (a rate point of the model set, or a classic quality)."""

    system: System
    label: str  # "r0", "r1", … or "q10"
    rate_index: int | None = None
    quality: int | None = None
    gamma: float | None = None  # the γ actually used (CorrDiff)
    steps: int | None = None  # DDIM steps (diffusion-based modes)
    lambda_levels: int | None = None  # CorrDiff: number of λ quantizer levels (to dequantize ``levels``)
    images: list[dict[str, Any]] = field(default_factory=list)
    #: Per FID image: its name, size, bytes and bpp (no quality metric: FID/KID score the set as a whole).
    fid_images: list[dict[str, Any]] = field(default_factory=list)
    fid: float | None = None
    kid: float | None = None
    kid_std: float | None = None  # spread of the KID subset estimates (pdc.metrics.perceptual.Kid)
    kid_subset_size: int | None = None
    fid_patches: int = 0
    fid_note: str | None = None

    def mean(self, key: str) -> float:
        return _mean([r.get(key) for r in self.images]) if self.images else math.nan

    def metrics(self) -> dict[str, Any]:
        total = sum(r["bytes"] for r in self.images)
        lam = sum(r.get("lambda_bytes", 0) for r in self.images)
        out: dict[str, Any] = {k: self.mean(k) for k in IMAGE_METRICS}
        out.update(
            fid=math.nan if self.fid is None else self.fid,
            kid=math.nan if self.kid is None else self.kid,
            kid_std=math.nan if self.kid_std is None else self.kid_std,
            kid_subset_size=self.kid_subset_size,
            bytes=total / len(self.images) if self.images else math.nan,
            lambda_bytes=lam / len(self.images) if self.images else math.nan,
            lambda_share=lam / total if total else math.nan,
            encode_s=self.mean("encode_s"),
            decode_s=self.mean("decode_s"),
            images=len(self.images),
            # The rate axis of FID/KID: the FID images' own bits, not the test images' (other photos).
            fid_bpp=_mean([r["bpp"] for r in self.fid_images]) if self.fid_images else math.nan,
            fid_patches=self.fid_patches,
        )
        diffs = [r["decode_max_abs_diff"] for r in self.images if "decode_max_abs_diff" in r]
        if diffs:
            out["decode_max_abs_diff"] = max(diffs)
        if any("noise_sigma" in r for r in self.images):
            out["noise_sigma"] = self.mean("noise_sigma")
        return out

    def mean_lambda_per_step(self) -> list[float] | None:
        """Mean applied λ per sampling step over the images (levels dequantized to [0, 1]); None if no λ."""
        per_image = [r["levels"] for r in self.images if r.get("levels")]
        if not per_image or self.lambda_levels is None or len({len(v) for v in per_image}) != 1:
            return None
        from pdc.models.correction import dequantize

        return [sum(dequantize(q, self.lambda_levels) for q in step) / len(step) for step in zip(*per_image)]

    def row(self) -> dict[str, Any]:
        """One CSV row: identification + the aggregated metrics."""
        return {
            "system": self.system.key,
            "name": self.system.name,
            "kind": self.system.kind,
            "point": self.label,
            "rate_index": self.rate_index,
            "quality": self.quality,
            "gamma": self.gamma,
            "steps": self.steps,
            **self.metrics(),
        }
