"""The diffusion decoder's configuration: it must be able to produce every output it is asked for.

When the UNet's outermost block has fewer channels than the 3·u² values it emits per position, its
output lives in a fixed subspace; in the rest the DDIM loop is linear in the initial noise r_T, which
then reaches the image whatever the weights. These tests measure that leak on the real sampler.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pdc.config import CorrectionConfig, DiffusionConfig, load_params, parse_model_config
from pdc.errors import ConfigError
from pdc.models.diffusion import ConditionalDenoiser, build_scheduler
from pdc.models.sampler import power_times, sample, timesteps

#: The ``tiny`` profile's diffusion block before the fix: 32 channels for 3·4² = 48 outputs.
BOTTLENECKED = {"block_channels": (32, 64, 64), "unshuffle": 4, "latent_channels": 8, "steps": 6,
                "prediction_type": "v_prediction"}


def unreachable_noise_share(cfg: DiffusionConfig, seed: int = 0) -> float:
    """Share of the energy of (sample(seed a) − sample(seed b)) outside the range of the UNet's output.

    The network's outputs (whatever their inputs) lie in the column space of its last conv, J; the
    difference of two seeds' λ = 0 samples differs from a combination of network outputs only by the
    part of r_T the loop carries through. Its component orthogonal to range(J) is therefore noise
    that no training can remove.
    """
    torch.manual_seed(seed)
    net = ConditionalDenoiser(cfg, latent_channels_in=8).eval()
    side = net.multiple
    u = cfg.unshuffle
    y_hat = torch.randn(1, 8, max(1, side // 16), max(1, side // 16))
    x_base = torch.full((1, 3, side, side), 0.5)
    scale = 1000.0  # keeps r̂0 far from the [0, 1] clamp: the loop stays linear in the network outputs
    common = dict(steps=cfg.steps, correction=CorrectionConfig(), residual_scale=scale)
    a = sample(net, build_scheduler(cfg), y_hat, x_base, seed=1, **common).image
    b = sample(net, build_scheduler(cfg), y_hat, x_base, seed=2, **common).image
    d = F.pixel_unshuffle((a - b).double() * scale, u).flatten()

    conv = net.unet.conv_out
    c_in, hw = conv.in_channels, (side // u) ** 2
    basis = torch.eye(c_in * hw, dtype=torch.float64).view(-1, c_in, side // u, side // u)
    with torch.no_grad():
        cols = F.conv2d(basis, conv.weight.double(), None, padding=conv.padding).flatten(1)  # (c_in·hw, out)
    coef = torch.linalg.lstsq(cols.T, d.unsqueeze(1)).solution
    residual = d - (cols.T @ coef).squeeze(1)
    return float(residual.square().sum() / d.square().sum().clamp_min(1e-30))


def test_the_leak_measurement_catches_the_old_tiny_config():
    cfg = DiffusionConfig.model_construct(**{**DiffusionConfig().model_dump(), **BOTTLENECKED})
    assert unreachable_noise_share(cfg) > 0.05


@pytest.mark.parametrize("profile", sorted(load_params("params.yaml").profiles))
def test_every_profile_can_span_its_output_space(profile):
    cfg = load_params("params.yaml").profiles[profile].model.diffusion
    small = cfg.model_copy(update={"steps": min(cfg.steps, 4)})  # the leak does not depend on K
    assert unreachable_noise_share(small) < 0.01


def test_validation_refuses_a_bottlenecked_unet_and_names_the_key():
    with pytest.raises(ConfigError, match=r"diffusion.*block_channels\[0\]=32 is below 3·unshuffle²=48"):
        parse_model_config({"diffusion": dict(BOTTLENECKED)})


def test_power_spacing_ends_near_zero_and_strictly_decreases():
    times = power_times(1000, 6, t_min=10, power=2.0)
    assert times[0] == 999 and times[-1] == 10
    assert all(a > b for a, b in zip(times, times[1:]))
    assert times[-2] - times[-1] < times[0] - times[1]  # power > 1 packs steps at low noise
    assert power_times(1000, 64, t_min=0, power=8.0)[-1] == 0  # rounding never merges steps


def test_power_spacing_moves_each_step_to_the_next_noise_level_and_ends_clean():
    cfg = DiffusionConfig(block_channels=(48, 64), unshuffle=4, timestep_spacing="power", t_min=5, steps=4)
    table = timesteps(build_scheduler(cfg), cfg, 4)
    assert [t for t, _, _ in table] == power_times(1000, 4, 5, 1.0)
    for (_, _, a_prev), (_, a_next, _) in zip(table, table[1:]):
        assert a_prev == a_next
    assert table[-1][2] == 1.0


def test_trailing_spacing_keeps_diffusers_tables():
    cfg = DiffusionConfig(block_channels=(48, 64), unshuffle=4)
    assert [t for t, _, _ in timesteps(build_scheduler(cfg), cfg, 6)] == [999, 832, 666, 499, 332, 166]
