"""Bitstream format v1: the one definition of a ``.pdc`` file.

All integers are big-endian. A file is a fixed 48-byte header, a list of sections, and a CRC32::

    offset  size  field
    0       4     magic            b"PDC\\x89"  (the \\x89 byte catches 7-bit/text transfers)
    4       1     format version   1
    5       1     mode             0 = e2e, 1 = diffusion (all λ = 0), 2 = corrdiff, 3 = codec (g_s only),
                                   4 = corrdiff-nobits (corrdiff's correction under a fixed λ schedule, no λ bits)
    6       2     flags            0 (reserved; a reader refuses unknown bits)
    8       16    model id         first 16 bytes of the model package's SHA-256 content hash
    24      4     width            original image width in pixels  (1 … 16384)
    28      4     height           original image height in pixels (1 … 16384)
    32      8     seed             seed of the initial diffusion noise x_T
    40      1     steps K          DDIM steps the encoder simulated (1 … 64; 0 in e2e and codec modes)
    41      1     section count    n (1 … 8)
    42      6     reserved         zero
    48      …     n sections       each: type (1 byte) | length (4 bytes) | payload
    end−4   4     CRC32            of every byte before it (zlib.crc32)

Section types: 1 = z string (hyper-latent), 2 = y string (latent), 3 = λ string (rANS-coded levels,
present in corrdiff mode only: a corrdiff-nobits decoder derives its levels from the model package,
:func:`pdc.codec.fixed_levels`). Sections may appear in any order, each at most once; z and y are
required. Every byte of the file counts towards bpp.

A reader checks, before allocating anything image-sized: length, magic, version, CRC, flags, mode,
dimensions, section bounds, and (when given) the model id. Any failure raises :class:`BitstreamError`.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

from pdc.errors import BitstreamError

MAGIC = b"PDC\x89"
VERSION = 1
HEADER = struct.Struct(">4sBBH16sIIQBB6s")
assert HEADER.size == 48
SECTION = struct.Struct(">BI")
CRC = struct.Struct(">I")
MAX_SIDE = 16384
MAX_PIXELS = 64_000_000
MAX_STEPS = 64
MAX_SECTIONS = 8


class Mode(enum.IntEnum):
    E2E = 0
    DIFFUSION = 1
    CORRDIFF = 2
    CODEC = 3  # the hyperprior's own synthesis g_s: the MSE baseline the other decoders start from
    # CorrDiff's correction towards x_e under a λ schedule the decoder knows without bits: the control
    # that shows what the decoder can do alone, i.e. what the λ section is worth
    CORRDIFF_NOBITS = 4

    @property
    def uses_diffusion(self) -> bool:
        return self in (Mode.DIFFUSION, Mode.CORRDIFF, Mode.CORRDIFF_NOBITS)

    @property
    def label(self) -> str:
        """The name users type and see (``corrdiff-nobits``)."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, name: str) -> Mode:
        try:
            return cls[name.upper().replace("-", "_")]
        except KeyError:
            raise ValueError(f"unknown mode {name!r} (use corrdiff, corrdiff-nobits, diffusion, e2e or "
                             "codec)") from None


class Section(enum.IntEnum):
    Z = 1
    Y = 2
    LAMBDA = 3


@dataclass(frozen=True)
class Stream:
    """A parsed (or to-be-written) v1 stream."""

    mode: Mode
    model_id: bytes
    width: int
    height: int
    seed: int
    steps: int
    sections: dict[Section, bytes] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        _check_fields(self.mode, self.width, self.height, self.steps, self.model_id)
        if not 0 <= self.seed < 2**64:
            raise ValueError("seed must fit in 64 bits")
        body = bytearray(
            HEADER.pack(MAGIC, VERSION, int(self.mode), 0, self.model_id, self.width, self.height, self.seed,
                        self.steps, len(self.sections), bytes(6))
        )
        for kind in sorted(self.sections):
            payload = self.sections[kind]
            body += SECTION.pack(int(kind), len(payload)) + payload
        body += CRC.pack(zlib.crc32(body))
        return bytes(body)


def _check_fields(mode: int, width: int, height: int, steps: int, model_id: bytes) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise BitstreamError(f"implausible image size {width}x{height} (limit {MAX_SIDE} per side, {MAX_PIXELS} px)")
    if mode in (Mode.E2E, Mode.CODEC):
        if steps != 0:
            raise BitstreamError(f"{Mode(mode).name.lower()} stream with {steps} diffusion steps")
    elif not 1 <= steps <= MAX_STEPS:
        raise BitstreamError(f"invalid step count {steps} (1 … {MAX_STEPS})")
    if len(model_id) != 16:
        raise BitstreamError("model id must be 16 bytes")


def parse(data: bytes, *, expect_model: bytes | None = None) -> Stream:
    """Validate and split a v1 stream. Raises :class:`BitstreamError` with the reason."""
    n = len(data)
    if n == 0:
        raise BitstreamError("empty stream")
    if n < 4 or data[:4] != MAGIC:
        raise BitstreamError("not a pdc stream (bad magic)")
    if n < HEADER.size + CRC.size:
        raise BitstreamError(f"truncated stream ({n} bytes, header alone is {HEADER.size + CRC.size})")
    magic, version, mode, flags, model_id, width, height, seed, steps, count, _ = HEADER.unpack_from(data)
    if version != VERSION:
        raise BitstreamError(f"unsupported format version {version} (this reader knows {VERSION})")
    (crc,) = CRC.unpack_from(data, n - CRC.size)
    if zlib.crc32(data[: n - CRC.size]) != crc:
        raise BitstreamError("checksum mismatch: the stream is truncated or corrupted")
    if flags != 0:
        raise BitstreamError(f"unknown flags 0x{flags:04x}")
    try:
        mode_ = Mode(mode)
    except ValueError:
        raise BitstreamError(f"unknown mode {mode}") from None
    _check_fields(mode_, width, height, steps, model_id)
    if not 1 <= count <= MAX_SECTIONS:
        raise BitstreamError(f"invalid section count {count}")
    sections: dict[Section, bytes] = {}
    pos, end = HEADER.size, n - CRC.size
    for _ in range(count):
        if pos + SECTION.size > end:
            raise BitstreamError("section header runs past the end of the stream")
        kind, length = SECTION.unpack_from(data, pos)
        pos += SECTION.size
        if length > end - pos:
            raise BitstreamError(f"section {kind} claims {length} bytes, only {end - pos} remain")
        try:
            kind_ = Section(kind)
        except ValueError:
            raise BitstreamError(f"unknown section type {kind}") from None
        if kind_ in sections:
            raise BitstreamError(f"duplicate section {kind_.name}")
        sections[kind_] = bytes(data[pos : pos + length])
        pos += length
    if pos != end:
        raise BitstreamError(f"{end - pos} stray bytes after the last section")
    for required in (Section.Z, Section.Y):
        if required not in sections:
            raise BitstreamError(f"missing {required.name} section")
    if (Section.LAMBDA in sections) != (mode_ == Mode.CORRDIFF):
        raise BitstreamError(f"λ section present in a {mode_.label} stream (only corrdiff streams carry one)"
                             if Section.LAMBDA in sections else "corrdiff stream without its λ section")
    if expect_model is not None and model_id != expect_model:
        raise BitstreamError(
            f"stream was written by model {model_id.hex()}, this model is {expect_model.hex()} (use the same --model)"
        )
    return Stream(mode_, model_id, width, height, seed, steps, sections)
