"""The champion rule."""

from __future__ import annotations

import pytest

from pdc.config import PromotionConfig
from pdc.promotion import EvalSet, RDPoint, decide
from pdc.rd.bd import bd_rate

RULE = PromotionConfig(max_bd_rate_lpips=0.0, max_psnr_drop_db=0.5)
CHAMP = [RDPoint(0.10, 26.0, 0.30), RDPoint(0.20, 28.0, 0.20)]
#: The evaluation set both sides were judged on (same images, same crop).
SET = EvalSet("ab" * 32, 256, 2, "data/shards")


def judge(cand, champ):
    return decide(cand, champ, RULE, candidate_set=SET, champion_set=SET)


def test_the_rule_uses_the_evaluations_bd_rate():
    """The champion rule and eval/bd_rate.json must give the same number for the same curves."""
    cand = [RDPoint(0.085, 26.1, 0.31), RDPoint(0.17, 28.2, 0.21), RDPoint(0.3, 30.0, 0.15)]
    champ = CHAMP + [RDPoint(0.35, 30.5, 0.14)]
    d = judge(cand, champ)
    expected = bd_rate([(p.bpp, p.lpips) for p in champ], [(p.bpp, p.lpips) for p in cand], higher_is_better=False)
    assert expected["value"] is not None and d.bd_rate_lpips == expected["value"]


def test_curves_without_overlap_are_not_compared():
    cand = [RDPoint(p.bpp, p.psnr, p.lpips - 0.5) for p in CHAMP]
    d = judge(cand, CHAMP)
    assert not d.promote and "do not overlap" in d.reason


def test_first_model_becomes_champion():
    assert decide(CHAMP, None, RULE, candidate_set=SET, champion_set=None).promote


def test_fewer_bits_for_the_same_lpips_wins():
    cand = [RDPoint(p.bpp * 0.9, p.psnr, p.lpips) for p in CHAMP]
    d = judge(cand, CHAMP)
    assert d.promote and d.comparable and d.bd_rate_lpips == pytest.approx(-10.0)


def test_more_bits_loses():
    cand = [RDPoint(p.bpp * 1.1, p.psnr, p.lpips) for p in CHAMP]
    assert not judge(cand, CHAMP).promote


def test_psnr_floor_blocks_perceptual_gains_bought_with_drift():
    cand = [RDPoint(p.bpp * 0.8, p.psnr - 1.0, p.lpips) for p in CHAMP]
    d = judge(cand, CHAMP)
    assert not d.promote and "PSNR drops" in d.reason


def test_no_results_is_never_promoted():
    assert not judge([], CHAMP).promote


# -- the same images and crop, or no comparison ---------------------------------------------------------
BETTER = [RDPoint(p.bpp * 0.5, p.psnr + 1, p.lpips) for p in CHAMP]  # wins clearly on the same set


def test_other_images_are_not_compared_and_it_says_so():
    kodak = EvalSet("cd" * 32, 256, 24, "data/test/kodak")
    d = decide(BETTER, CHAMP, RULE, candidate_set=kodak, champion_set=SET)
    assert not d.promote and not d.comparable and d.bd_rate_lpips is None
    assert d.reason.startswith("not compared: evaluated on other images")
    assert "24 image(s) of data/test/kodak" in d.reason and "2 image(s) of data/shards" in d.reason
    assert judge(BETTER, CHAMP).promote  # the same curves on the same set win


def test_another_crop_of_the_same_images_is_not_compared():
    full = SET._replace(crop=0)
    d = decide(BETTER, CHAMP, RULE, candidate_set=full, champion_set=SET)
    assert not d.promote and not d.comparable and "another crop" in d.reason and "full images" in d.reason


def test_an_evaluation_without_its_image_set_is_not_compared():
    d = decide(BETTER, CHAMP, RULE, candidate_set=SET, champion_set=None)
    assert not d.promote and not d.comparable and "champion's evaluation records no image set" in d.reason
    assert not decide(BETTER, CHAMP, RULE, candidate_set=None, champion_set=SET).promote


def test_the_image_set_travels_through_summary_and_tags():
    summary = {"images": {"folder": "data/shards", "count": 2, "crop": 256, "files": ["a", "b"], "digest": "ab" * 32}}
    es = EvalSet.from_summary(summary)
    assert es == SET and EvalSet.from_tags(es.as_tags()) == SET
    assert EvalSet.from_summary({"images": {"crop": None, "count": 1}}) is None  # an old summary: unknown
    assert EvalSet.from_summary({**summary, "images": {**summary["images"], "crop": None}}).crop == 0


def test_the_evaluation_records_its_images_by_content(tmp_path):
    """Two folders holding the same photos give one digest; another crop or another photo does not."""
    import numpy as np

    from pdc.rd.runner import images_digest

    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(2))
    assert images_digest([a, b]) == images_digest([a.copy(), b.copy()])
    assert images_digest([a, b]) != images_digest([a, a]) != images_digest([a[:16], b])
