"""The matched-noise control's σ search (:func:`pdc.rd.control.match_noise`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdc.imageio import uint8_to_tensor
from pdc.metrics import psnr
from pdc.rd.control import match_noise


def _photo(i: int, size: int = 64) -> torch.Tensor:
    from skimage import data

    img = data.astronaut()
    top, left = 40 + 90 * i, 60 + 70 * i
    return uint8_to_tensor(np.ascontiguousarray(img[top : top + size, left : left + size]))


def _blurred(x: torch.Tensor) -> torch.Tensor:
    """A stand-in for a smooth e2e reconstruction: a 5×5 box blur."""
    return torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)


@pytest.mark.parametrize("i", range(3))
@pytest.mark.parametrize("drop_db", [0.5, 3.0, 8.0])
def test_matched_psnr_is_within_tolerance_of_the_target(i, drop_db):
    ref = _photo(i)
    base = _blurred(ref)
    target = psnr(base, ref) - drop_db
    m = match_noise(base, ref, target, seed=i)
    assert m.sigma > 0
    assert abs(psnr(m.image, ref) - target) <= 0.05  # measured exactly as the evaluation measures it
    assert m.psnr == psnr(m.image, ref)
    assert m.image.min() >= 0 and m.image.max() <= 1


def test_sigma_is_zero_when_the_target_is_above_the_clean_psnr():
    ref = _photo(0)
    base = _blurred(ref)
    clean = psnr(base, ref)
    for target in (clean, clean + 2.0, float("nan")):
        m = match_noise(base, ref, target, seed=0)
        assert m.sigma == 0.0 and torch.equal(m.image, base.clamp(0, 1)) and m.psnr == clean


def test_the_noise_draw_is_fixed_by_the_seed():
    ref = _photo(1)
    base = _blurred(ref)
    target = psnr(base, ref) - 2.0
    a, b = match_noise(base, ref, target, seed=7), match_noise(base, ref, target, seed=7)
    assert a.sigma == b.sigma and torch.equal(a.image, b.image)
    assert not torch.equal(a.image, match_noise(base, ref, target, seed=8).image)


def test_control_coder_uses_the_e2e_file_and_matches_each_image():
    """The runner's per-image coder: test images copy e2e's record, FID images (uint8) are matched too and
    copy e2e's FID file record (its bits are the FID rate axis)."""
    from pdc.imageio import tensor_to_uint8
    from pdc.rd.runner import _matched_noise
    from pdc.rd.systems import Point, learned_systems

    refs = [_photo(i) for i in range(3)]
    e2e_recs = [_blurred(x) for x in refs]
    corr_recs = [(x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(i))).clamp(0, 1)
                 for i, x in enumerate(refs)]
    corr_recs[1] = refs[1]  # CorrDiff better than e2e on this one: σ = 0
    e2e = Point(next(s for s in learned_systems() if s.key == "e2e"), "r0")
    e2e.images = [{"image": f"img{i}", "bytes": 100 + i, "encode_s": 0.1} for i in range(2)]
    e2e.fid_images = [{"image": "photo", "bytes": 500, "bpp": 0.5}]
    # Images 0, 1: test images (float reconstructions); image 2: an FID image (kept as uint8).
    code = _matched_noise(e2e, e2e_recs[:2] + [tensor_to_uint8(e2e_recs[2])],
                          corr_recs[:2] + [tensor_to_uint8(corr_recs[2])], seed=3)
    for i, x in enumerate(refs):
        img = tensor_to_uint8(x)
        rec, info = code(i, img, None)
        target = psnr(corr_recs[i], x)
        assert info["target_psnr"] == pytest.approx(target)
        if i == 1:
            assert info["noise_sigma"] == 0 and torch.equal(rec, e2e_recs[1].clamp(0, 1))
        else:
            assert info["noise_sigma"] > 0 and abs(psnr(rec, x) - target) <= 0.05
        if i < 2:
            assert info["bytes"] == 100 + i and info["lambda_bytes"] == 0 and info["encode_s"] == 0.1
            assert info["stream"] == f"streams/e2e/r0/img{i}.pdc"
        else:
            assert info["bytes"] == 500 and info["stream"] == "streams_fid/e2e/r0/photo.pdc"


def test_high_band_noise_lies_above_the_low_pass_and_still_matches():
    """The high-band control's noise is (I − L_σ)·n, the band the correction leaves to the diffusion (the
    same soft Gaussian split, so the low-pass of it keeps a fifth of white noise's variance there, not
    zero): unit std, and its PSNR still meets the target."""
    from pdc.models.correction import lowpass
    from pdc.rd.control import gaussian_noise

    ref = _photo(0)
    white, high = gaussian_noise(ref, 3), gaussian_noise(ref, 3, band_sigma=1.0)
    assert high.std().item() == pytest.approx(1.0, rel=1e-4)
    assert lowpass(high, 1.0).std() < 0.5 * lowpass(white, 1.0).std()
    base = _blurred(ref)
    target = psnr(base, ref) - 2.0
    m = match_noise(base, ref, target, seed=3, band_sigma=1.0)
    assert m.sigma > 0 and abs(m.psnr - target) <= 0.05
    assert not torch.equal(m.image, match_noise(base, ref, target, seed=3).image)
