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


def test_workers_are_clamped_to_the_image_count(shards):
    from pdc.data.shards import read_manifest

    stream = make_loader(shards, 16, 2, num_workers=16, split="val")
    n_val = read_manifest(shards)["counts"]["val"]
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


# ---------------------------------------------------------------------------------------------------
# Data-parallel reading: every (rank, loader worker) slot reads its own images.

def _slot_images(stream, slot: int, slots: int, n: int) -> set[bytes]:
    """Pixel bytes of the first ``n`` images slot ``slot`` of ``slots`` decodes (the dataset's own reader)."""
    it = stream.loader.dataset._images(slot, slots, np.random.default_rng(slot))
    return {next(it).tobytes() for _ in range(n)}


@pytest.mark.parametrize("kind", ["shards", "folder"])
@pytest.mark.parametrize("slots", [2, 4])  # shards: 2 = whole shards per slot, 4 = every 4th sample
def test_reader_slots_partition_the_images(kind, slots, corpus, shards):
    source = shards if kind == "shards" else corpus
    stream = make_loader(source, 16, 1, split="train")
    seen = [_slot_images(stream, s, slots, 12) for s in range(slots)]
    assert all(seen), "a slot read nothing"
    for a in range(slots):
        for b in range(a + 1, slots):
            assert not (seen[a] & seen[b]), f"slots {a} and {b} read the same image"
    everything = _slot_images(stream, 0, 1, 40)
    assert set().union(*seen) == everything  # together they read the whole split


@pytest.mark.parametrize("kind", ["shards", "folder"])
@pytest.mark.parametrize("loader_workers", [0, 2])
def test_two_ranks_never_see_the_same_crop(kind, loader_workers, corpus, shards):
    source = shards if kind == "shards" else corpus
    crops = []
    for rank in (0, 1):
        stream = make_loader(source, 16, 2, seed=0, rank=rank, world=2, num_workers=loader_workers, split="train")
        crops.append({c.numpy().tobytes() for _ in range(6) for c in next(stream)})
        stream.close()
    assert len(crops[0]) == len(crops[1]) == 12
    assert not crops[0] & crops[1]


def test_more_ranks_than_images_is_refused(corpus):
    with pytest.raises(DataError, match="fewer than the 64 data-parallel workers"):
        make_loader(corpus, 16, 1, rank=0, world=64, split="all")


def test_shards_read_from_a_url_equal_the_local_folder(shards):
    """file:// (fsspec) and a pipe: command give the very batches the folder gives (same seed)."""
    local = make_loader(shards, 16, 2, seed=5)
    via_fsspec = make_loader(shards.resolve().as_uri(), 16, 2, seed=5)
    via_pipe = make_loader(f"pipe:cat {shards.resolve()}/{{name}}", 16, 2, seed=5)
    a, b, c = (torch.cat([next(s) for _ in range(4)]) for s in (local, via_fsspec, via_pipe))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_a_bad_shard_url_names_itself(tmp_path):
    with pytest.raises(DataError, match=r"nowhere/manifest.json"):
        make_loader((tmp_path / "nowhere").as_uri(), 16, 2)
    with pytest.raises(DataError, match=r"\{name\} placeholder"):
        make_loader("pipe:cat /tmp/x", 16, 2)
    with pytest.raises(DataError, match=r"pipe:cat .*nowhere/manifest.json"):
        make_loader(f"pipe:cat {tmp_path}/nowhere/{{name}}", 16, 2)


def test_shards_are_read_by_a_resampled_webdataset_pipeline(shards):
    """The reader is webdataset's: ResampledShards (seeded, deterministic) → tarfile_to_samples, cut into
    epochs by with_epoch; each epoch is one slot's worth of samples and draws its shards afresh."""
    import webdataset as wds

    dataset = make_loader(shards, 16, 1, seed=2).loader.dataset
    pipe = dataset.pipeline(0, 1)
    assert isinstance(pipe, wds.DataPipeline)
    assert isinstance(pipe.pipeline[0], wds.ResampledShards) and pipe.pipeline[0].deterministic
    owned = sum(e["samples"] for e in dataset.shards)
    assert pipe.nsamples == owned
    first = [img.tobytes() for img in pipe]
    assert len(first) == owned
    again = [img.tobytes() for img in dataset.pipeline(0, 1)]
    assert first == again  # same seed, same epoch: same draws


def test_shards_from_an_fsspec_filesystem(shards):
    """A scheme webdataset cannot open itself (memory://, s3:// …) goes through fsspec."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in shards.iterdir():
        fs.pipe(f"/pdc-test-shards/{p.name}", p.read_bytes())
    try:
        a = torch.cat([next(make_loader("memory://pdc-test-shards", 16, 2, seed=4)) for _ in range(1)])
        b = torch.cat([next(make_loader(shards, 16, 2, seed=4)) for _ in range(1)])
        assert torch.equal(a, b)
    finally:
        fs.rm("/pdc-test-shards", recursive=True)
