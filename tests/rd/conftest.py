"""Fixtures for the RD evaluation tests: a micro 2-rate-point model set and tiny image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pdc.config import parse_model_config
from pdc.imageio import encode_png

from tests.models.conftest import MICRO as _MICRO

#: The micro architecture of tests/models with 2 steps (random weights: plumbing and schema, not quality).
MICRO = {**_MICRO, "diffusion": {**_MICRO["diffusion"], "steps": 2}}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Micro models run hundreds of tiny convolutions: with 2 OpenMP threads on a shared 2-core machine
    each one waits for a descheduled worker (3–10× slower). One thread; restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_set(tmp_path_factory) -> Path:
    from pdc.models.package import init_model, save_package, write_model_set

    root = tmp_path_factory.mktemp("models")
    packages = []
    for i, lam in enumerate((0.0018, 0.0067)):
        model = init_model(parse_model_config(MICRO), seed=i)
        save_package(model, root / f"p{i}", extra={"rate_point": lam})
        packages.append(root / f"p{i}")
    write_model_set(root / "set", packages)
    return root / "set"


def _photo_folder(root: Path, crops: list[tuple[int, int, int, int]]) -> Path:
    from skimage import data

    img = data.astronaut()
    root.mkdir(parents=True, exist_ok=True)
    for i, (top, left, h, w) in enumerate(crops):
        (root / f"img{i}.png").write_bytes(encode_png(np.ascontiguousarray(img[top : top + h, left : left + w])))
    return root


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    """Three 80×72 photos (not multiples of 64: exercises padding); the CLI test keeps two."""
    return _photo_folder(tmp_path_factory.mktemp("imgs") / "test",
                         [(100, 150, 80, 72), (300, 200, 80, 72), (30, 330, 80, 72)])


@pytest.fixture(scope="session")
def fid_images(tmp_path_factory) -> Path:
    """Two 256×256 photos: one FID patch each (the shifted grid does not fit)."""
    return _photo_folder(tmp_path_factory.mktemp("imgs") / "fid", [(0, 0, 256, 256), (256, 256, 256, 256)])
