"""The CompressAI hyperprior codec and the latent-level helpers CorrDiff needs.

CompressAI's ``decompress`` returns only the image; CorrDiff needs ŷ itself (the diffusion and the
privileged decoder are conditioned on it), so :func:`decode_latent` mirrors it and stops at ŷ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.models import MeanScaleHyperprior

from pdc.config import CodecConfig

#: Total downsampling of the hyperprior (g_a: 16, h_a: 4). Images are padded to a multiple of it.
CODEC_MULTIPLE = 64


def build_codec(cfg: CodecConfig) -> MeanScaleHyperprior:
    return MeanScaleHyperprior(N=cfg.N, M=cfg.M)


def pad_to_multiple(x: torch.Tensor, multiple: int = CODEC_MULTIPLE) -> torch.Tensor:
    """Replicate-pad (N, C, H, W) on the bottom/right to a multiple; crop back with ``x[..., :H, :W]``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def latent_shape(height: int, width: int) -> tuple[int, int]:
    """Spatial shape of z for an image of the given (unpadded) size."""
    return -(-height // CODEC_MULTIPLE), -(-width // CODEC_MULTIPLE)


def quantized_latent(codec: MeanScaleHyperprior, x: torch.Tensor) -> torch.Tensor:
    """ŷ exactly as the entropy coder would produce it (rounding around the predicted means).

    Used in training, where no bitstream is written: eval-mode quantization is ``round(y − μ) + μ`` with
    μ from the hyperprior on ẑ = ``round(z − median) + median``, the same arithmetic as compress/decompress.
    """
    y = codec.g_a(x)
    z = codec.h_a(y)
    medians = codec.entropy_bottleneck._get_medians()
    z_hat = codec.entropy_bottleneck.quantize(z, "dequantize", medians)
    _, means = codec.h_s(z_hat).chunk(2, 1)
    return codec.gaussian_conditional.quantize(y, "dequantize", means)


def encode_latent(codec: MeanScaleHyperprior, x: torch.Tensor) -> tuple[bytes, bytes]:
    """Entropy-code a padded image: (z string, y string). ``codec.update()`` must have run."""
    y = codec.g_a(x)
    return encode_latents(codec, y, codec.h_a(y))


def encode_latents(codec: MeanScaleHyperprior, y: torch.Tensor, z: torch.Tensor) -> tuple[bytes, bytes]:
    """Entropy-code a given latent (y, z) — g_a's or a refined one (:mod:`pdc.models.refine`): (z string,
    y string), the arithmetic of ``MeanScaleHyperprior.compress`` after its analysis transforms."""
    (z_str,) = codec.entropy_bottleneck.compress(z)
    z_hat = codec.entropy_bottleneck.decompress([z_str], z.size()[-2:])
    scales, means = codec.h_s(z_hat).chunk(2, 1)
    (y_str,) = codec.gaussian_conditional.compress(y, codec.gaussian_conditional.build_indexes(scales), means=means)
    return z_str, y_str


def guard_padding(n_symbols: int) -> bytes:
    """Zero bytes appended to a string before rANS decoding.

    CompressAI's rANS decoder does not bounds-check its input: a corrupted (but checksum-valid) string
    could make it read past the end of the buffer. Each decoded symbol reads at most one 32-bit word
    outside the escape path, so this much zero padding keeps every read inside our own buffer; a valid
    string never reaches it, so decoding is unchanged.
    """
    return bytes(4 * n_symbols + 64)


def decode_latent(codec: MeanScaleHyperprior, z_str: bytes, y_str: bytes, shape: tuple[int, int]) -> torch.Tensor:
    """ŷ from the two strings (mirror of ``MeanScaleHyperprior.decompress`` without g_s)."""
    n_z = codec.entropy_bottleneck.channels * shape[0] * shape[1]
    z_hat = codec.entropy_bottleneck.decompress([z_str + guard_padding(n_z)], shape)
    scales, means = codec.h_s(z_hat).chunk(2, 1)
    indexes = codec.gaussian_conditional.build_indexes(scales)
    return codec.gaussian_conditional.decompress([y_str + guard_padding(indexes.numel())], indexes, means=means)
