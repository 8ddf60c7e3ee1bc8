"""WebDataset shards: deterministic tar files for the train and val splits, plus ``manifest.json``.

* **Split rule** (stable when files are added or removed): a file goes to ``val`` iff the first 8 bytes
  of ``sha256(relative POSIX path)``, read as a big-endian integer, modulo 1000 are below
  ``round(val_fraction * 1000)``.  It depends only on the file's own path.
* **Order**: within a split, samples are ordered by that same digest (then path): deterministic, and it
  mixes corpora across shards, which helps shuffling.  ``shard_size`` samples go into each shard.
* **Sample**: ``<key>.png`` (8-bit RGB PNG; a clean RGB PNG source is stored verbatim, anything else is
  converted as in :mod:`pdc.data.validate` and encoded with :func:`pdc.imageio.encode_png`) and
  ``<key>.json`` (source path and size).  The key is the relative path without its suffix, with dots
  in the file name replaced by ``_`` (WebDataset splits keys at the first dot of the name).
* **Bytes**: written by ``webdataset.ShardWriter`` with fixed member metadata (mtime 2000-01-01, uid/gid
  0, no user/group names, mode 0444), so two runs on the same input give byte-identical shards (the
  same bytes the earlier hand-written tarfile writer produced).
* **No test images**: an image equal by pixels to one of the known test sets (``data/test/*`` and any
  folder passed as ``test_sets``) is refused, with both files named (:mod:`pdc.data.testsets`).
* **Atomicity**: the output folder is built next to ``out`` and renamed over it in one step; a refused
  build leaves ``out`` as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from pdc import __version__
from pdc.fsutil import list_files, sha256_file, staging_dir, tree_hash, write_file
from pdc.data.testsets import pixel_hash  # noqa: F401  (re-exported: the one pixel-identity function)
from pdc.data.validate import DEFAULT_MIN_SIZE, inspect_file
from pdc.errors import DataError
from pdc.imageio import MAX_PIXELS, encode_png

MANIFEST = "manifest.json"
FORMAT = "pdc-shards/1"
SPLITS = ("train", "val")
DEFAULT_SHARD_SIZE = 16
DEFAULT_VAL_FRACTION = 0.1
#: Fixed tar member mtime (2000-01-01T00:00:00Z) for reproducible bytes.
TAR_MTIME = 946_684_800

Progress = Callable[[int, int], None]


def _path_digest(rel: str) -> bytes:
    return hashlib.sha256(rel.encode("utf-8")).digest()


def split_of(rel: str | PurePosixPath, val_fraction: float = DEFAULT_VAL_FRACTION) -> str:
    """``"val"`` or ``"train"`` for a relative path (POSIX separators), by the fixed hash rule."""
    if not 0.0 <= val_fraction <= 1.0:
        raise DataError(f"val fraction must be in [0, 1], got {val_fraction}")
    bucket = int.from_bytes(_path_digest(str(PurePosixPath(rel)))[:8], "big") % 1000
    return "val" if bucket < round(val_fraction * 1000) else "train"


def sample_key(rel: str) -> str:
    """WebDataset key of a relative path: suffix dropped, dots in the file name replaced by ``_``."""
    p = PurePosixPath(rel)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    stem = stem.replace(".", "_")
    return str(p.parent / stem) if str(p.parent) != "." else stem


class _ShardSink:
    """``<split>-NNNNNN.tar`` files of ``shard_size`` samples each, through ``webdataset.ShardWriter``.

    The writer is opened on the first sample (an empty split has no shard file), with fixed member
    metadata and no encoding (the samples are bytes already).
    """

    def __init__(self, folder: Path, split: str, shard_size: int) -> None:
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.samples: list[int] = []
        self._writer = None

    def add(self, key: str, png: bytes, meta: dict) -> None:
        if self._writer is None:
            import webdataset as wds

            pattern = str(self.folder).replace("%", "%%") + f"/{self.split}-%06d.tar"
            self._writer = wds.ShardWriter(
                pattern, maxcount=self.shard_size, maxsize=float("inf"), verbose=0, encoder=False,
                user="", group="", mode=0o444, mtime=TAR_MTIME,
            )
        if not self.samples or self.samples[-1] >= self.shard_size:
            self.samples.append(0)
        self._writer.write({"__key__": key, "json": json.dumps(meta, sort_keys=True).encode(), "png": png})
        self.samples[-1] += 1

    def close(self) -> list[dict]:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shards = []
        for i, n in enumerate(self.samples):
            path = self.folder / f"{self.split}-{i:06d}.tar"
            shards.append({"name": path.name, "samples": n, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        return shards


def build_shards(
    src: Path,
    out: Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = MAX_PIXELS,
    test_sets: Sequence[Path] = (),
    progress: Progress | None = None,
) -> dict:
    """Write train/val shards of every usable image under ``src`` into ``out``; return the manifest.

    Unusable files are skipped and listed under ``"rejected"`` in the manifest with their reason.
    Raises :class:`DataError` for a missing source, bad parameters, when no image is usable, or when an
    image equals by pixels an image of the known test sets (``data/test`` when it exists, plus the
    folders in ``test_sets``); nothing is written then.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: no such folder")
    if shard_size < 1:
        raise DataError(f"shard size must be >= 1, got {shard_size}")
    split_of("x", val_fraction)  # validates the fraction
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise DataError(f"{out}: the shards folder must not be inside the source folder {src}")
    from pdc.data.testsets import clash_message, find_known, folder_pixel_hashes, known_test_sets

    test_folders = known_test_sets(test_sets)
    test_images = folder_pixel_hashes(test_folders)
    clashes: list[tuple[str, str]] = []
    files = [r.as_posix() for r in list_files(src)]
    order = sorted(files, key=lambda r: (_path_digest(r), r))
    by_split = {s: [r for r in order if split_of(r, val_fraction) == s] for s in SPLITS}
    rejected: list[dict] = []
    keys: dict[str, str] = {}
    counts = dict.fromkeys(SPLITS, 0)
    shards: dict[str, list[dict]] = {}
    done = 0
    with staging_dir(out) as tmp:
        for split in SPLITS:
            sink = _ShardSink(tmp, split, shard_size)
            for rel in by_split[split]:
                res, pixels = inspect_file(src / rel, rel, min_size=min_size, max_pixels=max_pixels)
                key = sample_key(rel)
                if pixels is not None and key in keys:
                    res.status, res.reason = "rejected", f"sample key {key} already used by {keys[key]}"
                if pixels is None or res.status == "rejected":
                    rejected.append({"path": rel, "reason": res.reason})
                elif test_images and (clash := find_known([(str(src / rel), pixels)], test_images)):
                    clashes += clash
                else:
                    keys[key] = rel
                    if res.format == "PNG" and res.status == "ok":
                        png = (src / rel).read_bytes()
                    else:
                        png = encode_png(pixels)
                    sink.add(key, png, {"path": rel, "width": res.width, "height": res.height})
                    counts[split] += 1
                done += 1
                if progress:
                    progress(done, len(files))
            shards[split] = sink.close()
        if clashes:
            raise DataError(clash_message(
                clashes, len(files), "test image",
                f"test images must not enter training shards (remove it from {src}); no shards written"))
        if not keys:
            raise DataError(f"{src}: no usable image among {len(files)} file(s); no shards written")
        manifest = {
            "format": FORMAT,
            "created_by": f"pdc {__version__}",
            "shard_size": shard_size,
            "val_fraction": val_fraction,
            "min_size": min_size,
            "split_rule": "val iff int.from_bytes(sha256(relpath)[:8], 'big') % 1000 < round(val_fraction*1000)",
            "source_hash": tree_hash(src),
            "counts": {**counts, "rejected": len(rejected)},
            "shards": shards,
            "rejected": rejected,
        }
        write_file(tmp / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
    return manifest


def read_manifest(folder: Path) -> dict:
    """Load and check ``folder/manifest.json``."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{folder}: no {MANIFEST} (not a shards folder; build one with `pdc data shards`)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    return _checked_manifest(manifest, str(path))


def _checked_manifest(manifest: object, where: str) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{where}: unknown manifest format (expected {FORMAT})")
    return manifest


def verify_shards(folder: Path) -> list[str]:
    """Names of shards whose SHA-256 does not match the manifest (or that are missing)."""
    manifest = read_manifest(folder)
    bad = []
    for entries in manifest["shards"].values():
        for e in entries:
            p = Path(folder) / e["name"]
            if not p.is_file() or sha256_file(p) != e["sha256"]:
                bad.append(e["name"])
    return bad


def iter_split(folder: Path, split: str = "val") -> Iterator[tuple[str, str, np.ndarray]]:
    """``(shard name, source path, uint8 H×W×3)`` of every sample of one split, in manifest order.

    The source path is the sample's original relative path (its ``.json`` metadata), so reports can
    name it.
    """
    import webdataset as wds

    from pdc.data.loader import decode_png_bytes

    manifest = read_manifest(folder)
    for entry in manifest["shards"].get(split, []):
        shard = wds.DataPipeline(wds.SimpleShardList([str(Path(folder) / entry["name"])]), wds.tarfile_to_samples())
        # by member name within a shard (the order this function has always had)
        for sample in sorted((s for s in shard if "png" in s), key=lambda s: f"{s['__key__']}.png"):
            meta = json.loads(sample["json"]) if "json" in sample else {}
            yield entry["name"], meta.get("path", sample["__key__"]), decode_png_bytes(sample["png"])


def read_split(folder: Path, split: str = "val") -> list[tuple[str, np.ndarray]]:
    """Decoded images ``(source path, uint8 H×W×3)`` of one split of a shards folder, in manifest order."""
    return [(rel, img) for _, rel, img in iter_split(folder, split)]


# ----------------------------------------------------------------------------------------------------
# Shards somewhere else: a URL instead of a local folder.

def is_url(source: str | Path) -> bool:
    """``pipe:…`` or ``<protocol>://…`` (fsspec): shards read as streams rather than from a folder."""
    s = str(source)
    return s.startswith("pipe:") or "://" in s


class ShardLocation:
    """Where a shards folder lives, and how to open one of its files as a byte stream.

    * a local folder (``data/shards``),
    * an fsspec URL of the folder (``file:///mnt/shared/shards``, ``https://host/shards``,
      ``s3://bucket/shards`` with ``s3fs`` installed): files are ``<url>/<name>``,
    * a ``pipe:`` command template with ``{name}`` (``pipe:curl -sf https://host/shards/{name}``,
      ``pipe:aws s3 cp s3://bucket/shards/{name} -``): the command's stdout is the file.
    """

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        if self.source.startswith("pipe:") and "{name}" not in self.source:
            raise DataError(f"{self.source}: a pipe: shard source needs a {{name}} placeholder for the file name")

    def url(self, name: str) -> str:
        if self.source.startswith("pipe:"):
            return self.source.replace("{name}", name)
        if is_url(self.source):
            return self.source.rstrip("/") + "/" + name
        return str(Path(self.source) / name)

    def open(self, name: str):
        """A binary stream of one file; :class:`DataError` names the URL when it cannot be read."""
        url = self.url(name)
        try:
            if url.startswith("pipe:"):
                import webdataset as wds

                return wds.gopen(url, "rb")
            if is_url(url):
                import fsspec

                return fsspec.open(url, "rb").open()
            return open(url, "rb")
        except (OSError, ValueError, ImportError) as exc:
            raise DataError(f"{url}: cannot open ({exc})") from None

    def manifest(self) -> dict:
        """The manifest, checked as :func:`read_manifest` checks a local one."""
        if not is_url(self.source):
            return read_manifest(Path(self.source))
        try:
            with self.open(MANIFEST) as f:
                manifest = json.loads(f.read())
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.url(MANIFEST)}: unreadable manifest ({exc})") from None
        return _checked_manifest(manifest, self.url(MANIFEST))

    @property
    def is_shards(self) -> bool:
        return is_url(self.source) or (Path(self.source) / MANIFEST).is_file()
