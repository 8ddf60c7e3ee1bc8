"""Compress/decompress: exact agreement with the encoder's simulation, determinism, modes, robustness."""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdc.bitstream import Mode, Section, parse
from pdc.codec import code_latent, compress, decompress, fixed_levels
from pdc.errors import BitstreamError
from pdc.metrics import bpp, psnr


@pytest.mark.parametrize("mode", list(Mode))
def test_decoder_reproduces_encoder_simulation(micro_model, photo, mode):
    enc = compress(micro_model, photo, mode=mode)
    dec = decompress(micro_model, enc.data)
    assert dec.shape == photo.shape  # padded to a multiple of 64, cropped back
    assert float((dec - enc.reconstruction).abs().max()) <= 1 / 255


def test_identical_bytes_for_identical_input(micro_model, photo):
    a = compress(micro_model, photo).data
    b = compress(micro_model, photo.clone()).data
    assert a == b


def test_seed_changes_the_trajectory(micro_model, photo):
    a = compress(micro_model, photo, mode=Mode.DIFFUSION, seed=1)
    b = compress(micro_model, photo, mode=Mode.DIFFUSION, seed=2)
    assert parse(a.data).seed == 1
    assert not torch.equal(a.reconstruction, b.reconstruction)


def test_modes_share_one_layout(micro_model, photo):
    streams = {m: parse(compress(micro_model, photo, mode=m).data) for m in Mode}
    z, y = streams[Mode.E2E].sections[Section.Z], streams[Mode.E2E].sections[Section.Y]
    for m, s in streams.items():
        assert s.sections[Section.Z] == z and s.sections[Section.Y] == y, m
        assert (Section.LAMBDA in s.sections) == (m == Mode.CORRDIFF)
        assert s.steps == (micro_model.config.diffusion.steps if m.uses_diffusion else 0)
    assert streams[Mode.DIFFUSION].steps == streams[Mode.CORRDIFF].steps == micro_model.config.diffusion.steps


def test_diffusion_mode_equals_corrdiff_with_zero_levels(micro_model, photo):
    """λ ≡ 0 is the plain diffusion decoder: γ = 0 must give the diffusion-mode image."""
    plain = compress(micro_model, photo, mode=Mode.DIFFUSION)
    zero = compress(micro_model, photo, mode=Mode.CORRDIFF, gamma=0.0)
    assert zero.levels == [0] * len(zero.levels)
    torch.testing.assert_close(zero.reconstruction, plain.reconstruction)


def _mean_levels(tables: torch.Tensor) -> list[int]:
    """Nearest level to each row's mean level, ties up: computed here without pdc.codec."""
    means = tables.double() @ torch.arange(tables.shape[1], dtype=torch.float64)
    return [int(math.floor(m + 0.5)) for m in means.tolist()]


def test_fixed_levels_are_the_rounded_mean_levels(micro_model):
    """corrdiff-nobits λ: per coded step, the level nearest the mean of that step's fitted table; 0 on
    uncoded steps; uniform tables (and so a tie at level 3.5 of 8) when the step count was not fitted."""
    one_hot5 = torch.zeros(8).index_fill_(0, torch.tensor([5]), 1.0)
    half_0_2 = torch.zeros(8).index_fill_(0, torch.tensor([0, 2]), 0.5)
    tables = torch.stack([one_hot5, half_0_2, torch.full((8,), 1 / 8)])
    model = micro_model.with_decode_settings(tables)
    assert fixed_levels(model, 3) == [5, 1, 4]
    assert fixed_levels(model.with_decode_settings(tables, correction={"correct_steps": [0, 2]}), 3) == [5, 0, 4]
    assert fixed_levels(model, 5) == [4] * 5  # 5 steps: no fitted tables, uniform ones

    skewed = torch.rand(3, 8, generator=torch.Generator().manual_seed(0)) ** 4
    fitted = micro_model.with_decode_settings(skewed / skewed.sum(1, keepdim=True))
    assert fixed_levels(fitted, 3) == _mean_levels(fitted.tables)


def test_nobits_round_trip_is_exact_and_sends_no_lambda(micro_model, photo):
    nobits = compress(micro_model, photo, mode=Mode.CORRDIFF_NOBITS)
    assert float((decompress(micro_model, nobits.data) - nobits.reconstruction).abs().max()) == 0
    s = parse(nobits.data)
    assert s.mode == Mode.CORRDIFF_NOBITS and nobits.data[5] == 4
    assert Section.LAMBDA not in s.sections and nobits.lambda_bytes == 0
    assert nobits.levels == _mean_levels(micro_model.tables) == fixed_levels(micro_model, s.steps)
    corr = compress(micro_model, photo, mode=Mode.CORRDIFF)
    assert len(nobits.data) == len(corr.data) - 5 - corr.lambda_bytes  # the λ section and nothing else


def test_nobits_applies_the_fixed_correction(micro_model, photo):
    """Some fixed level > 0 (uniform tables: 4 of 8): the image is corrected, not the diffusion mode's;
    tables that put all mass on level 0 give the diffusion mode's image exactly."""
    plain = compress(micro_model, photo, mode=Mode.DIFFUSION).reconstruction
    nobits = compress(micro_model, photo, mode=Mode.CORRDIFF_NOBITS)
    assert any(nobits.levels)
    assert float((nobits.reconstruction - plain).abs().max()) > 1e-3
    zero = micro_model.with_decode_settings(torch.zeros(3, 8).index_fill_(1, torch.tensor([0]), 1.0))
    off = compress(zero, photo, mode=Mode.CORRDIFF_NOBITS)
    assert off.levels == [0, 0, 0]
    assert torch.equal(off.reconstruction, compress(zero, photo, mode=Mode.DIFFUSION).reconstruction)


def test_nobits_refuses_a_lambda_section_and_encoder_lambda_options(micro_model, photo):
    from pdc.codec import LambdaPick

    corr = parse(compress(micro_model, photo, mode=Mode.CORRDIFF).data)
    forged = dataclasses.replace(corr, mode=Mode.CORRDIFF_NOBITS).to_bytes()
    with pytest.raises(BitstreamError, match="λ section present in a corrdiff-nobits stream"):
        decompress(micro_model, forged)
    with pytest.raises(ValueError, match="corrdiff-nobits"):
        compress(micro_model, photo, mode=Mode.CORRDIFF_NOBITS, gamma=0.5)
    with pytest.raises(ValueError, match="corrdiff-nobits"):
        compress(micro_model, photo, mode=Mode.CORRDIFF_NOBITS, pick=LambdaPick())


@pytest.mark.parametrize("trained", [("codec",), ("codec", "diffusion"), ("codec", "privileged")])
def test_nobits_needs_what_corrdiff_needs(trained):
    from pdc.codec import check_mode
    from pdc.config import parse_model_config
    from pdc.errors import ModelPackageError
    from pdc.models.package import init_model
    from tests.models.conftest import MICRO

    model = init_model(parse_model_config(MICRO), seed=0)
    model.trained = trained
    for mode in (Mode.CORRDIFF, Mode.CORRDIFF_NOBITS):
        with pytest.raises(ModelPackageError, match=f"mode {mode.label} needs a trained"):
            check_mode(model, mode)


def test_correction_is_at_least_as_faithful_as_plain_diffusion(micro_model, photo):
    plain = compress(micro_model, photo, mode=Mode.DIFFUSION)
    corr = compress(micro_model, photo, mode=Mode.CORRDIFF)
    assert psnr(corr.reconstruction, photo) >= psnr(plain.reconstruction, photo) - 0.05


def test_perceptual_pick_keeps_the_best_decodable_combination(micro_model, photo):
    """The encoder's λ pick: every candidate is decoded as the decoder will, the stream decodes to the
    chosen image, and with no PSNR constraint the choice has the lowest LPIPS of all combinations."""
    import itertools

    from pdc.codec import LambdaPick
    from pdc.metrics.perceptual import lpips
    from pdc.models.sampler import correctable_steps, sample

    pick = LambdaPick(values=(0.0, 1.0), psnr_tolerance_db=100.0)
    enc = compress(micro_model, photo, pick=pick)
    dec = decompress(micro_model, enc.data)
    assert float((dec - enc.reconstruction).abs().max()) <= 1 / 255

    m, dcfg = micro_model, micro_model.config.diffusion
    coded = correctable_steps(m.config.correction, dcfg.steps)
    top = m.config.correction.levels - 1
    with torch.no_grad():
        c = code_latent(m, photo)
        x_base, x_e = m.codec.g_s(c.y_hat).clamp(0, 1), m.privileged(c.y_hat)
        scores = {}
        for combo in itertools.product((0, top), repeat=len(coded)):
            levels = [0] * dcfg.steps
            for k, q in zip(coded, combo):
                levels[k] = q
            img = sample(m.diffusion, m.scheduler, c.y_hat, x_base, steps=dcfg.steps, seed=0, x_e=x_e,
                         correction=m.config.correction, residual_scale=dcfg.residual_scale, levels=levels).image
            scores[tuple(levels)] = lpips(img[..., : photo.shape[-2], : photo.shape[-1]].clamp(0, 1), photo,
                                          net="vgg")
    assert len(set(scores.values())) > 1  # the choice matters on this image
    assert scores[tuple(enc.levels)] == pytest.approx(min(scores.values()), abs=1e-6)
    with pytest.raises(ValueError, match="samplings per image"):
        compress(micro_model, photo, pick=LambdaPick(values=(0.0, 0.5, 1.0), max_candidates=2))


def test_bpp_counts_every_byte(micro_model, photo):
    enc = compress(micro_model, photo)
    s = parse(enc.data)
    payload = sum(len(v) for v in s.sections.values())
    assert len(enc.data) == 48 + 5 * len(s.sections) + payload + 4
    assert bpp(len(enc.data), 96, 80) == pytest.approx(8 * len(enc.data) / (96 * 80))


def test_other_model_is_refused(micro_model, photo):
    from pdc.models.package import init_model

    from .conftest import micro_config

    other = init_model(micro_config(), seed=1)
    with pytest.raises(BitstreamError, match="written by model"):
        decompress(other, compress(micro_model, photo).data)


def test_huge_dimensions_are_refused_before_allocation(micro_model, photo):
    data = bytearray(compress(micro_model, photo).data)
    data[24:32] = struct.pack(">II", 16000, 4000)
    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(BitstreamError, match="exceeds the decoder's limit"):
        decompress(micro_model, bytes(data), max_pixels=1_000_000)


@pytest.fixture(scope="module")
def valid_stream(micro_model, photo) -> bytes:
    return compress(micro_model, photo).data


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_streams_fail_cleanly(micro_model, valid_stream, data):
    """Truncations, bit flips, insertions: the decoder either decodes or raises BitstreamError."""
    buf = bytearray(valid_stream)
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert", "overwrite"]))
    if kind == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "insert":
        i = data.draw(st.integers(0, len(buf)))
        buf[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        i = data.draw(st.integers(0, len(buf) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=32))
        buf[i : i + len(chunk)] = chunk
    if bytes(buf) == valid_stream:  # e.g. a byte overwritten with itself
        assert decompress(micro_model, bytes(buf)).shape == (1, 3, 96, 80)
        return
    with pytest.raises(BitstreamError):
        decompress(micro_model, bytes(buf), max_pixels=256 * 256)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_checksum_valid_garbage(micro_model, valid_stream, data):
    """Mutations that keep a valid CRC reach the entropy decoders: still no crash, hang or blow-up."""
    buf = bytearray(valid_stream[:-4])
    start = 48  # leave the header alone here: header fields are covered above
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(start, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    buf += struct.pack(">I", zlib.crc32(bytes(buf)))
    try:
        out = decompress(micro_model, bytes(buf), max_pixels=256 * 256)
    except BitstreamError:
        return
    assert out.shape == (1, 3, 96, 80) and torch.isfinite(out).all()


def test_codec_only_package_decodes_in_codec_mode_and_refuses_the_others(tmp_path):
    """A codec stage's package (the codec alone) is a working codec: mode codec round-trips through the
    file; the modes that need an untrained network are refused by name instead of decoding noise."""
    import numpy as np

    from pdc.bitstream import Mode
    from pdc.codec import compress, decompress
    from pdc.config import parse_model_config
    from pdc.errors import ModelPackageError
    from pdc.models.package import init_model, load_package, save_package
    from tests.models.conftest import MICRO

    model = init_model(parse_model_config(MICRO), seed=0)
    model.trained = ("codec",)
    save_package(model, tmp_path / "codec")
    loaded = load_package(tmp_path / "codec")
    img = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    enc = compress(loaded, img, mode=Mode.CODEC)
    assert torch.equal(decompress(loaded, enc.data), enc.reconstruction)
    for mode in (Mode.E2E, Mode.DIFFUSION, Mode.CORRDIFF, Mode.CORRDIFF_NOBITS):
        with pytest.raises(ModelPackageError, match=f"mode {mode.label} needs .*use --mode codec"):
            compress(loaded, img, mode=mode)
