"""Training batches from a shards folder or a plain image folder: random crops, random horizontal flips.

``make_loader`` returns an endless stream of float32 batches ``(B, 3, crop, crop)`` in [0, 1]; training
is step-based, so there are no epochs to manage.

* **Shards** (a folder with ``manifest.json``, or its URL: ``file://``, ``https://``, ``s3://`` through
  fsspec, or a ``pipe:`` command template): shards of the split are drawn with replacement (resampled),
  streamed, decoded, cropped and shuffled through a buffer, and batched.
* **Image folder**: each reader walks its share of :func:`list_images` in a fresh random order per
  pass, doing the same decode and crop work.  ``split="train"``/``"val"`` applies the shards' hash rule
  (with ``val_fraction``) to paths relative to the folder; ``split="all"`` uses every image.

Data-parallel training: ``rank``/``world`` and the loader workers define reader *slots* (one per rank
and loader worker, ``world · max(1, workers)`` in all); each slot reads a disjoint part of the data with
randomness seeded by (seed, rank, worker), so no two workers see the same crops.

* **Reader slots never outnumber shards.** For shards, the loader workers per rank are
  ``min(num_workers, images per rank, shards // world)`` (0 = in-process), so with at least as many
  shards as ranks ``world · max(1, workers) <= shards`` and every slot owns whole shards
  (``shards[slot::slots]``): each tar file is streamed by exactly one slot.  With fewer shards than
  ranks there are no loader workers and each rank reads every shard, keeping the samples whose global
  index is its rank modulo ``world`` (the sample-level split).  E.g. 8 ranks asking 6 workers each over
  10 shards get 1 worker each: 8 slots, 2 of them owning two shards.
* **Image folders** keep the per-image split (every ``slots``-th file) and ``num_workers`` is clamped
  to the images per rank only.

Images smaller than the crop are **mirror-padded** (``numpy.pad(mode="symmetric")``) up to the crop size
rather than dropped; import and validation already reject images below ``--min-size`` (default: 256),
so padding only happens with a crop larger than that.

Loader workers: ``num_workers`` is clamped as above (:attr:`BatchStream.num_workers` is the count in
effect); 0 loads in the calling process.  A run with the same seed, rank, worker counts and start step
sees the same batches.

Resuming: a run resumed from a checkpoint at step ``S > 0`` tells its stream (``start_step=S`` or
:meth:`BatchStream.start_at`) and each slot then seeds its crops, shuffle and shard draws from
(seed, rank, worker, S): a fresh, reproducible segment of the endless random stream instead of a replay
of the crops of steps 1…S.  It is not the batch sequence an uninterrupted run would have drawn after
step S (that would mean decoding every image read so far again); the stream has no epochs and draws with
replacement, so the two are alike in distribution.  ``start_step=0`` (a fresh run) is the stream as before.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pdc.fsutil import list_files
from pdc.data.shards import DEFAULT_VAL_FRACTION, MANIFEST, ShardLocation, is_url, split_of
from pdc.errors import DataError
from pdc.imageio import DATASET_SUFFIXES, _to_rgb8, read_image


def list_images(folder: Path) -> list[Path]:
    """Image files (by suffix, case-insensitive) under ``folder``, recursive, hidden names skipped, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    return [folder / r for r in list_files(folder) if r.suffix.lower() in DATASET_SUFFIXES]


def random_crop_flip(image: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``crop``x``crop`` window of an (H, W, 3) uint8 image, flipped left-right with p = 0.5."""
    h, w = image.shape[:2]
    if h < crop or w < crop:
        ph, pw = max(0, crop - h), max(0, crop - w)
        image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="symmetric")
        h, w = image.shape[:2]
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    out = image[y : y + crop, x : x + crop]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def decode_png_bytes(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB from encoded image bytes (the shard counterpart of :func:`read_image`)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.array(_to_rgb8(img), dtype=np.uint8)


def _collate(crops: list[np.ndarray]) -> torch.Tensor:
    batch = torch.from_numpy(np.stack(crops))  # B, H, W, 3 uint8
    return batch.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


#: Random crops taken from each decoded image before the next is decoded: decoding a large PNG costs far
#: more than cropping it, and the shuffle buffer mixes the crops across images.
CROPS_PER_IMAGE = 4


class _Batches(IterableDataset):
    """Shared part of both pipelines: which reader slot this process is, its random stream, a shuffle
    buffer of crops, then batches.

    A *slot* is one (rank, loader worker) pair: ``slot = rank · loader_workers + worker``, out of
    ``world · loader_workers``. Each slot reads a disjoint part of the data and seeds its randomness
    with ``(seed, rank, worker)`` (and ``start_step`` when resumed), so no two ranks (or loader
    workers) ever produce the same crop.
    """

    def __init__(self, crop: int, batch_size: int, seed: int, shuffle_buffer: int, rank: int, world: int) -> None:
        super().__init__()
        self.crop, self.batch_size, self.seed, self.shuffle_buffer = crop, batch_size, seed, shuffle_buffer
        self.rank, self.world = rank, world
        self.start_step = 0  # the optimisation step a resumed run continues from (0 = fresh)

    def _slot(self) -> tuple[int, int, np.random.Generator]:
        wid, nw = _worker()
        entropy = [self.seed, self.rank, wid, 0x5EED] + ([self.start_step] if self.start_step else [])
        return self.rank * nw + wid, self.world * nw, np.random.default_rng(entropy)

    def batches(self, crops: Iterator[np.ndarray], rng: np.random.Generator) -> Iterator[torch.Tensor]:
        buf: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for c in crops:
            buf.append(c)
            if len(buf) < self.shuffle_buffer:
                continue
            i = int(rng.integers(0, len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            batch.append(buf.pop())
            if len(batch) == self.batch_size:
                yield _collate(batch)
                batch = []

    def _images(self, slot: int, slots: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[torch.Tensor]:
        slot, slots, rng = self._slot()
        crops = (random_crop_flip(image, self.crop, rng) for image in self._images(slot, slots, rng)
                 for _ in range(CROPS_PER_IMAGE))
        return self.batches(crops, rng)


class _FolderCrops(_Batches):
    def __init__(self, files: list[Path], *args) -> None:
        super().__init__(*args)
        self.files = files

    def _images(self, slot: int, slots: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        mine = self.files[slot::slots]
        while True:
            for i in rng.permutation(len(mine)):
                yield read_image(mine[i])


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    import fsspec

    return fsspec.open(url, mode).open()


def _register_fsspec_scheme(url: str) -> None:
    """Let ``webdataset.gopen`` open URLs of a scheme it has no handler for (``s3://``, ``gcs://``,
    ``memory://`` …) through fsspec, as the manifest is read; pipe:, file://, http(s):// stay its own."""
    from urllib.parse import urlparse

    from webdataset.gopen import gopen_schemes

    scheme = urlparse(url).scheme
    if scheme and scheme not in ("file", "pipe") and scheme not in gopen_schemes:
        gopen_schemes[scheme] = _gopen_fsspec


class _ShardCrops(_Batches):
    """Shards drawn with replacement, streamed and decoded by a WebDataset pipeline.

    The pipeline is ``webdataset.ResampledShards`` (seeded by (seed, rank, worker) and the epoch) →
    ``tarfile_to_samples`` → this slot's samples → decoded PNG, cut into epochs by ``with_epoch`` (one
    epoch = as many samples as the slot owns; each epoch draws its shards afresh). ``webdataset.WebDataset
    (resampled=True)`` builds the same chain but seeds its shard draws from the pid and the clock, so
    runs would not repeat.

    With at least as many shards as slots each slot owns whole shards (``shards[slot::slots]``) and
    streams only those; otherwise every slot reads every shard and keeps the samples whose global index
    (manifest order) is ``slot`` modulo ``slots``.  :func:`make_loader` picks the loader workers so that
    the second case only happens with fewer shards than ranks (and no loader workers).
    """

    def __init__(self, location: ShardLocation, shards: list[dict], *args) -> None:
        super().__init__(*args)
        self.location, self.shards = location, shards

    def pipeline(self, slot: int, slots: int):
        """The WebDataset pipeline of one reader slot: an endless stream of decoded images per epoch."""
        import webdataset as wds

        by_shard = len(self.shards) >= slots
        mine = list(range(slot, len(self.shards), slots)) if by_shard else list(range(len(self.shards)))
        urls = [self.location.url(self.shards[k]["name"]) for k in mine]
        _register_fsspec_scheme(urls[0])
        offsets = {self.location.url(e["name"]): int(o) for e, o in
                   zip(self.shards, np.cumsum([0] + [int(e["samples"]) for e in self.shards]))}
        total = sum(int(e["samples"]) for e in self.shards)
        resumed = f",{self.start_step}" if self.start_step else ""
        digest = hashlib.sha256(f"{self.seed},{self.rank},{slot},{slots}{resumed}".encode()).digest()
        slot_seed = int.from_bytes(digest[:4], "big")
        owned = sum(int(self.shards[k]["samples"]) for k in mine) if by_shard else len(range(slot, total, slots))

        def keep_mine(samples: Iterator[dict]) -> Iterator[dict]:
            # Position of each sample in its shard: a new shard starts when the URL changes or a key
            # comes back (the same shard drawn again; keys are unique within a shards folder).
            url, seen = None, set()
            for sample in samples:
                if sample["__url__"] != url or sample["__key__"] in seen:
                    url, seen = sample["__url__"], set()
                j = len(seen)
                seen.add(sample["__key__"])
                if "png" in sample and (by_shard or (offsets[url] + j) % slots == slot):
                    yield sample

        def raise_data_error(exn: Exception) -> bool:
            url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in offsets), None)
            raise DataError(f"{url or self.location.source}: cannot read shard ({exn.args[0] if exn.args else exn})")

        return wds.DataPipeline(
            wds.ResampledShards(urls, seed=0, worker_seed=lambda: slot_seed, deterministic=True),
            wds.tarfile_to_samples(handler=raise_data_error),
            keep_mine,
            wds.map(lambda sample: decode_png_bytes(sample["png"])),
        ).with_epoch(owned)

    def _images(self, slot: int, slots: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        pipeline = self.pipeline(slot, slots)
        while True:
            try:
                yield from pipeline
            except (OSError, ValueError, tarfile.TarError) as exc:  # a failed pipe: command, a truncated tar
                raise DataError(f"{self.location.source}: cannot read shards ({exc})") from None


class BatchStream:
    """An endless iterator of batches; ``iter()`` returns itself.  ``close()`` stops the workers.

    ``num_workers`` is the loader workers in effect (after the clamps of :func:`make_loader`).
    """

    def __init__(self, loader: DataLoader, source: Path, kind: str, num_workers: int) -> None:
        self.loader, self.source, self.kind, self.num_workers = loader, source, kind, num_workers
        self._it: Iterator[torch.Tensor] | None = None

    def start_at(self, step: int) -> None:
        """Continue a run resumed at optimisation ``step`` (see the module docstring); before the first batch."""
        if self._it is not None:
            raise RuntimeError("start_at() after the stream has started")
        self.loader.dataset.start_step = int(step)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._it = iter(self.loader)
        return next(self._it)

    def close(self) -> None:
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def make_loader(
    source: str | Path,
    crop: int,
    batch_size: int,
    *,
    seed: int = 0,
    num_workers: int = 0,
    split: str = "train",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    shuffle_buffer: int | None = None,
    rank: int = 0,
    world: int = 1,
    start_step: int = 0,
    pin_memory: bool = False,
) -> BatchStream:
    """Endless float32 batches (B, 3, crop, crop) in [0, 1] from shards (a folder or a URL, see
    :class:`~pdc.data.shards.ShardLocation`) or an image folder.

    ``split`` is ``"train"`` or ``"val"`` (shards and folders) or ``"all"`` (folders only).
    ``rank``/``world`` select this data-parallel worker's share; ``num_workers`` loader processes split
    it further (see :class:`_Batches`); for shards they are clamped so that reader slots never outnumber
    shards (module docstring).  ``start_step`` is the step a resumed run continues from (0 = fresh).
    ``pin_memory`` puts batches in page-locked memory (for a CUDA training device).
    ``shuffle_buffer`` (crops held for shuffling) defaults to ``max(2 * batch_size, 4 * CROPS_PER_IMAGE)``.
    Raises :class:`DataError` when the source is missing, the split holds no images, or has fewer
    images than there are workers to share them.
    """
    if crop < 1 or batch_size < 1:
        raise DataError(f"crop and batch size must be >= 1 (got crop={crop}, batch_size={batch_size})")
    if split not in ("train", "val", "all"):
        raise DataError(f"unknown split {split!r} (train, val or all)")
    if not 0 <= rank < world:
        raise DataError(f"rank {rank} is outside a group of {world} workers")
    buffer = max(1, shuffle_buffer if shuffle_buffer is not None else max(2 * batch_size, 4 * CROPS_PER_IMAGE))
    location = ShardLocation(source)
    common = (crop, batch_size, seed, buffer, rank, world)
    if location.is_shards:
        manifest = location.manifest()
        entries = (
            list(manifest["shards"].get(split, []))
            if split != "all"
            else [e for s in manifest["shards"].values() for e in s]
        )
        if not entries:
            raise DataError(f"{source}: the {split} split has no shards")
        if any("samples" not in e for e in entries):
            raise DataError(f"{source}: {MANIFEST} lists shards without sample counts (rebuild with `pdc data shards`)")
        if not is_url(source):
            missing = [e["name"] for e in entries if not (Path(source) / e["name"]).is_file()]
            if missing:
                raise DataError(f"{source}: shard(s) listed in {MANIFEST} are missing: {', '.join(missing[:3])}")
        dataset: _Batches = _ShardCrops(location, entries, *common)
        kind, images = "shards", sum(int(e["samples"]) for e in entries)
        slot_cap = len(entries) // world  # loader workers per rank with world · workers <= shards
    else:
        source = Path(source)
        files = list_images(source)
        if split != "all":
            files = [f for f in files if split_of(f.relative_to(source).as_posix(), val_fraction) == split]
        if not files:
            raise DataError(f"{source}: no images for split {split!r}")
        dataset = _FolderCrops(files, *common)
        kind, images = "folder", len(files)
        slot_cap = len(files)
    per_rank = images // world
    if per_rank < 1:
        raise DataError(f"{source}: the {split} split has {images} image(s), fewer than the {world} data-parallel "
                        "workers that must each read their own")
    workers = max(0, min(int(num_workers), per_rank, slot_cap))
    dataset.start_step = int(start_step)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False,
                        pin_memory=bool(pin_memory))
    return BatchStream(loader, Path(source) if not is_url(source) else source, kind, workers)
