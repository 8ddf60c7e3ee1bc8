"""Training and test data: default corpus, imports, downloads, validation, WebDataset shards, loaders.

Plain library functions (the ``pdc data`` CLI only parses and prints); no orchestration imports.

* :func:`init_default_corpus` – scikit-image's colour photos as deterministic PNG (``data/raw/default``)
* :func:`import_folder` / :func:`validate_folder` – normalize or check a folder, with a :class:`Report`
* :func:`fetch_dataset` – Kodak / CLIC 2020 test sets into ``data/test``, checksum-verified, online or ``from_dir``
* :func:`build_shards` – byte-reproducible train/val WebDataset shards + ``manifest.json``, refusing test images
* :mod:`pdc.data.testsets` – test sets kept apart: their location and pixel identity (:func:`pixel_hash`)
* :func:`pdc.data.loader.make_loader` – endless random-crop batches from shards or a folder
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pdc.fsutil import tree_hash
from pdc.data.corpus import DEFAULT_CORPUS, init_default_corpus
from pdc.data.fetch import DATASETS, FetchResult, fetch_dataset
from pdc.data.shards import build_shards, read_manifest, split_of, verify_shards
from pdc.data.testsets import TEST_ROOT, pixel_hash
from pdc.data.validate import DEFAULT_MIN_SIZE, FileResult, Report, import_folder, validate_folder, write_report

if TYPE_CHECKING:
    from pdc.data.loader import list_images, make_loader

__all__ = [
    "DATASETS",
    "DEFAULT_CORPUS",
    "DEFAULT_MIN_SIZE",
    "FetchResult",
    "FileResult",
    "Report",
    "TEST_ROOT",
    "build_shards",
    "fetch_dataset",
    "import_folder",
    "init_default_corpus",
    "list_images",
    "make_loader",
    "pixel_hash",
    "read_manifest",
    "split_of",
    "tree_hash",
    "validate_folder",
    "verify_shards",
    "write_report",
]


def __getattr__(name: str) -> Any:
    # The loader pulls in torch.utils.data and webdataset: import it only when asked for.
    if name in ("list_images", "make_loader"):
        from pdc.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'pdc.data' has no attribute {name!r}")
