"""λ* is the least-squares optimum; quantizer and rANS tables round-trip."""

from __future__ import annotations

import pytest
import torch

from pdc.errors import BitstreamError
from pdc.models.correction import (
    decode_levels,
    dequantize,
    encode_levels,
    fit_tables,
    correction_direction,
    lambda_star,
    lowpass,
    quantize,
    uniform_tables,
)


def test_lambda_star_is_the_least_squares_minimiser():
    g = torch.Generator().manual_seed(0)
    x0, x_hat, x_e = (torch.rand(1, 3, 16, 16, generator=g) for _ in range(3))
    x0 = 0.7 * x_e + 0.3 * x_hat + 0.01 * torch.randn(x0.shape, generator=g)
    lam = lambda_star(x0, x_hat, x_e - x_hat)
    grid = torch.linspace(0, 1, 1001)
    errs = torch.stack([((x_hat + a * (x_e - x_hat)) - x0).pow(2).sum() for a in grid])
    assert lam == pytest.approx(float(grid[errs.argmin()]), abs=1e-3)
    assert lam == pytest.approx(0.7, abs=0.02)


def test_lambda_star_is_clipped_and_safe():
    x = torch.zeros(1, 3, 4, 4)
    assert lambda_star(x, x, x - x) == 0.0  # x_e == x̂0: no direction to move in
    assert lambda_star(x + 2, x, x + 1) == 1.0  # optimum beyond x_e is clipped to 1
    assert lambda_star(x - 1, x, x + 1) == 0.0


def test_lowpass_keeps_the_mean_and_removes_the_finest_texture():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 48, generator=g)
    assert torch.equal(lowpass(x, 0.0), x)  # σ = 0: the paper's whole-image correction
    assert torch.allclose(lowpass(torch.full_like(x, 0.3), 2.0), torch.full_like(x, 0.3))  # flat stays flat
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(48), indexing="ij")
    checker = ((yy + xx) % 2 * 2 - 1).float().expand(1, 3, 32, 48)  # the highest frequency there is
    assert lowpass(checker, 1.0).abs().max() < 0.02
    smooth = torch.sin(xx / 48 * 2 * torch.pi).float().expand(1, 3, 32, 48)  # one period across the image
    assert (lowpass(smooth, 1.0) - smooth)[..., 8:-8].abs().max() < 0.01


def test_band_limited_correction_keeps_the_diffusion_texture():
    """x̂0 = coarse error + fine texture, x_e = faithful but textureless: σ > 0 fixes the coarse error and
    leaves the texture; σ = 0 with λ = 1 replaces x̂0 by x_e, texture and all."""
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    texture = 0.1 * ((yy + xx) % 2 * 2 - 1).float().expand(1, 3, 64, 64)
    x_e = 0.5 + 0.2 * torch.sin(xx / 64 * 2 * torch.pi).float().expand(1, 3, 64, 64)
    x_hat = x_e + 0.1 + texture  # a brightness error plus texture x_e lacks
    full = x_hat + correction_direction(x_hat, x_e, 0.0)
    band = x_hat + correction_direction(x_hat, x_e, 2.0)
    assert torch.allclose(full, x_e)
    assert (band - (x_e + texture)).abs().max() < 0.01  # coarse error gone, texture kept


def test_quantizer_levels():
    assert quantize(0.0, 16) == 0 and quantize(1.0, 16) == 15
    assert dequantize(quantize(0.5, 17), 17) == 0.5
    assert quantize(1.7, 16) == 15 and quantize(-3, 16) == 0


def test_levels_round_trip_under_fitted_tables():
    observed = [[0, 0, 1, 0, 2], [5, 5, 6, 5, 5], [15, 14, 15, 15, 15]]
    tables = fit_tables(observed, 16)
    assert tables.shape == (3, 16)
    torch.testing.assert_close(tables.sum(1), torch.ones(3))
    for levels in ([0, 5, 15], [3, 9, 0], [15, 0, 7]):
        assert decode_levels(encode_levels(levels, tables), tables) == levels
    # likely levels cost fewer bytes than unlikely ones
    assert len(encode_levels([0, 5, 15] * 1, tables)) <= len(encode_levels([9, 12, 3], tables))


@pytest.mark.parametrize("levels", [[0], [7], [15]])
def test_a_single_coded_step_round_trips(levels):
    """CompressAI's rANS encoder corrupts memory on a one-symbol message; we must not send it one."""
    t = uniform_tables(1, 16)
    assert decode_levels(encode_levels(levels, t), t) == levels


def test_uniform_tables_round_trip():
    t = uniform_tables(6, 16)
    levels = [0, 15, 7, 8, 3, 1]
    assert decode_levels(encode_levels(levels, t), t) == levels


def test_short_lambda_section_is_refused():
    with pytest.raises(BitstreamError):
        decode_levels(b"\x01", uniform_tables(3, 8))
