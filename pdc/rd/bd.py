"""Bjøntegaard-delta rate between two rate–quality curves (``bjontegaard`` package, v1.3).

Convention: BD-rate is the average bit-rate difference of the *test* curve relative to the *anchor*
at equal quality, in percent; negative means the test codec needs fewer bits. The package integrates
log10(rate) as a function of quality over the overlapping quality interval. Quality must increase
with rate, so lower-is-better metrics (LPIPS, FID) are passed negated.

Interpolation: with at least 4 points on both curves the classic VCEG cubic polynomial fit
(``method="cubic"``); with 2–3 points the package's piecewise cubic Hermite interpolant
(``"pchip"``, which is linear between 2 points). Fewer than 2 usable points, a curve whose quality
does not increase strictly with rate, or curves whose quality ranges do not overlap give ``value:
None`` with the reason.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

LOWER_IS_BETTER = {"lpips", "lpips_vgg", "fid", "kid"}
CUBIC_MIN_POINTS = 4


def _finite(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(float(r), float(q)) for r, q in points if r is not None and q is not None
            and math.isfinite(float(r)) and math.isfinite(float(q)) and float(r) > 0]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Operating points not beaten by another one with less rate and more quality (rate ascending).

    The result has strictly increasing rate and strictly increasing quality: the best curve an encoder
    can trace by choosing among the given settings (e.g. CorrDiff's γ at every rate point).
    """
    front: list[tuple[float, float]] = []
    for r, q in sorted(_finite(points), key=lambda p: (p[0], -p[1])):
        if not front or q > front[-1][1]:
            if front and r == front[-1][0]:
                continue
            front.append((r, q))
    return front


def _monotone(points: list[tuple[float, float]]) -> str | None:
    for (r0, q0), (r1, q1) in zip(points, points[1:]):
        if not (r1 > r0 and q1 > q0):
            return f"quality does not increase strictly with rate ({r0:.4g} bpp: {q0:.4g} → {r1:.4g} bpp: {q1:.4g})"
    return None


def bd_rate(
    anchor: Sequence[tuple[float, float]],
    test: Sequence[tuple[float, float]],
    *,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """BD-rate (%) of ``test`` vs ``anchor``; each a sequence of (bpp, metric) points.

    Returns ``{"value", "method", "points": {"anchor", "test"}, "overlap", "reason"}``; ``value`` is
    ``None`` (with ``reason``) where BD-rate is undefined for these curves.
    """
    import bjontegaard

    sign = 1.0 if higher_is_better else -1.0
    curves = {}
    for name, pts in (("anchor", anchor), ("test", test)):
        curves[name] = sorted((r, sign * q) for r, q in _finite(pts))
    result: dict[str, Any] = {
        "value": None,
        "method": None,
        "points": {k: len(v) for k, v in curves.items()},
        "overlap": None,
        "reason": None,
    }
    for name, pts in curves.items():
        if len(pts) < 2:
            result["reason"] = f"{name} curve has {len(pts)} usable point(s); BD-rate needs at least 2"
            return result
        bad = _monotone(pts)
        if bad:
            result["reason"] = f"{name} curve: {bad}" + ("" if higher_is_better else " (metric negated)")
            return result
    qa = [q for _, q in curves["anchor"]]
    qt = [q for _, q in curves["test"]]
    lo, hi = max(min(qa), min(qt)), min(max(qa), max(qt))
    span = max(max(qa), max(qt)) - min(min(qa), min(qt))
    overlap = max(hi - lo, 0.0) / span if span > 0 else 0.0
    result["overlap"] = overlap
    if overlap <= 0:
        result["reason"] = "the curves' quality ranges do not overlap"
        return result
    method = "cubic" if min(len(qa), len(qt)) >= CUBIC_MIN_POINTS else "pchip"
    result["method"] = method
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = bjontegaard.bd_rate(
            [r for r, _ in curves["anchor"]], qa, [r for r, _ in curves["test"]], qt,
            method=method, require_matching_points=False, min_overlap=0,
        )
    value = float(value)
    if not math.isfinite(value):
        result["reason"] = "bjontegaard returned a non-finite value"
        return result
    result["value"] = value
    return result
