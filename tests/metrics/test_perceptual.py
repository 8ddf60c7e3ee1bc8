"""LPIPS reproduces the published reference distances; FID/KID behave as distances on patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdc.imageio import load_tensor
from pdc.errors import MetricError
from pdc.metrics.perceptual import LpipsTo, extract_patches, fid_from_features, kid_from_features, lpips, lpips_model


def test_lpips_alex_reference_distances(lpips_reference):
    ref = load_tensor(lpips_reference / "ex_ref.png")
    p0 = load_tensor(lpips_reference / "ex_p0.png")
    p1 = load_tensor(lpips_reference / "ex_p1.png")
    # Published by the LPIPS authors for v0.1/alex (README of richzhang/PerceptualSimilarity).
    assert lpips(ref, p0) == pytest.approx(0.722, abs=0.002)
    assert lpips(ref, p1) == pytest.approx(0.138, abs=0.002)


def test_lpips_identical_is_zero(lpips_reference):
    ref = load_tensor(lpips_reference / "ex_ref.png")
    assert lpips(ref, ref) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_cached_reference_matches_the_library_forward(net):
    torch.manual_seed(0)
    reference = torch.rand(1, 3, 64, 96)
    candidates = [reference.roll(1, dims=-1), (reference + 0.1 * torch.randn_like(reference)).clamp(0, 1)]
    scorer = LpipsTo(reference, net)
    for x in candidates:  # the reference's features are reused across calls
        expected = float(lpips_model(net)(x * 2 - 1, reference * 2 - 1, normalize=False).mean())
        assert scorer(x) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    batch = torch.cat(candidates)
    per_image = LpipsTo(reference.expand_as(batch), net).distances(batch)
    assert per_image.tolist() == pytest.approx([scorer(x) for x in candidates], rel=1e-5)


def test_cached_reference_refuses_another_size():
    with pytest.raises(MetricError, match="differ in size"):
        LpipsTo(torch.rand(1, 3, 64, 64))(torch.rand(1, 3, 64, 32))


def test_patches_include_the_shifted_grid():
    x = torch.rand(1, 3, 512, 768)
    p = extract_patches(x)
    # aligned grid 2×3 = 6, shifted grid (384×640 usable) 1×2 = 2
    assert p.shape == (8, 3, 256, 256)
    torch.testing.assert_close(p[0], x[0, :, :256, :256])
    torch.testing.assert_close(p[6], x[0, :, 128:384, 128:384])


def test_fid_and_kid_are_zero_for_identical_sets_and_grow_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    b = rng.normal(size=(300, 16))
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert abs(kid_from_features(a, b, subsets=10, subset_size=100).mean) < 0.05
    shifted = b + 1.0
    assert fid_from_features(a, shifted) == pytest.approx(16.0, rel=0.2)  # ‖Δμ‖² = 16
    assert kid_from_features(a, shifted, subsets=10, subset_size=100).mean > 0.5


def test_kid_subsets_are_smaller_than_the_set_so_its_spread_is_measured():
    """200 patches (BSDS500 test's count): subsets of 100, so they differ and the std is not zero; with
    subsets as large as the set (the usual 1000 cap) every subset is the set and the spread vanishes."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 32)), rng.normal(loc=0.2, size=(200, 32))
    kid = kid_from_features(a, b, subsets=20)
    assert kid.subset_size == 100 and kid.subsets == 20 and kid.std > 0
    whole = kid_from_features(a, b, subsets=20, subset_size=1000)
    assert whole.subset_size == 200 and whole.std == pytest.approx(0.0, abs=1e-12)
    assert whole.mean == pytest.approx(kid.mean, abs=4 * kid.std)  # same quantity, within the spread


@pytest.mark.parametrize(("n", "m", "d"), [(40, 60, 128), (300, 250, 16)])
def test_fid_matches_the_sqrtm_definition(n, m, d):
    """Both code paths (few patches: SVD identity; many: sqrtm) equal the textbook formula."""
    import scipy.linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(n, d)), rng.normal(loc=0.3, scale=1.2, size=(m, d))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-6)


@pytest.mark.slow
def test_inception_fid_of_kodak_with_itself_is_zero(kodak):
    from pdc.metrics.perceptual import fid_kid

    imgs = [load_tensor(kodak / f"kodim0{i}.png") for i in range(1, 5)]
    f, _ = fid_kid(imgs, imgs)
    assert f == pytest.approx(0.0, abs=1e-3)
