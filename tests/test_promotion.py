"""The champion rule."""

from __future__ import annotations

import pytest

from pdc.config import PromotionConfig
from pdc.promotion import RDPoint, bd_rate_linear, decide

RULE = PromotionConfig(max_bd_rate_lpips=0.0, max_psnr_drop_db=0.5)
CHAMP = [RDPoint(0.10, 26.0, 0.30), RDPoint(0.20, 28.0, 0.20)]


def test_bd_rate_of_a_uniformly_cheaper_curve():
    assert bd_rate_linear([0.1, 0.2], [1, 2], [0.08, 0.16], [1, 2]) == pytest.approx(-20.0)
    assert bd_rate_linear([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], [0.11, 0.22, 0.33, 0.44], [1, 2, 3, 4]) == pytest.approx(10.0, abs=1e-6)
    assert bd_rate_linear([0.1, 0.2], [1, 2], [0.1, 0.2], [3, 4]) is None  # no overlap


def test_first_model_becomes_champion():
    assert decide(CHAMP, None, RULE).promote


def test_fewer_bits_for_the_same_lpips_wins():
    cand = [RDPoint(p.bpp * 0.9, p.psnr, p.lpips) for p in CHAMP]
    d = decide(cand, CHAMP, RULE)
    assert d.promote and d.bd_rate_lpips == pytest.approx(-10.0)


def test_more_bits_loses():
    cand = [RDPoint(p.bpp * 1.1, p.psnr, p.lpips) for p in CHAMP]
    assert not decide(cand, CHAMP, RULE).promote


def test_psnr_floor_blocks_perceptual_gains_bought_with_drift():
    cand = [RDPoint(p.bpp * 0.8, p.psnr - 1.0, p.lpips) for p in CHAMP]
    d = decide(cand, CHAMP, RULE)
    assert not d.promote and "PSNR drops" in d.reason


def test_no_results_is_never_promoted():
    assert not decide([], CHAMP, RULE).promote
