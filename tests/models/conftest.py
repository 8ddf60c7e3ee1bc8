"""A micro CorrDiff model (random weights, fast on CPU) shared by the codec tests."""

from __future__ import annotations

import pytest
import torch

from pdc.config import ModelConfig, parse_model_config

#: The micro architecture every test model uses (random or briefly trained weights): the UNet's outer
#: block has 3·2² = 12 channels, the least that spans its output at unshuffle 2.
MICRO = {
    "codec": {"N": 16, "M": 24},
    "diffusion": {"block_channels": [12, 16], "norm_groups": 4, "unshuffle": 2, "latent_channels": 4, "steps": 3},
    "privileged": {"refine_channels": 8, "refine_blocks": 1},
    "correction": {"levels": 8},
}


def micro_config(**correction) -> ModelConfig:
    cfg = dict(MICRO)
    cfg["correction"] = {**MICRO["correction"], **correction}
    return parse_model_config(cfg)


@pytest.fixture(scope="session")
def micro_model():
    from pdc.models.package import init_model

    return init_model(micro_config(), seed=0)


@pytest.fixture(scope="session")
def photo() -> torch.Tensor:
    """A 96×80 natural-ish image (not a multiple of 64: exercises pad and crop)."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[100:196, 150:230].copy()).permute(2, 0, 1).float().div(255)
    return img.unsqueeze(0)
