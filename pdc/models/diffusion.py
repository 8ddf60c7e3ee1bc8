"""Conditional diffusion denoiser ε_θ(x_t, t | ŷ) on top of diffusers' ``UNet2DModel``.

The diffusion runs in *residual space*: it models r = s · (x − x_b), where x_b = g_s(ŷ) is the codec's
own reconstruction and s is ``residual_scale``. The UNet sees pixel-unshuffled tensors (space-to-depth
by ``unshuffle``), which makes full-resolution sampling affordable on CPUs::

    x_t (3, H, W) ──unshuffle──┐
    x_b (3, H, W) ──unshuffle──┼─ concat ─▶ UNet2DModel(t) ─▶ ε̂ (3·u², H/u, W/u) ──shuffle──▶ ε̂ (3, H, W)
    ŷ (M, H/16, W/16) ─1×1 conv─▶ upsample ┘
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel
from torch import nn

from pdc.config import DiffusionConfig


class ConditionalDenoiser(nn.Module):
    def __init__(self, cfg: DiffusionConfig, latent_channels_in: int) -> None:
        super().__init__()
        self.cfg = cfg
        u = cfg.unshuffle
        if 16 % u:
            raise ValueError("unshuffle must divide the codec's latent stride (16)")
        self.latent_proj = nn.Conv2d(latent_channels_in, cfg.latent_channels, 1) if cfg.latent_channels else None
        n = len(cfg.block_channels)
        self.unet = UNet2DModel(
            sample_size=None,
            in_channels=2 * 3 * u * u + cfg.latent_channels,
            out_channels=3 * u * u,
            block_out_channels=cfg.block_channels,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_groups,
        )

    @property
    def multiple(self) -> int:
        """Spatial size the input must be a multiple of."""
        return self.cfg.unshuffle * 2 ** (len(self.cfg.block_channels) - 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, y_hat: torch.Tensor, x_base: torch.Tensor) -> torch.Tensor:
        u = self.cfg.unshuffle
        parts = [F.pixel_unshuffle(x_t, u), F.pixel_unshuffle(x_base * 2 - 1, u)]
        if self.latent_proj is not None:
            lat = self.latent_proj(y_hat)
            parts.append(F.interpolate(lat, scale_factor=16 // u, mode="nearest"))
        h = torch.cat(parts, dim=1)
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.long, device=x_t.device)
        eps = self.unet(h, t.expand(x_t.shape[0])).sample
        return F.pixel_shuffle(eps, u)


def build_scheduler(cfg: DiffusionConfig) -> DDIMScheduler:
    """diffusers' DDIM tables with trailing timestep spacing (deterministic, η = 0)."""
    return DDIMScheduler(
        num_train_timesteps=cfg.train_timesteps,
        beta_schedule=cfg.beta_schedule,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type=cfg.prediction_type,
    )


def split_prediction(kind: str, out: torch.Tensor, x_t: torch.Tensor, a_t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from the network output for each parameterisation (x_t = √ᾱ x0 + √(1−ᾱ) ε)."""
    sa, sb = a_t**0.5, (1 - a_t) ** 0.5
    if kind == "epsilon":
        return (x_t - sb * out) / sa, out
    if kind == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x0
        return sa * x_t - sb * out, sb * x_t + sa * out
    return out, (x_t - sa * out) / sb  # "sample"


def training_target(kind: str, x0: torch.Tensor, noise: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """What the network is trained to output at noise level ᾱ_t."""
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return a_t.sqrt() * noise - (1 - a_t).sqrt() * x0
    return x0
