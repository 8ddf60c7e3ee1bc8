"""The ``pdc`` distribution as a wheel file: what a logged MLflow model installs (:mod:`pdc.mlflow_model`).

A model logged from a development checkout must not name ``pdc==0.1.0`` (an editable install no index
holds): it carries the wheel of the code that logged it, and its requirements point at that file. The
wheel comes from

* the source tree this module was imported from (``pyproject.toml`` beside the ``pdc`` folder): built by
  the project's own build backend (setuptools, PEP 517) in a scratch copy, offline, without touching the
  checkout; or
* an installed (non-editable) ``pdc``: its installed files and metadata, packed again as a wheel.

Only the standard library (and setuptools, for a source build) is used: no orchestration import.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from pdc.errors import PdcError

PACKAGE = "pdc"


def source_root() -> Path | None:
    """The checkout holding the imported ``pdc`` package, or None for an installed copy."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
    except tomllib.TOMLDecodeError:
        return None
    return root if name == PACKAGE else None


def build_wheel(dest: str | os.PathLike[str]) -> Path:
    """Write the ``pdc`` wheel into the folder ``dest``; returns its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = source_root()
    return _build_from_source(root, dest) if root is not None else _repack_installed(dest)


def _build_from_source(root: Path, dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    with tempfile.TemporaryDirectory(prefix="pdc-wheel-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(root / PACKAGE, src / PACKAGE, ignore=ignore)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        out = Path(tmp) / "dist"
        out.mkdir()
        # the PEP 517 hook of the project's backend, in a child process: setuptools changes directories
        # and writes build folders, none of which may touch the caller's process or checkout
        code = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
        proc = subprocess.run([sys.executable, "-c", code, str(out)], check=False, cwd=src, capture_output=True,
                              text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        wheels = sorted(out.glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PdcError(f"building the pdc wheel from {root} failed: {tail[0]}")
        target = dest / wheels[0].name
        shutil.move(str(wheels[0]), target)
    return target


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _repack_installed(dest: Path) -> Path:
    """A wheel of the installed ``pdc`` from its RECORD: its package files and its metadata."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise PdcError("pdc is neither a source checkout nor an installed distribution: no wheel to log") from None
    version = dist.version
    info = f"{PACKAGE}-{version}.dist-info"
    files = [f for f in dist.files or () if f.parts and f.parts[0] in (PACKAGE, info)
             and "__pycache__" not in f.parts and f.suffix != ".pyc"]
    if not any(f.parts[0] == PACKAGE for f in files):
        raise PdcError("the installed pdc lists no package files (an editable install?): log from its checkout")
    target = dest / f"{PACKAGE}-{version}-py3-none-any.whl"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL"}
    rows = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as whl:
        for f in sorted(files, key=str):
            if f.parts[0] == info and f.name in skip:
                continue
            data = Path(dist.locate_file(f)).read_bytes()
            whl.writestr(f.as_posix(), data)
            rows.append((f.as_posix(), _record_hash(data), str(len(data))))
        wheel_meta = b"Wheel-Version: 1.0\nGenerator: pdc.distribution\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        whl.writestr(f"{info}/WHEEL", wheel_meta)
        rows.append((f"{info}/WHEEL", _record_hash(wheel_meta), str(len(wheel_meta))))
        rows.append((f"{info}/RECORD", "", ""))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        whl.writestr(f"{info}/RECORD", buf.getvalue())
    return target
