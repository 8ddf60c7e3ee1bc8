"""The v1 container: layout, round trip, and every malformed-input path."""

from __future__ import annotations

import struct
import zlib

import pytest

from pdc.bitstream import HEADER, MAGIC, Mode, Section, Stream, parse
from pdc.errors import BitstreamError

MODEL = bytes(range(16))


def _stream(**kw) -> Stream:
    base = dict(mode=Mode.CORRDIFF, model_id=MODEL, width=100, height=60, seed=7, steps=6,
                sections={Section.Z: b"zz", Section.Y: b"yyyy", Section.LAMBDA: b"llll"})
    return Stream(**(base | kw))


def _recrc(data: bytes) -> bytes:
    body = data[:-4]
    return body + struct.pack(">I", zlib.crc32(body))


def test_round_trip_and_layout():
    s = _stream()
    data = s.to_bytes()
    assert data[:4] == MAGIC and data[4] == 1
    assert len(data) == HEADER.size + 3 * 5 + 2 + 4 + 4 + 4
    assert parse(data, expect_model=MODEL) == s


def test_same_stream_same_bytes():
    assert _stream().to_bytes() == _stream().to_bytes()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"", "empty"),
        (lambda d: d[:30], "truncated"),
        (lambda d: d[:-1], "checksum"),
        (lambda d: b"\x89PNG" + d[4:], "bad magic"),
        (lambda d: d[:50] + bytes([d[50] ^ 0x10]) + d[51:], "checksum"),
        (lambda d: _recrc(d[:4] + b"\x02" + d[5:]), "version"),
        (lambda d: _recrc(d[:5] + b"\x07" + d[6:]), "unknown mode"),
        (lambda d: _recrc(d[:24] + struct.pack(">II", 100000, 100000) + d[32:]), "implausible image size"),
        (lambda d: _recrc(d[:24] + struct.pack(">II", 0, 5) + d[32:]), "implausible image size"),
        (lambda d: _recrc(d[:40] + b"\x00" + d[41:]), "step count"),
        (lambda d: _recrc(d[:HEADER.size + 1] + struct.pack(">I", 2**31) + d[HEADER.size + 5 :]), "claims"),
        (lambda d: _recrc(d[:-4] + b"junk" + d[-4:]), "stray bytes"),
    ],
)
def test_malformed_streams_raise_clear_errors(mutate, message):
    with pytest.raises(BitstreamError, match=message):
        parse(mutate(_stream().to_bytes()))


def test_wrong_model():
    with pytest.raises(BitstreamError, match="written by model"):
        parse(_stream().to_bytes(), expect_model=bytes(16))


def test_lambda_section_only_in_corrdiff_mode():
    with pytest.raises(BitstreamError, match="λ section"):
        parse(_stream(mode=Mode.DIFFUSION).to_bytes())
    with pytest.raises(BitstreamError, match="λ section"):
        parse(_stream(sections={Section.Z: b"z", Section.Y: b"y"}).to_bytes())


def test_mode_values_and_names():
    assert [(m.name, int(m)) for m in Mode] == [("E2E", 0), ("DIFFUSION", 1), ("CORRDIFF", 2), ("CODEC", 3),
                                                ("CORRDIFF_NOBITS", 4)]
    assert Mode.parse("corrdiff-nobits") is Mode.parse("corrdiff_nobits") is Mode.CORRDIFF_NOBITS
    assert Mode.CORRDIFF_NOBITS.label == "corrdiff-nobits" and Mode.CORRDIFF_NOBITS.uses_diffusion
    with pytest.raises(ValueError, match="corrdiff-nobits"):
        Mode.parse("nobits")


def test_corrdiff_nobits_stream_has_no_lambda_section():
    s = _stream(mode=Mode.CORRDIFF_NOBITS, sections={Section.Z: b"z", Section.Y: b"y"})
    data = s.to_bytes()
    assert data[5] == 4 and parse(data) == s
    with pytest.raises(BitstreamError, match="λ section present in a corrdiff-nobits stream"):
        parse(_stream(mode=Mode.CORRDIFF_NOBITS).to_bytes())
    with pytest.raises(BitstreamError, match="step count"):
        parse(_stream(mode=Mode.CORRDIFF_NOBITS, steps=0, sections={Section.Z: b"z", Section.Y: b"y"}).to_bytes())


def test_e2e_has_no_steps():
    s = _stream(mode=Mode.E2E, steps=0, sections={Section.Z: b"z", Section.Y: b"y"})
    assert parse(s.to_bytes()).steps == 0
