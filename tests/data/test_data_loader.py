"""The training loader: shapes, dtype, range, endless iteration, seeding, workers, for shards and folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pdc.data.loader import list_images, make_loader, random_crop_flip
from pdc.data.shards import build_shards
from pdc.errors import DataError


@pytest.fixture
def corpus(tmp_path, rgb_folder) -> Path:
    src = tmp_path / "raw"
    rgb_folder(src / "set", 6)
    rgb_folder(src / "tiny", 1, h=20, w=24)  # smaller than the crop: mirror-padded
    return src


@pytest.fixture
def shards(tmp_path, corpus) -> Path:
    out = tmp_path / "shards"
    build_shards(corpus, out, shard_size=2, val_fraction=0.3, min_size=16)
    return out


def _check(batch: torch.Tensor, b: int, crop: int) -> None:
    assert batch.shape == (b, 3, crop, crop)
    assert batch.dtype == torch.float32
    assert 0.0 <= batch.min().item() and batch.max().item() <= 1.0
    assert batch.std().item() > 0.1  # noise images, not a constant fill


@pytest.mark.parametrize("kind", ["shards", "folder"])
def test_batches_shape_dtype_range_and_endless(kind, corpus, shards):
    source = shards if kind == "shards" else corpus
    stream = make_loader(source, crop=32, batch_size=3, split="all" if kind == "folder" else "train")
    assert iter(stream) is stream
    for _ in range(8):  # 24 crops from at most 7 images: the stream never ends
        _check(next(stream), 3, 32)


@pytest.mark.parametrize("kind", ["shards", "folder"])
def test_same_seed_same_batches(kind, corpus, shards):
    source = shards if kind == "shards" else corpus
    a = make_loader(source, 24, 2, seed=3, split="train")
    b = make_loader(source, 24, 2, seed=3, split="train")
    c = make_loader(source, 24, 2, seed=4, split="train")
    xa, xb, xc = (torch.cat([next(s) for _ in range(3)]) for s in (a, b, c))
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)


def test_workers_are_clamped_to_the_shard_count(shards):
    stream = make_loader(shards, 16, 2, num_workers=16, split="val")
    n_val = len(list(shards.glob("val-*.tar")))
    assert stream.num_workers == n_val >= 1
    _check(next(stream), 2, 16)
    stream.close()


def test_train_and_val_differ(shards, corpus):
    assert {p.name.split("-")[0] for p in shards.glob("*.tar")} == {"train", "val"}
    with pytest.raises(DataError, match="split"):
        make_loader(shards, 16, 2, split="test")
    with pytest.raises(DataError, match="no images for split 'val'"):
        make_loader(corpus, 16, 2, split="val", val_fraction=0.0)


def test_random_crop_flip_pads_small_images():
    rng = np.random.default_rng(0)
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    out = random_crop_flip(img, 16, rng)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert set(np.unique(out)) <= set(np.unique(img))
    big = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    crops = [random_crop_flip(big, 8, rng) for _ in range(20)]
    assert len({c.tobytes() for c in crops}) > 10


def test_list_images(tmp_path, rgb_folder):
    rgb_folder(tmp_path / "b", 2)
    rgb_folder(tmp_path / "a", 1)
    (tmp_path / "a" / "readme.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.png").write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a/img000.png",
        "b/img000.png",
        "b/img001.png",
    ]
    with pytest.raises(DataError):
        list_images(tmp_path / "missing")
