"""The champion rule: when does a newly registered model replace the current champion?

A candidate is promoted when

1. there is no champion yet; or
2. at equal LPIPS it needs fewer bits than the champion — BD-rate on LPIPS below
   ``max_bd_rate_lpips`` percent (default 0 %: any saving) — **and** its mean CorrDiff PSNR is at most
   ``max_psnr_drop_db`` below the champion's (a fidelity floor, so perceptual gains cannot be bought
   with drift).

BD-rate here integrates log-rate as a piecewise-linear function of −LPIPS over the overlapping quality
range (the usual Bjøntegaard construction with linear instead of cubic interpolation, so that two or
three rate points suffice; with four or more, the ``bjontegaard`` package's PCHIP variant is used).
With a single rate point each, the candidate must be no larger and strictly better in LPIPS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from pdc.config import PromotionConfig


class RDPoint(NamedTuple):
    bpp: float
    psnr: float
    lpips: float


class Decision(NamedTuple):
    promote: bool
    reason: str
    bd_rate_lpips: float | None  # percent; negative = candidate saves bits
    psnr_delta_db: float | None  # candidate minus champion, mean over rate points


def bd_rate_linear(rate_a: Sequence[float], q_a: Sequence[float], rate_b: Sequence[float], q_b: Sequence[float]) -> float | None:
    """BD-rate (%) of curve b vs anchor a, quality ``q`` higher-is-better; None without overlap."""
    if min(len(rate_a), len(rate_b)) >= 4:
        import bjontegaard

        try:
            return float(bjontegaard.bd_rate(list(rate_a), list(q_a), list(rate_b), list(q_b), method="pchip",
                                             require_matching_points=False, min_overlap=0))
        except ValueError:
            pass  # non-monotonic curves: fall back to the linear construction
    ia, ib = np.argsort(q_a), np.argsort(q_b)
    qa, la = np.asarray(q_a, float)[ia], np.log(np.asarray(rate_a, float)[ia])
    qb, lb = np.asarray(q_b, float)[ib], np.log(np.asarray(rate_b, float)[ib])
    lo, hi = max(qa[0], qb[0]), min(qa[-1], qb[-1])
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, 256)
    diff = np.trapz(np.interp(grid, qb, lb) - np.interp(grid, qa, la), grid) / (hi - lo)
    return float((math.exp(diff) - 1) * 100)


def decide(candidate: Sequence[RDPoint], champion: Sequence[RDPoint] | None, rule: PromotionConfig) -> Decision:
    if not candidate:
        return Decision(False, "candidate has no evaluation results", None, None)
    if not champion:
        return Decision(True, "no champion yet", None, None)
    dpsnr = float(np.mean([p.psnr for p in candidate]) - np.mean([p.psnr for p in champion]))
    if dpsnr < -rule.max_psnr_drop_db:
        return Decision(False, f"PSNR drops {-dpsnr:.2f} dB (> {rule.max_psnr_drop_db} dB allowed)", None, dpsnr)
    if len(candidate) == 1 or len(champion) == 1:
        c = min(candidate, key=lambda p: p.lpips)
        k = min(champion, key=lambda p: p.lpips)
        better = c.bpp <= k.bpp and c.lpips < k.lpips
        why = "fewer or equal bits and lower LPIPS" if better else "not better in both bpp and LPIPS"
        return Decision(better, why, None, dpsnr)
    bd = bd_rate_linear([p.bpp for p in champion], [-p.lpips for p in champion],
                        [p.bpp for p in candidate], [-p.lpips for p in candidate])
    if bd is None:
        return Decision(False, "LPIPS ranges do not overlap: cannot compare at equal quality", None, dpsnr)
    if bd < rule.max_bd_rate_lpips:
        return Decision(True, f"BD-rate on LPIPS {bd:+.2f} % with PSNR {dpsnr:+.2f} dB", bd, dpsnr)
    return Decision(False, f"BD-rate on LPIPS {bd:+.2f} % is not below {rule.max_bd_rate_lpips} %", bd, dpsnr)
