"""Downloads of the standard test sets, checked against shipped checksums (or taken offline from a folder).

* ``kodak``: the 24 ``kodimNN.png`` (768x512) from http://r0k.us/graphics/kodak/kodak/ , each checked
  against the SHA-256 table below; stored verbatim (they already are 8-bit RGB PNG).
* ``clic2020``: the CLIC 2020 professional validation set (41 photos, the usual "CLIC" RD test set) from
  https://data.vision.ee.ethz.ch/cvl/clic/professional_valid_2020.zip . No checksum of that zip has been
  verified by this project, so none is enforced by default: the archive's SHA-256 is printed and written
  to ``<dest>/.source.json`` (pass ``expected_sha256`` / ``--sha256`` to enforce one).  Its images are then
  normalized like ``pdc data import``.

Both are test sets: they land in ``data/test/<name>``, outside the training corpus (``pipeline.data``);
a destination inside it is refused (:mod:`pdc.data.testsets`).

With ``from_dir`` nothing is downloaded: the files (Kodak PNGs; for CLIC either the zip or the extracted
images) are taken from a local folder and checked the same way.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pdc.fsutil import sha256_file, staging_dir, write_file
from pdc.data.testsets import TEST_ROOT, refuse_test_set_inside_training
from pdc.data.validate import DEFAULT_MIN_SIZE, Report, import_folder
from pdc.errors import DataError
from pdc.imageio import DATASET_SUFFIXES
from pdc.fsutil import atomic_write_bytes

KODAK_URL = "http://r0k.us/graphics/kodak/kodak/"
#: SHA-256 of the 24 Kodak PNG files as served at :data:`KODAK_URL`.
KODAK_SHA256: dict[str, str] = {
    "kodim01.png": "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    "kodim02.png": "133d50ad0f2cda48fef30e251f433fa1a98ee08c0f2d07cdab9462e876ccae5d",
    "kodim03.png": "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
    "kodim04.png": "1e079e4adc03524e53f1394a2a8e1c5995f0f70a5aec125b12fa3fdbe33cba37",
    "kodim05.png": "10349e963c5c813d327852f82c1795fa4148d69fedffc4c589bee458e3ac3d53",
    "kodim06.png": "363510303b715d4cbc384e1ce227e466b613a09e1b71ae985882bf8e7fbd9b18",
    "kodim07.png": "a74d606cef80e70a04fb983364f79fb954ad46665edf2a8b7355ce81adfa7998",
    "kodim08.png": "e3cfc1371a5643c7f8cdf1bd565c172abce6aa26e3f2fdce74cbf7c32364089d",
    "kodim09.png": "a0c72eb70826619305388ed9c0f8aa8f491b234155d62673cda270d7021149a2",
    "kodim10.png": "28fb615837dc8e66fc92c40158cac80b57f07d0ce77d22576aa85ac9e2787336",
    "kodim11.png": "7936814b58b5387fce2e4e2488b4ec830dadd95fa9520f358ddb30990b50f2b6",
    "kodim12.png": "d78c37c2f04f23761ed2367dd77e2db584ddd4c3950833fecf89f199a8126980",
    "kodim13.png": "bc34a3ce58dea09dce1704c997171602de90cb34d0c8503a988b77f473d39b08",
    "kodim14.png": "55a94550ff18f3246c4074fd32b77b0c74447c26b6ad274d564d999c0450ba6e",
    "kodim15.png": "d36d884e29bce92adea11de456be4e9a5815e79c112d47453a34a6f6edc84e63",
    "kodim16.png": "a89c7268ccd4718ba424a99fc4643c572cf692ca6eae887185ceb4e9f11d2e54",
    "kodim17.png": "37afcc89fbdcb76d9518e04b2fc011027e2f4cd14b3b2f83cefd721641a47c5b",
    "kodim18.png": "5deb2d91e347cbdcc0d8a595daa8877de0772c9cdbce4956a2f45a0f97648a47",
    "kodim19.png": "8f12d577f9ca36f384f82dec11ed8a4e12a27bd5a32ef117b9bcaf4fe4d0606f",
    "kodim20.png": "3b46c71e3b92a563820ba32936be8330c586c41f938efd94be938386aae4328a",
    "kodim21.png": "ac958597c82073f6bb65129c68f72b651db5b9efd82e11547d07350214bc268b",
    "kodim22.png": "37782d92a1cfb36ff586047d5c0a2fa75e042fd0b58f90f866b4ab91349c4e03",
    "kodim23.png": "2ed596d7de74cc43d23add4c116763f49d7b5a78b21444fe84caece531ee933b",
    "kodim24.png": "ac96f39dacff2ec303ddb8a7eb72d59f77af2b491144926335938338ee63473d",
}

CLIC2020_URL = "https://data.vision.ee.ethz.ch/cvl/clic/professional_valid_2020.zip"
CLIC2020_ZIP = "professional_valid_2020.zip"
#: Not verified by this project (no copy was available offline): None means "report, don't enforce".
CLIC2020_SHA256: str | None = None

DATASETS = ("kodak", "clic2020")

Progress = Callable[[int, int], None]


@dataclass
class FetchResult:
    """What :func:`fetch_dataset` wrote."""

    name: str
    dest: Path
    files: int
    archive_sha256: str | None = None
    report: Report | None = None


def _open_url(url: str, timeout: float) -> http.client.HTTPResponse:
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {url}: {reason} (no network? fetch it elsewhere and pass --from DIR)"
        ) from None


def _download(url: str, timeout: float) -> bytes:
    with _open_url(url, timeout) as resp:
        try:
            return resp.read()
        except (TimeoutError, OSError) as exc:
            raise DataError(f"cannot download {url}: {exc} (connection lost)") from None


def _download_to(url: str, path: Path, timeout: float) -> None:
    with _open_url(url, timeout) as resp, open(path, "wb") as f:
        try:
            shutil.copyfileobj(resp, f, 1 << 20)
        except (TimeoutError, ConnectionError) as exc:
            raise DataError(f"cannot download {url}: {exc} (connection lost)") from None


def fetch_kodak(
    dest: Path, *, from_dir: Path | None = None, timeout: float = 30.0, progress: Progress | None = None
) -> FetchResult:
    """Download (or copy from ``from_dir``) the 24 Kodak PNGs into ``dest``, verifying every SHA-256."""
    if from_dir is not None and not Path(from_dir).is_dir():
        raise DataError(f"{from_dir}: no such folder")
    names = sorted(KODAK_SHA256)
    with staging_dir(Path(dest)) as tmp:
        for i, name in enumerate(names):
            if from_dir is not None:
                src = Path(from_dir) / name
                if not src.is_file():
                    raise DataError(f"{src}: missing (a Kodak copy must hold kodim01.png ... kodim24.png)")
                data = src.read_bytes()
                where = str(src)
            else:
                where = KODAK_URL + name
                data = _download(where, timeout)
            digest = hashlib.sha256(data).hexdigest()
            if digest != KODAK_SHA256[name]:
                raise DataError(f"{where}: SHA-256 mismatch (got {digest}, expected {KODAK_SHA256[name]})")
            write_file(tmp / name, data)
            if progress:
                progress(i + 1, len(names))
    return FetchResult("kodak", Path(dest), len(names))


def _safe_extract_images(archive: Path, out: Path) -> int:
    """Extract the image members of a zip (no absolute paths, no '..', no __MACOSX); return the count."""
    n = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                p = PurePosixPath(info.filename)
                if info.is_dir() or p.is_absolute() or ".." in p.parts or "__MACOSX" in p.parts:
                    continue
                if p.name.startswith(".") or p.suffix.lower() not in DATASET_SUFFIXES:
                    continue
                target = out.joinpath(*p.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                n += 1
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: not a valid zip archive ({exc})") from None
    return n


def fetch_clic2020(
    dest: Path,
    *,
    from_dir: Path | None = None,
    expected_sha256: str | None = CLIC2020_SHA256,
    timeout: float = 60.0,
    min_size: int = DEFAULT_MIN_SIZE,
    progress: Progress | None = None,
) -> FetchResult:
    """Download (or take from ``from_dir``) CLIC 2020 professional-valid and import it into ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", suffix=".dl", dir=dest.parent) as work:
        work_dir = Path(work)
        archive: Path | None = None
        if from_dir is not None:
            from_dir = Path(from_dir)
            if from_dir.is_file() and from_dir.suffix == ".zip":
                archive = from_dir
            elif (from_dir / CLIC2020_ZIP).is_file():
                archive = from_dir / CLIC2020_ZIP
            elif not from_dir.is_dir():
                raise DataError(f"{from_dir}: no such folder or zip")
        else:
            archive = work_dir / CLIC2020_ZIP
            _download_to(CLIC2020_URL, archive, timeout)
        digest: str | None = None
        if archive is not None:
            digest = sha256_file(archive)
            if expected_sha256 and digest != expected_sha256.lower():
                raise DataError(f"{archive}: SHA-256 mismatch (got {digest}, expected {expected_sha256})")
            images = work_dir / "images"
            if _safe_extract_images(archive, images) == 0:
                raise DataError(f"{archive}: no images inside")
        else:
            images = Path(from_dir)  # type: ignore[arg-type]
        report = import_folder(images, dest, min_size=min_size, progress=progress)
    source = {
        "dataset": "clic2020",
        "url": CLIC2020_URL,
        "archive_sha256": digest,
        "sha256_verified": bool(expected_sha256 and digest),
    }
    # Hidden, so listings (shards, loader) skip it; DVC still tracks it with the images.
    atomic_write_bytes(dest / ".source.json", (json.dumps(source, indent=2) + "\n").encode())
    report.source = CLIC2020_URL if from_dir is None else str(from_dir)
    return FetchResult("clic2020", dest, report.counts["ok"] + report.counts["converted"], digest, report)


def fetch_dataset(
    name: str,
    dest_root: Path = TEST_ROOT,
    *,
    from_dir: Path | None = None,
    expected_sha256: str | None = None,
    timeout: float = 30.0,
    progress: Progress | None = None,
    training_root: Path | None = None,
) -> FetchResult:
    """Fetch ``kodak`` or ``clic2020`` into ``dest_root/<name>`` (default ``data/test/<name>``); see the
    module docs for the checks.

    These are test sets: a destination inside the training corpus (``training_root``; default: the
    project's ``pipeline.data``) is refused before anything is downloaded or written.
    """
    if name in DATASETS:
        refuse_test_set_inside_training(Path(dest_root) / name, training_root)
    if name == "kodak":
        if expected_sha256:
            raise DataError("--sha256 applies to clic2020 only (Kodak files are checked one by one)")
        return fetch_kodak(Path(dest_root) / name, from_dir=from_dir, timeout=timeout, progress=progress)
    if name == "clic2020":
        return fetch_clic2020(
            Path(dest_root) / name,
            from_dir=from_dir,
            expected_sha256=expected_sha256 or CLIC2020_SHA256,
            timeout=max(timeout, 60.0),
            progress=progress,
        )
    raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
