"""Test images kept apart from training images: where test sets live, and pixel identity.

* **Location.** Test sets live in ``data/test/<name>`` (:data:`TEST_ROOT`), outside ``pipeline.data``
  (the training corpus, ``data/raw`` by default), so ``pdc data shards --src data/raw`` never packs
  them.  Writing a test set (``pdc data fetch``, ``pdc data import --test``) inside the training
  corpus is refused (:func:`refuse_test_set_inside_training`).
* **Identity.** Two images are the same when their decoded pixels are (:func:`pixel_hash`: shape and
  8-bit RGB bytes, as :func:`pdc.imageio.read_image` returns them), so a copy re-encoded in another
  lossless container or with other PNG settings is caught, whatever its bytes or name.
* **Both directions.** Shard building refuses an image equal to one of the known test sets
  (:func:`pdc.data.shards.build_shards`); every evaluation refuses a test image equal to a training
  image (:func:`refuse_known_images`, called by :func:`pdc.rd.evaluate_model_set`).  Both name the
  two files in one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pdc.errors import DataError

#: Where fetched and imported test sets go (one folder per set).
TEST_ROOT = Path("data/test")
#: ``pipeline.data`` when no params.yaml says otherwise (the DVC-tracked training corpus).
TRAINING_ROOT = Path("data/raw")
#: ``pipeline.shards`` when no params.yaml says otherwise.
SHARDS_ROOT = Path("data/shards")


def pixel_hash(image: np.ndarray) -> str:
    """Content hash of decoded pixels (shape + bytes): the same photo in another container matches.

    The one definition of "the same image" in pdc: shards, evaluation and the CLI all use it.
    """
    h = hashlib.sha256(repr(tuple(image.shape)).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def project_paths(project: Path = Path(".")) -> dict[str, Path]:
    """``pipeline.data``, ``pipeline.shards`` and ``pipeline.val_fraction`` of the project's params.yaml
    (defaults when there is none or it does not say), relative to ``project``.

    Read as plain YAML, so a params.yaml that another part of pdc would refuse still tells where the
    training data is.
    """
    out = {"data": project / TRAINING_ROOT, "shards": project / SHARDS_ROOT, "val_fraction": None}
    path = Path(project) / "params.yaml"
    if path.is_file():
        import yaml

        try:
            pipeline = (yaml.safe_load(path.read_text()) or {}).get("pipeline") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            pipeline = {}
        if isinstance(pipeline, dict):
            for key in ("data", "shards"):
                if isinstance(pipeline.get(key), str) and pipeline[key]:
                    out[key] = project / pipeline[key]
            if isinstance(pipeline.get("val_fraction"), int | float):
                out["val_fraction"] = float(pipeline["val_fraction"])
    return out


def _inside(path: Path, folder: Path) -> bool:
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def refuse_test_set_inside_training(dest: Path, training_root: Path | None = None) -> None:
    """Raise :class:`DataError` when a test set would be written at ``dest`` inside the training corpus
    (``training_root``; default: the project's ``pipeline.data``), where shard building would take it."""
    training = Path(training_root) if training_root is not None else project_paths()["data"]
    if _inside(dest, training):
        raise DataError(f"{dest}: a test set may not be written inside the training data {training} "
                        f"(pipeline.data: shards take every image there); use {TEST_ROOT}/NAME")


def _image_paths(folder: Path) -> list[Path]:
    from pdc.fsutil import list_files
    from pdc.imageio import DATASET_SUFFIXES

    return [folder / r for r in list_files(folder) if r.suffix.lower() in DATASET_SUFFIXES]


def folder_pixel_hashes(folders: Iterable[Path]) -> dict[str, str]:
    """pixel hash → file path of every readable image under ``folders`` (recursive; missing folders and
    unreadable files are skipped: they cannot leak into anything)."""
    from pdc.errors import ImageError
    from pdc.imageio import read_image

    out: dict[str, str] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in _image_paths(folder):
            try:
                out.setdefault(pixel_hash(read_image(p)), str(p))
            except ImageError:
                continue
    return out


def known_test_sets(extra: Sequence[Path] = (), root: Path = TEST_ROOT) -> list[Path]:
    """The known test sets: ``root`` (every set under ``data/test``) when it exists, plus ``extra``."""
    return ([Path(root)] if Path(root).is_dir() else []) + [Path(p) for p in extra]


def training_pixel_hashes(source: Path, val_fraction: float | None = None) -> dict[str, str]:
    """pixel hash → name of every image a model trains on from ``source``: a shards folder's train split
    (named ``<folder>/<shard>.tar:<source path>``), or the train split of an image folder as
    :func:`pdc.data.loader.make_loader` reads it (``val_fraction``: the split rule's; default 0.1)."""
    from pdc.data.shards import DEFAULT_VAL_FRACTION, MANIFEST, iter_split, split_of
    from pdc.imageio import read_image

    source = Path(source)
    if (source / MANIFEST).is_file():
        return {pixel_hash(img): f"{source / shard}:{rel}" for shard, rel, img in iter_split(source, "train")}
    vf = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    out: dict[str, str] = {}
    for p in _image_paths(source):
        if split_of(p.relative_to(source).as_posix(), vf) == "train":
            out.setdefault(pixel_hash(read_image(p)), str(p))
    return out


def find_known(named: Iterable[tuple[str, np.ndarray]], known: dict[str, str]) -> list[tuple[str, str]]:
    """``(name, known name)`` for every image of ``named`` whose pixels equal a known image's."""
    return [(name, known[h]) for name, img in named if (h := pixel_hash(img)) in known]


def clash_message(clashes: Sequence[tuple[str, str]], total: int, relation: str, advice: str) -> str:
    """One line: the first clash's two files, how many more, and what to do."""
    a, b = clashes[0]
    more = f" (and {len(clashes) - 1} more of {total})" if len(clashes) > 1 else ""
    return f"{a}: equal by pixels to {relation} {b}{more}: {advice}"


def refuse_known_images(named: Sequence[tuple[str, np.ndarray]], training_data: Path,
                        val_fraction: float | None = None) -> None:
    """Raise :class:`DataError` if any test image of ``named`` is (pixel for pixel) a training image of
    ``training_data`` (shards: their train split; folder: its train split)."""
    clashes = find_known(named, training_pixel_hashes(training_data, val_fraction))
    if clashes:
        raise DataError(clash_message(clashes, len(named), "training image",
                                      "evaluate on images the model never saw (a test set or the shards' val split)"))
