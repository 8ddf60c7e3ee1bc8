"""The champion rule: when does a newly registered model replace the current champion?

Two evaluations are compared only when they measured the same thing: the same test images (by pixel
content, :class:`EvalSet` ``digest``) centre-cropped the same way. Otherwise the rule refuses to compare,
says so in its reason, and the alias stays where it is (re-evaluate the champion on the candidate's set,
e.g. ``python -m flows.evaluate --model models:/corrdiff@champion``, or move the alias by hand).

On the same evaluation set, a candidate is promoted when

1. there is no champion yet; or
2. at equal LPIPS it needs fewer bits than the champion — BD-rate on LPIPS below
   ``max_bd_rate_lpips`` percent (default 0 %: any saving) — **and** its mean CorrDiff PSNR is at most
   ``max_psnr_drop_db`` below the champion's (a fidelity floor, so perceptual gains cannot be bought
   with drift).

BD-rate is :func:`pdc.rd.bd.bd_rate`, the one implementation the evaluation's ``bd_rate.json`` uses
too (cubic with ≥ 4 points per curve, PCHIP with 2–3), champion as anchor, LPIPS lower-is-better.
With a single rate point each, the candidate must be no larger and strictly better in LPIPS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from pdc.config import PromotionConfig
from pdc.rd.bd import bd_rate


class RDPoint(NamedTuple):
    bpp: float
    psnr: float
    lpips: float


class EvalSet(NamedTuple):
    """What an evaluation measured on: the test images (by content) and the centre crop."""

    #: SHA-256 over the test images' pixel hashes, in order (``summary.json`` → ``images.digest``).
    digest: str
    #: Centre crop in pixels; 0 = full images.
    crop: int
    count: int = 0
    #: Where the images came from (for messages only: the same photos elsewhere are the same set).
    folder: str = ""

    def describe(self) -> str:
        where = f" of {self.folder}" if self.folder else ""
        crop = f"centre crop {self.crop}px" if self.crop else "full images"
        return f"{self.count} image(s){where}, {crop}, digest {self.digest[:12]}"

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> "EvalSet | None":
        """From an evaluation's ``summary.json`` (None when it records no image digest)."""
        images = summary.get("images") or {}
        if not images.get("digest"):
            return None
        return cls(str(images["digest"]), int(images.get("crop") or 0), int(images.get("count") or 0),
                   str(images.get("folder") or ""))

    def as_tags(self) -> dict[str, str]:
        return {"eval.digest": self.digest, "eval.crop": str(self.crop), "eval.count": str(self.count),
                "eval.images": self.folder}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "EvalSet | None":
        if not tags.get("eval.digest"):
            return None
        return cls(tags["eval.digest"], int(tags.get("eval.crop") or 0), int(tags.get("eval.count") or 0),
                   tags.get("eval.images", ""))


class Decision(NamedTuple):
    promote: bool
    reason: str
    bd_rate_lpips: float | None  # percent; negative = candidate saves bits
    psnr_delta_db: float | None  # candidate minus champion, mean over rate points
    #: False when the candidate and the champion were not evaluated on the same images and crop.
    comparable: bool = True


def same_evaluation(candidate: EvalSet | None, champion: EvalSet | None) -> str | None:
    """None when both evaluations used the same images and crop; else why they cannot be compared."""
    if candidate is None:
        return "the candidate's evaluation records no image set"
    if champion is None:
        return "the champion's evaluation records no image set (re-evaluate it on the candidate's images)"
    if candidate.digest != champion.digest:
        return f"evaluated on other images: candidate {candidate.describe()}; champion {champion.describe()}"
    if candidate.crop != champion.crop:
        return f"evaluated with another crop: candidate {candidate.describe()}; champion {champion.describe()}"
    return None


def decide(candidate: Sequence[RDPoint], champion: Sequence[RDPoint] | None, rule: PromotionConfig, *,
           candidate_set: EvalSet | None, champion_set: EvalSet | None) -> Decision:
    """The decision for ``candidate`` against the current ``champion`` (None: there is none).

    ``candidate_set``/``champion_set``: what each was evaluated on; different sets (or an unknown one)
    are never compared: the decision is "keep the champion", with ``comparable=False`` and the reason.
    """
    if not candidate:
        return Decision(False, "candidate has no evaluation results", None, None)
    if not champion:
        return Decision(True, "no champion yet", None, None)
    mismatch = same_evaluation(candidate_set, champion_set)
    if mismatch is not None:
        return Decision(False, f"not compared: {mismatch}", None, None, comparable=False)
    dpsnr = float(np.mean([p.psnr for p in candidate]) - np.mean([p.psnr for p in champion]))
    if dpsnr < -rule.max_psnr_drop_db:
        return Decision(False, f"PSNR drops {-dpsnr:.2f} dB (> {rule.max_psnr_drop_db} dB allowed)", None, dpsnr)
    if len(candidate) == 1 or len(champion) == 1:
        c = min(candidate, key=lambda p: p.lpips)
        k = min(champion, key=lambda p: p.lpips)
        better = c.bpp <= k.bpp and c.lpips < k.lpips
        why = "fewer or equal bits and lower LPIPS" if better else "not better in both bpp and LPIPS"
        return Decision(better, why, None, dpsnr)
    res = bd_rate([(p.bpp, p.lpips) for p in champion], [(p.bpp, p.lpips) for p in candidate], higher_is_better=False)
    bd = res["value"]
    if bd is None:
        return Decision(False, f"no BD-rate on LPIPS: {res['reason']}", None, dpsnr)
    if bd < rule.max_bd_rate_lpips:
        return Decision(True, f"BD-rate on LPIPS {bd:+.2f} % with PSNR {dpsnr:+.2f} dB", bd, dpsnr)
    return Decision(False, f"BD-rate on LPIPS {bd:+.2f} % is not below {rule.max_bd_rate_lpips} %", bd, dpsnr)
