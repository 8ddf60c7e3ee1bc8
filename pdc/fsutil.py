"""Atomic outputs and file hashing: the one implementation every pdc writer uses.

Files are written to a temp file in the target's folder and renamed over it; folders are built in a
hidden staging folder next to the target, then renamed. A crash (or an exception) leaves either the old
output or the new one, never a half-written one. Only a hard kill can leave a hidden ``.NAME.*`` temp
behind, which every pdc listing ignores (hidden names are skipped).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through a temp file and a rename (checkpoints, converted weights)."""
    import torch

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty folder next to ``dest``; on normal exit it replaces ``dest`` (old content removed)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
    os.mkdir(tmp)  # normal permissions (umask), unlike mkdtemp's 0700
    try:
        yield tmp
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, dest: Path) -> None:
    """Move folder ``new`` to ``dest``, replacing an existing ``dest`` with two renames."""
    if dest.exists() or dest.is_symlink():
        old = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.old"
        os.rename(dest, old)
        try:
            os.rename(new, dest)
        except BaseException:
            os.rename(old, dest)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.rename(new, dest)


def write_file(path: Path, data: bytes) -> None:
    """Plain write, for files inside a staging folder (the folder rename is the atomic step)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def sha256_file(path: Path, chunk: int = 1 << 20, algo: str = "sha256") -> str:
    """Hex digest (SHA-256 unless ``algo`` says otherwise) of a file's bytes."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_hidden(rel: Path) -> bool:
    """True if any component of a relative path starts with a dot (staging folders, .DS_Store, ...)."""
    return any(part.startswith(".") for part in rel.parts)


def list_files(folder: Path) -> list[Path]:
    """All regular, non-hidden files under ``folder`` (recursive), as sorted relative POSIX paths."""
    out: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            p = Path(root) / name
            if p.is_file():
                out.append(p.relative_to(folder))
    return sorted(out, key=lambda r: r.as_posix())


def tree_hash(folder: Path) -> str:
    """SHA-256 over the sorted (relative path, file SHA-256) pairs of every non-hidden file in ``folder``."""
    h = hashlib.sha256()
    for rel in list_files(folder):
        h.update(f"{rel.as_posix()}\t{sha256_file(folder / rel)}\n".encode())
    return h.hexdigest()
