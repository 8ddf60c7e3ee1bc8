"""The champion rule."""

from __future__ import annotations

import pytest

from pdc.config import PromotionConfig
from pdc.promotion import RDPoint, decide
from pdc.rd.bd import bd_rate

RULE = PromotionConfig(max_bd_rate_lpips=0.0, max_psnr_drop_db=0.5)
CHAMP = [RDPoint(0.10, 26.0, 0.30), RDPoint(0.20, 28.0, 0.20)]


def test_the_rule_uses_the_evaluations_bd_rate():
    """The champion rule and eval/bd_rate.json must give the same number for the same curves."""
    cand = [RDPoint(0.085, 26.1, 0.31), RDPoint(0.17, 28.2, 0.21), RDPoint(0.3, 30.0, 0.15)]
    champ = CHAMP + [RDPoint(0.35, 30.5, 0.14)]
    d = decide(cand, champ, RULE)
    expected = bd_rate([(p.bpp, p.lpips) for p in champ], [(p.bpp, p.lpips) for p in cand], higher_is_better=False)
    assert expected["value"] is not None and d.bd_rate_lpips == expected["value"]


def test_curves_without_overlap_are_not_compared():
    cand = [RDPoint(p.bpp, p.psnr, p.lpips - 0.5) for p in CHAMP]
    d = decide(cand, CHAMP, RULE)
    assert not d.promote and "do not overlap" in d.reason


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
