"""The corrected DDIM loop: encoder and decoder agree on non-zero λ, and a band-limited correction keeps
the diffusion's fine detail where the whole-image correction replaces it by x_e."""

from __future__ import annotations

import pytest
import torch

from pdc.models.correction import lowpass
from pdc.models.sampler import sample


@pytest.fixture(scope="module")
def latents(micro_model, photo):
    """(ŷ, x_b, x_e) for a 128×128 crop-and-pad of the photo."""
    x = torch.nn.functional.pad(photo, (0, 128 - photo.shape[-1], 0, 128 - photo.shape[-2]), mode="replicate")
    with torch.no_grad():
        y_hat = torch.round(micro_model.codec.g_a(x))
        return y_hat, micro_model.codec.g_s(y_hat).clamp(0, 1), micro_model.privileged(y_hat).clamp(0, 1)


def _run(model, latents, sigma, **kw):
    y_hat, x_base, x_e = latents
    cfg = model.config.correction.model_copy(update={"lowpass_sigma": sigma})
    return sample(model.diffusion, model.scheduler, y_hat, x_base, steps=model.config.diffusion.steps, seed=3,
                  correction=cfg, residual_scale=model.config.diffusion.residual_scale, x_e=x_e, **kw)


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_decoder_follows_the_encoder_with_nonzero_levels(micro_model, latents, sigma):
    target = latents[2]  # an original equal to x_e: λ* = 1 on every step, the strongest correction
    enc = _run(micro_model, latents, sigma, target=target)
    assert min(enc.levels) == micro_model.config.correction.levels - 1
    dec = _run(micro_model, latents, sigma, levels=enc.levels)
    torch.testing.assert_close(dec.image, enc.image, rtol=0, atol=1e-6)


def test_band_limited_correction_keeps_the_diffusion_detail(micro_model, latents):
    x_e = latents[2]
    top = [micro_model.config.correction.levels - 1] * micro_model.config.diffusion.steps
    plain = _run(micro_model, latents, 0.0, levels=[0] * len(top)).image
    whole = _run(micro_model, latents, 0.0, levels=top).image
    band = _run(micro_model, latents, 2.0, levels=top).image

    def fine(x):
        return x - lowpass(x, 2.0)

    torch.testing.assert_close(whole, x_e, rtol=0, atol=1e-5)  # λ = 1 at the last step returns x_e itself
    assert not torch.allclose(band, x_e, atol=1e-3)
    # the band-limited output's fine detail is the diffusion's (up to the clamp), not x_e's
    assert (fine(band) - fine(plain)).pow(2).mean() < 0.25 * (fine(x_e) - fine(plain)).pow(2).mean()
    assert (lowpass(band - x_e, 2.0)).pow(2).mean() < 0.25 * (lowpass(plain - x_e, 2.0)).pow(2).mean()


def test_adjust_hook_replaces_the_corrected_estimate(micro_model, latents):
    """The experiments' hook: returning r̃0 unchanged is a no-op; returning r̂0 undoes every correction."""
    top = [micro_model.config.correction.levels - 1] * micro_model.config.diffusion.steps
    corrected = _run(micro_model, latents, 2.0, levels=top).image
    plain = _run(micro_model, latents, 2.0, levels=[0] * len(top)).image
    seen = []

    def keep(k, r_hat, r_tilde):
        seen.append(k)
        return r_tilde

    torch.testing.assert_close(_run(micro_model, latents, 2.0, levels=top, adjust=keep).image, corrected,
                               rtol=0, atol=0)
    assert seen == list(range(len(top)))
    undone = _run(micro_model, latents, 2.0, levels=top, adjust=lambda k, r_hat, r_tilde: r_hat).image
    torch.testing.assert_close(undone, plain, rtol=0, atol=0)
    assert not torch.allclose(corrected, plain, atol=1e-3)
