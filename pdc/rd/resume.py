"""Resuming an interrupted evaluation: every coded image is kept until the evaluation completes.

A full evaluation on a CPU (Kodak at full size, FID on 200 photos, diffusion decoders) runs for hours; a
killed run would start again from nothing. :class:`ImageCache` keeps, beside the output folder
(``.<out>.resume/``), one entry per (system, point, image): the coded file, the 8-bit reconstruction (PNG)
and the per-image record with its metrics, each entry committed by writing its record last. Rerunning the
same evaluation takes the entries that are there and codes the rest; the cache is deleted when the
evaluation has been written. Everything that decides the results — the evaluated models' hashes, test and
FID images, settings, the evaluation code itself — goes into the cache's key: a run that differs in any of
them starts a fresh cache (and says so). A system that codes with something else (the e2e-lpips control's
weights, a classic codec's options) carries its identity in its entry names instead, so adding or changing
one of those recodes that system alone.

What comes back from an entry equals what was computed: the record's metrics were taken on the full
precision reconstruction, and the uses of a reconstruction after its own point (the matched-noise
controls' base image, FID patches, the crop grid) take it in 8 bits, fresh or resumed alike.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pdc.fsutil import atomic_write_bytes

#: The code whose change invalidates cached results (relative to the pdc package).
_CODE = ("rd", "metrics", "models", "codec.py", "bitstream.py", "imageio.py")


def code_digest() -> str:
    """SHA-256 (16 hex) over the evaluation's source files, as installed."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for name in _CODE:
        p = root / name
        files = sorted(f for f in p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class ImageCache:
    """Per-image results of one evaluation, under ``folder``, valid for ``key`` (a JSON-able description)."""

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.key = {**key, "code": code_digest()}
        key_file = self.folder / "key.json"
        if self.folder.is_dir():
            try:
                same = json.loads(key_file.read_text()) == json.loads(json.dumps(self.key))
            except (OSError, ValueError):
                same = False
            if not same:
                print(f"{self.folder}: results of a different evaluation (models, images, settings or code): "
                      "starting afresh", file=sys.stderr, flush=True)
                shutil.rmtree(self.folder)
            else:
                n = sum(1 for _ in self.folder.rglob("record.json"))
                print(f"{self.folder}: resuming, {n} coded image(s) kept from an interrupted run",
                      file=sys.stderr, flush=True)
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True)
            atomic_write_bytes(key_file, json.dumps(self.key, indent=1).encode())

    def _entry(self, system: str, label: str, index: int) -> Path:
        return self.folder / system / label / f"{index:05d}"

    def get(self, system: str, label: str, index: int) -> tuple[np.ndarray, dict[str, Any], Path | None] | None:
        """``(8-bit reconstruction, record, coded file or None)`` of a kept image, else None."""
        from pdc.imageio import read_image

        entry = self._entry(system, label, index)
        if not (entry / "record.json").is_file():
            return None
        try:
            record = json.loads((entry / "record.json").read_text())
            rec = read_image(entry / "rec.png")
        except Exception:  # noqa: BLE001 - a missing or damaged entry is simply coded again
            return None
        stream = entry / "stream"
        return rec, record, stream if stream.is_file() else None

    def put(self, system: str, label: str, index: int, rec: np.ndarray, record: dict[str, Any],
            stream: Path | None) -> None:
        from pdc.imageio import write_image

        entry = self._entry(system, label, index)
        entry.mkdir(parents=True, exist_ok=True)
        if stream is not None:
            atomic_write_bytes(entry / "stream", stream.read_bytes())
        write_image(entry / "rec.png", rec)  # atomic (pdc.imageio writes a temp file and renames)
        atomic_write_bytes(entry / "record.json", json.dumps(record).encode())  # last: the entry is complete

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

