"""Which torch device a command runs on: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``.

What holds across devices (README, "Devices"): a stream decodes on the same device class that wrote
it; the entropy coder's scale indexes come from floating-point network outputs, so CPU and GPU may
round a borderline value differently, and the decoder would then read other symbols. The initial
diffusion noise is drawn on the CPU from the stream's seed, so it is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pdc.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """"auto" → cuda when available; an explicit "cuda" without a GPU is a configuration error."""
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r} (auto, cpu or cuda)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} was asked for, but no CUDA GPU is available (use auto or cpu)")
    return name


def codec_device(name: str) -> str:
    """:func:`resolve_device` for encoding/decoding: on CUDA also pins cuDNN to deterministic kernels, so
    the decoder's network outputs (and the rANS indexes computed from them) repeat the encoder's exactly."""
    device = resolve_device(name)
    if device.startswith("cuda"):
        import torch

        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return device


@contextmanager
def training_backends(device: object) -> Iterator[None]:
    """Backend settings for a training stage on ``device`` (a name or a ``torch.device``): on CUDA,
    ``cudnn.benchmark`` (cuDNN times its convolution kernels once per input shape and keeps the fastest:
    training crops have one fixed shape). Restored on exit, so decoding later in the same process keeps
    the deterministic kernels :func:`codec_device` asks for. Nothing changes on the CPU."""
    if not str(device).startswith("cuda"):
        yield
        return
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
