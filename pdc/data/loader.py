"""Training batches from a shards folder or a plain image folder: random crops, random horizontal flips.

``make_loader`` returns an endless stream of float32 batches ``(B, 3, crop, crop)`` in [0, 1]; training
is step-based, so there are no epochs to manage.

* **Shards folder** (has ``manifest.json``): a WebDataset pipeline that resamples shards of the split
  (``ResampledShards``, i.e. ``resampled=True``), reads samples, decodes, crops and shuffles them
  through a buffer, and batches.  Each worker draws its own shard sequence, so shards are shuffled
  across workers.
* **Image folder**: each worker walks its share of :func:`list_images` in a fresh random order per pass,
  doing the same decode and crop work.  ``split="train"``/``"val"`` applies the shards' hash rule (with
  ``val_fraction``) to paths relative to the folder; ``split="all"`` uses every image.

Images smaller than the crop are **mirror-padded** (``numpy.pad(mode="symmetric")``) up to the crop size
rather than dropped; import and validation already reject images below ``--min-size`` (default: 256),
so padding only happens with a crop larger than that.

Workers: ``num_workers`` is clamped to the number of shards of the split (folder: number of images);
0 loads in the calling process.  Randomness is seeded from ``(seed, worker id)``, so a run with the same
seed and worker count sees the same batches.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pdc.fsutil import list_files
from pdc.data.shards import DEFAULT_VAL_FRACTION, MANIFEST, read_manifest, split_of
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


class _Batches:
    """Shared tail of both pipelines: a shuffle buffer of crops, then batches."""

    def __init__(self, crop: int, batch_size: int, seed: int, shuffle_buffer: int) -> None:
        self.crop, self.batch_size, self.seed, self.shuffle_buffer = crop, batch_size, seed, shuffle_buffer

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


class _FolderCrops(IterableDataset, _Batches):
    def __init__(self, files: list[Path], crop: int, batch_size: int, seed: int, shuffle_buffer: int) -> None:
        IterableDataset.__init__(self)
        _Batches.__init__(self, crop, batch_size, seed, shuffle_buffer)
        self.files = files

    def _crops(self, rng: np.random.Generator, wid: int, nw: int) -> Iterator[np.ndarray]:
        mine = self.files[wid::nw]
        while True:
            for i in rng.permutation(len(mine)):
                image = read_image(mine[i])
                for _ in range(CROPS_PER_IMAGE):
                    yield random_crop_flip(image, self.crop, rng)

    def __iter__(self) -> Iterator[torch.Tensor]:
        wid, nw = _worker()
        rng = np.random.default_rng([self.seed, wid, 0x5EED])
        return self.batches(self._crops(rng, wid, nw), rng)


class _ShardCrops(IterableDataset, _Batches):
    def __init__(self, urls: list[str], crop: int, batch_size: int, seed: int, shuffle_buffer: int) -> None:
        IterableDataset.__init__(self)
        _Batches.__init__(self, crop, batch_size, seed, shuffle_buffer)
        self.urls = urls

    def __iter__(self) -> Iterator[torch.Tensor]:
        import webdataset as wds

        wid, _ = _worker()
        rng = np.random.default_rng([self.seed, wid, 0x5EED])
        shards = wds.ResampledShards(self.urls, seed=self.seed, deterministic=True)
        samples = wds.tarfile_to_samples()(iter(shards))
        crops = (
            random_crop_flip(image, self.crop, rng)
            for image in (decode_png_bytes(s["png"]) for s in samples if "png" in s)
            for _ in range(CROPS_PER_IMAGE)
        )
        return self.batches(crops, rng)


class BatchStream:
    """An endless iterator of batches; ``iter()`` returns itself.  ``close()`` stops the workers."""

    def __init__(self, loader: DataLoader, source: Path, kind: str, num_workers: int) -> None:
        self.loader, self.source, self.kind, self.num_workers = loader, source, kind, num_workers
        self._it: Iterator[torch.Tensor] | None = None

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
    source: Path,
    crop: int,
    batch_size: int,
    *,
    seed: int = 0,
    num_workers: int = 0,
    split: str = "train",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    shuffle_buffer: int | None = None,
) -> Iterable[torch.Tensor]:
    """Endless float32 batches (B, 3, crop, crop) in [0, 1] from a shards folder or an image folder.

    ``split`` is ``"train"`` or ``"val"`` (shards and folders) or ``"all"`` (folders only).
    ``shuffle_buffer`` (crops held for shuffling) defaults to ``max(2 * batch_size, 4 * CROPS_PER_IMAGE)``.
    Raises :class:`DataError` when the source is missing or the split holds no images.
    """
    source = Path(source)
    if crop < 1 or batch_size < 1:
        raise DataError(f"crop and batch size must be >= 1 (got crop={crop}, batch_size={batch_size})")
    if split not in ("train", "val", "all"):
        raise DataError(f"unknown split {split!r} (train, val or all)")
    buffer = max(1, shuffle_buffer if shuffle_buffer is not None else max(2 * batch_size, 4 * CROPS_PER_IMAGE))
    if (source / MANIFEST).is_file():
        manifest = read_manifest(source)
        names = (
            [e["name"] for e in manifest["shards"].get(split, [])]
            if split != "all"
            else [e["name"] for s in manifest["shards"].values() for e in s]
        )
        if not names:
            raise DataError(f"{source}: the {split} split has no shards")
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataError(f"{source}: shard(s) listed in {MANIFEST} are missing: {', '.join(missing[:3])}")
        dataset: IterableDataset = _ShardCrops([str(source / n) for n in names], crop, batch_size, seed, buffer)
        kind, limit = "shards", len(names)
    else:
        files = list_images(source)
        if split != "all":
            files = [f for f in files if split_of(f.relative_to(source).as_posix(), val_fraction) == split]
        if not files:
            raise DataError(f"{source}: no images for split {split!r}")
        dataset = _FolderCrops(files, crop, batch_size, seed, buffer)
        kind, limit = "folder", len(files)
    workers = max(0, min(int(num_workers), limit))
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False)
    return BatchStream(loader, source, kind, workers)
