"""Privileged end-to-end decoder D_e(ŷ): the codec's g_s plus a residual refiner, trained for MSE.

It is "privileged" because it is not the decoder whose output users see in CorrDiff mode: the encoder
uses x_e = D_e(ŷ) as the anchor each diffusion estimate is pulled towards, and the decoder can compute
the same x_e from ŷ.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pdc.config import PrivilegedConfig


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PrivilegedDecoder(nn.Module):
    def __init__(self, cfg: PrivilegedConfig, g_s: nn.Module) -> None:
        super().__init__()
        self.g_s = copy.deepcopy(g_s)
        ch = cfg.refine_channels
        self.refine = nn.Sequential(
            nn.Conv2d(12, ch, 3, padding=1),
            *[_ResBlock(ch) for _ in range(cfg.refine_blocks)],
            nn.Conv2d(ch, 12, 3, padding=1),
        )
        nn.init.zeros_(self.refine[-1].weight)  # start exactly at g_s
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        base = self.g_s(y_hat)
        delta = F.pixel_shuffle(self.refine(F.pixel_unshuffle(base, 2)), 2)
        return (base + delta).clamp(0, 1)
