"""The champion rule: when does a newly registered model replace the current champion?

A candidate is promoted when

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

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from pdc.config import PromotionConfig
from pdc.rd.bd import bd_rate


class RDPoint(NamedTuple):
    bpp: float
    psnr: float
    lpips: float


class Decision(NamedTuple):
    promote: bool
    reason: str
    bd_rate_lpips: float | None  # percent; negative = candidate saves bits
    psnr_delta_db: float | None  # candidate minus champion, mean over rate points


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
    res = bd_rate([(p.bpp, p.lpips) for p in champion], [(p.bpp, p.lpips) for p in candidate], higher_is_better=False)
    bd = res["value"]
    if bd is None:
        return Decision(False, f"no BD-rate on LPIPS: {res['reason']}", None, dpsnr)
    if bd < rule.max_bd_rate_lpips:
        return Decision(True, f"BD-rate on LPIPS {bd:+.2f} % with PSNR {dpsnr:+.2f} dB", bd, dpsnr)
    return Decision(False, f"BD-rate on LPIPS {bd:+.2f} % is not below {rule.max_bd_rate_lpips} %", bd, dpsnr)
