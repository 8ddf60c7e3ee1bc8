"""BD-rate on synthetic curves with known answers, and the Pareto front of operating points."""

from __future__ import annotations

import math

import pytest

from pdc.rd.bd import bd_rate, pareto_front

RATES = [0.1, 0.2, 0.4, 0.8]
PSNR = [27.0, 29.5, 31.2, 33.0]


def test_rate_scaled_by_0_8_is_minus_20_percent_cubic():
    res = bd_rate(list(zip(RATES, PSNR)), [(0.8 * r, q) for r, q in zip(RATES, PSNR)])
    assert res["method"] == "cubic"
    assert res["value"] == pytest.approx(-20.0, abs=1e-6)
    assert res["overlap"] == pytest.approx(1.0)


def test_rate_scaled_by_1_25_is_plus_25_percent():
    res = bd_rate(list(zip(RATES, PSNR)), [(1.25 * r, q) for r, q in zip(RATES, PSNR)])
    assert res["value"] == pytest.approx(25.0, abs=1e-6)


def test_two_points_fall_back_to_pchip():
    anchor = [(0.2, 28.0), (0.5, 31.0)]
    res = bd_rate(anchor, [(0.8 * r, q) for r, q in anchor])
    assert res["method"] == "pchip"
    assert res["value"] == pytest.approx(-20.0, abs=1e-6)


def test_lower_is_better_metric_is_negated():
    lpips = [0.40, 0.30, 0.22, 0.15]
    anchor = list(zip(RATES, lpips))
    res = bd_rate(anchor, [(0.8 * r, q) for r, q in anchor], higher_is_better=False)
    assert res["value"] == pytest.approx(-20.0, abs=1e-6)
    # Passing LPIPS as if higher were better sees quality falling with rate: refused, not a wrong number.
    bad = bd_rate(anchor, [(0.8 * r, q) for r, q in anchor])
    assert bad["value"] is None and "does not increase" in bad["reason"]


def test_partial_overlap_integrates_over_the_common_range():
    # Test curve is the anchor shifted by 1 dB: at equal quality it needs less rate; exact value from the
    # linear (log-rate vs PSNR) model: log10 r = (q - 30) / 10 → shift of 1 dB = factor 10^(-0.1).
    anchor = [(10 ** ((q - 30) / 10), q) for q in (26.0, 28.0, 30.0, 32.0)]
    test = [(r, q + 1.0) for r, q in anchor]
    res = bd_rate(anchor, test)
    assert 0 < res["overlap"] < 1
    assert res["value"] == pytest.approx((10 ** -0.1 - 1) * 100, abs=1e-6)


@pytest.mark.parametrize(
    "anchor,test,needle",
    [
        ([(0.2, 28.0)], [(0.2, 28.0), (0.4, 30.0)], "at least 2"),
        ([(0.2, 28.0), (0.4, 27.0)], [(0.2, 28.0), (0.4, 30.0)], "does not increase"),
        ([(0.2, 20.0), (0.4, 22.0)], [(0.2, 30.0), (0.4, 32.0)], "do not overlap"),
        ([(0.2, 28.0), (0.4, float("nan")), (0.5, 29.0)], [(0.2, 40.0)], "at least 2"),
    ],
)
def test_undefined_cases_give_null_with_reason(anchor, test, needle):
    res = bd_rate(anchor, test)
    assert res["value"] is None
    assert needle in res["reason"]


def test_nan_points_are_dropped_not_propagated():
    anchor = [(0.1, 27.0), (0.2, math.nan), (0.4, 31.0)]
    res = bd_rate(anchor, [(0.8 * r, q) for r, q in anchor])
    assert res["points"] == {"anchor": 2, "test": 2}
    assert res["value"] == pytest.approx(-20.0, abs=1e-6)


def test_pareto_front_keeps_only_undominated_points():
    pts = [(0.3, 30.0), (0.1, 25.0), (0.2, 24.0), (0.3, 29.0), (0.5, 29.5), (0.6, 33.0), (0.2, 27.0)]
    assert pareto_front(pts) == [(0.1, 25.0), (0.2, 27.0), (0.3, 30.0), (0.6, 33.0)]


def _point(system, label, bpp, psnr, lpips, gamma=None):
    from pdc.rd.systems import Point

    return Point(system, label, rate_index=0, gamma=gamma,
                 images=[{"bytes": 100, "bpp": bpp, "psnr": psnr, "ms_ssim": float("nan"), "lpips": lpips}])


def test_distortion_perception_gain_over_the_endpoint_chord():
    from pdc.rd.report import bd_report
    from pdc.rd.systems import learned_systems

    sys = {s.key: s for s in learned_systems((0.5,))}
    points = [
        _point(sys["diffusion"], "r0", 0.30, 20.0, 0.20),
        _point(sys["e2e"], "r0", 0.30, 26.0, 0.40),
        _point(sys["corrdiff"], "r0", 0.31, 25.5, 0.35, gamma=1.0),  # chord at 0.35: 24.5 dB → +1.0
        _point(sys["corrdiff-g0.5"], "r0", 0.31, 21.0, 0.15, gamma=0.5),  # better LPIPS than diffusion: vs 20 dB
    ]
    rep = bd_report(points)
    entries = {e["tag"]: e for e in rep["distortion_perception"]["r0"]}
    assert [e["tag"] for e in rep["distortion_perception"]["r0"]] == ["diffusion", "γ=0.5", "γ=1", "e2e"]
    assert entries["γ=1"]["psnr_gain_over_chord_db"] == pytest.approx(1.0)
    assert entries["γ=1"]["chord_position"] == pytest.approx(0.75)
    assert entries["γ=0.5"]["chord_position"] == pytest.approx(-0.25)
    assert entries["γ=0.5"]["psnr_gain_over_chord_db"] == pytest.approx(1.0)
    # One rate point: BD-rate is undefined, and says why.
    assert rep["comparisons"]["corrdiff_vs_diffusion_psnr"]["value"] is None
    assert "at least 2" in rep["comparisons"]["corrdiff_vs_diffusion_psnr"]["reason"]
