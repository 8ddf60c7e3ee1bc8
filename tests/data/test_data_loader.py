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


def test_workers_are_clamped_to_the_image_and_shard_counts(shards, corpus):
    """Folders: at most one loader worker per image; shards: also at most one per shard (see below)."""
    from pdc.data.shards import read_manifest

    manifest = read_manifest(shards)
    n_val, val_shards = manifest["counts"]["val"], len(manifest["shards"]["val"])
    stream = make_loader(shards, 16, 2, num_workers=16, split="val")
    assert stream.num_workers == min(n_val, val_shards) >= 1
    _check(next(stream), 2, 16)
    stream.close()
    stream = make_loader(corpus, 16, 2, num_workers=16, rank=0, world=3, split="all")
    assert stream.num_workers == len(list_images(corpus)) // 3 == 2  # 7 images, 2 per rank
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


# ---------------------------------------------------------------------------------------------------
# Scaling: reader slots never outnumber shards; a resumed run continues its stream; pinned memory.

class _FakeWorkerInfo:
    def __init__(self, id: int, num_workers: int) -> None:
        self.id, self.num_workers = id, num_workers


def _slots_of(stream, monkeypatch) -> list[tuple[int, int, list[str]]]:
    """Every reader slot of one rank's loader, enumerated in-process: ``(slot, slots, shard URLs it streams)``,
    using the dataset's own slot logic under a fake ``get_worker_info`` for each of its loader workers."""
    import pdc.data.loader as L

    dataset, out = stream.loader.dataset, []
    for wid in range(max(1, stream.num_workers)):
        info = _FakeWorkerInfo(wid, stream.num_workers) if stream.num_workers else None
        monkeypatch.setattr(L, "get_worker_info", lambda info=info: info)
        slot, slots, _ = dataset._slot()
        out.append((slot, slots, list(dataset.pipeline(slot, slots).pipeline[0].urls)))
    return out


@pytest.fixture
def ten_shards(tmp_path, rgb_folder) -> Path:
    """10 train shards of 6 small images each: enough images for 8 ranks × 6 workers by the image count alone."""
    rgb_folder(tmp_path / "many", 60, h=20, w=24)
    out = tmp_path / "shards10"
    build_shards(tmp_path / "many", out, shard_size=6, val_fraction=0.0, min_size=16)
    return out


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # built, never iterated: no processes
@pytest.mark.parametrize(("world", "workers"), [(8, 1), (3, 3), (2, 5), (16, 0)])
def test_reader_slots_never_outnumber_shards(world, workers, ten_shards, monkeypatch):
    """8 ranks asking 6 loader workers each over 10 shards (60 images: 7 per rank, so the image clamp alone
    would allow all 6): at most 10 slots, and each shard streamed by exactly one slot, which streams only its
    own shards. With more ranks than shards (16) there are no loader workers and each rank reads every shard,
    keeping its samples (the sample-level split)."""
    from collections import Counter

    from pdc.data.shards import read_manifest

    names = [e["name"] for s in read_manifest(ten_shards)["shards"].values() for e in s]
    assert len(names) == 10
    slots = []
    for rank in range(world):
        stream = make_loader(ten_shards, 16, 1, num_workers=6, rank=rank, world=world, split="all")
        assert stream.num_workers == workers  # the count in effect is what the loader reports
        slots += _slots_of(stream, monkeypatch)
    assert sorted(s for s, _, _ in slots) == list(range(len(slots)))
    assert all(n == len(slots) for _, n, _ in slots)
    if world <= len(names):
        assert len(slots) <= len(names)
        read = Counter(Path(u).name for _, _, urls in slots for u in urls)
        assert read == Counter(names)  # every shard by exactly one slot
    else:
        assert len(slots) == world and all(len(urls) == len(names) for _, _, urls in slots)


def test_two_ranks_read_disjoint_shards_that_make_up_the_train_split(tmp_path, rgb_folder, monkeypatch):
    """2 ranks asking 4 loader workers over 3 train shards get 1 worker each (2 slots ≤ 3 shards): the ranks
    stream disjoint shards, and the images they decode together are exactly the train split's."""
    from pdc.imageio import read_image

    files = rgb_folder(tmp_path / "raw", 12, h=20, w=24)
    shards = tmp_path / "shards"
    build_shards(tmp_path / "raw", shards, shard_size=4, val_fraction=0.0, min_size=16)
    assert len(list(shards.glob("train-*.tar"))) == 3
    urls, images = [], []
    for rank in (0, 1):
        stream = make_loader(shards, 16, 1, num_workers=4, rank=rank, world=2, split="train")
        assert stream.num_workers == 1
        ((slot, slots, mine),) = _slots_of(stream, monkeypatch)
        urls.append({Path(u).name for u in mine})
        it = stream.loader.dataset._images(slot, slots, np.random.default_rng(0))
        images.append({next(it).tobytes() for _ in range(60)})  # drawn with replacement: enough to see them all
    assert urls[0] and urls[1] and not urls[0] & urls[1]
    assert urls[0] | urls[1] == {p.name for p in shards.glob("train-*.tar")}
    assert not images[0] & images[1]
    assert images[0] | images[1] == {read_image(f).tobytes() for f in files}


@pytest.mark.parametrize("kind", ["shards", "folder"])
@pytest.mark.parametrize("loader_workers", [0, 2])
def test_a_resumed_stream_continues_instead_of_replaying(kind, loader_workers, corpus, shards):
    """A stream resumed at step N (``start_at``, as ``_run`` does, or ``start_step``) draws other crops than the
    fresh stream's first batches (which today's loader would replay), the same ones on every resume at N, and
    others again at another step; ``start_step=0`` is the fresh stream itself.  It is not compared with batches
    N… of an uninterrupted run: the resumed slots are reseeded rather than fast-forwarded (module docstring)."""
    source = shards if kind == "shards" else corpus

    def first(start: int | None, via_call: bool = True, n: int = 3) -> torch.Tensor:
        kw = dict(seed=1, num_workers=loader_workers, split="train")
        if start is not None and not via_call:
            kw["start_step"] = start
        s = make_loader(source, 16, 2, **kw)
        if start is not None and via_call:
            s.start_at(start)
        out = torch.cat([next(s) for _ in range(n)])
        s.close()
        return out

    fresh, resumed = first(None), first(40)
    assert torch.equal(first(0, via_call=False), fresh)
    assert torch.equal(first(40, via_call=False), resumed)  # deterministic: the checkpoint fixes the stream
    assert not torch.equal(resumed, fresh)  # not a replay of steps 1, 2, …
    assert not torch.equal(first(41), resumed)
    crops = lambda x: {c.numpy().tobytes() for c in x}  # noqa: E731
    assert not crops(resumed) & crops(torch.cat([fresh, first(None, n=6)]))  # not even the same crops


def test_start_at_refuses_a_started_stream(shards):
    s = make_loader(shards, 16, 2)
    next(s)
    with pytest.raises(RuntimeError, match="start_at"):
        s.start_at(5)


def test_pin_memory_reaches_the_dataloader(shards):
    assert make_loader(shards, 16, 2).loader.pin_memory is False
    assert make_loader(shards, 16, 2, pin_memory=True).loader.pin_memory is True
