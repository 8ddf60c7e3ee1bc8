"""Encoder-side latent refinement (pdc.models.refine): a lower rate–distortion cost for the same decoder,
measured on the written file; streams decode to the encoder's simulation; keep-the-best; bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from pdc.bitstream import Mode
from pdc.codec import compress, decompress, refinement_decoder
from pdc.errors import ModelPackageError
from pdc.models.refine import LatentRefinement, rd_cost


@pytest.fixture(scope="module")
def shipped_r1():
    from pdc.zoo import shipped_package
    from pdc.models.package import load_package

    return load_package(shipped_package("r1"))


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    """A 128×128 natural crop (the shipped codec's training crop size)."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[60:188, 180:308].copy()).permute(2, 0, 1).float().div(255)
    return img.unsqueeze(0)


def _measured_cost(model, data: bytes, x: torch.Tensor) -> float:
    """bpp of the real file + λ_rd·255²·MSE of what the decoder makes of it."""
    h, w = x.shape[-2:]
    mse = float(torch.mean((decompress(model, data) - x) ** 2))
    return len(data) * 8 / (h * w) + model.rate_point.lambda_rd * 255**2 * mse


def test_refined_file_costs_less_for_the_same_decoder(shipped_r1, crop):
    """The shipped model's e2e decoder, real bytes: refinement lowers bits + λ·distortion of the file."""
    plain = compress(shipped_r1, crop, mode=Mode.E2E)
    refined = compress(shipped_r1, crop, mode=Mode.E2E, refine=LatentRefinement(steps=20))
    assert refined.data != plain.data
    before, after = _measured_cost(shipped_r1, plain.data, crop), _measured_cost(shipped_r1, refined.data, crop)
    assert after < before - 0.005, (before, after)  # ≈ 2 % of the cost at 20 steps; noise is far below it


@pytest.mark.parametrize("mode", [Mode.E2E, Mode.CODEC, Mode.CORRDIFF])
def test_refined_streams_decode_to_the_encoder_simulation(micro_model, photo, mode):
    enc = compress(micro_model, photo, mode=mode, refine=LatentRefinement(steps=3, lambda_rd=0.01))
    assert float((decompress(micro_model, enc.data) - enc.reconstruction).abs().max()) <= 1 / 255


def test_refinement_is_deterministic(micro_model, photo):
    settings = LatentRefinement(steps=4, lambda_rd=0.01)
    assert compress(micro_model, photo, refine=settings).data == compress(micro_model, photo.clone(), refine=settings).data


def test_a_diverging_search_keeps_the_one_pass_latent(shipped_r1, crop):
    """Every step worse than the start (absurd step size): the file is the one-pass encoder's, byte for byte."""
    plain = compress(shipped_r1, crop, mode=Mode.E2E).data
    assert compress(shipped_r1, crop, mode=Mode.E2E, refine=LatentRefinement(steps=2, lr=1e4)).data == plain


def test_the_model_weights_are_left_as_they_were(micro_model, photo):
    flags = [p.requires_grad for p in micro_model.parameters()]
    compress(micro_model, photo, mode=Mode.E2E, refine=LatentRefinement(steps=2, lambda_rd=0.01))
    assert [p.requires_grad for p in micro_model.parameters()] == flags
    assert all(p.grad is None for p in micro_model.parameters())


def test_rd_cost_is_bpp_plus_weighted_mse(shipped_r1, crop):
    """With λ_rd = 0 the cost is the entropy model's bits per pixel: the real y and z strings' size within
    the coder's few bytes of flush and escapes."""
    from pdc.models.codec import encode_latents, pad_to_multiple

    codec, photo = shipped_r1.codec, crop
    xp = pad_to_multiple(photo)
    with torch.no_grad():
        y = codec.g_a(xp)
        z = codec.h_a(y)
        estimate = float(rd_cost(codec, codec.g_s, y, z, photo, 0.0))
        z_str, y_str = encode_latents(codec, y, z)
        decoded = codec.g_s(codec.gaussian_conditional.quantize(y, "dequantize", codec.h_s(
            codec.entropy_bottleneck.quantize(z, "dequantize", codec.entropy_bottleneck._get_medians())).chunk(2, 1)[1]))
        mse = float(torch.mean((decoded[..., :photo.shape[-2], :photo.shape[-1]] - photo) ** 2))
        weighted = float(rd_cost(codec, codec.g_s, y, z, photo, 0.01))
    pixels = photo.shape[-2] * photo.shape[-1]
    real = (len(z_str) + len(y_str)) * 8 / pixels
    assert 0 <= (real - estimate) * pixels / 8 <= 16, (real, estimate)
    assert weighted == pytest.approx(estimate + 0.01 * 255**2 * mse, rel=1e-5)


def test_refinement_targets_the_decoder_the_mode_shows(micro_model):
    assert refinement_decoder(micro_model, Mode.E2E) is micro_model.privileged
    assert refinement_decoder(micro_model, Mode.CORRDIFF) is micro_model.privileged  # its anchor x_e
    assert refinement_decoder(micro_model, Mode.CODEC) is micro_model.codec.g_s


def test_refinement_without_a_rate_point_says_what_is_missing(micro_model, photo):
    assert micro_model.rate_point is None
    with pytest.raises(ModelPackageError, match="λ_rd"):
        compress(micro_model, photo, mode=Mode.E2E, refine=LatentRefinement(steps=1))


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"lr": 0.0}, {"lr": -1.0}, {"lr": math.nan}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        LatentRefinement(**kwargs)


def test_packages_carry_their_rate_point(shipped_r1):
    assert shipped_r1.rate_point.name == "r1" and shipped_r1.rate_point.lambda_rd > 0
    assert shipped_r1.with_decode_settings(correction={"gamma": 0.5}).rate_point == shipped_r1.rate_point
