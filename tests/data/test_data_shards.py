"""WebDataset shards: byte-reproducible, stable split, manifest contents, readable by webdataset."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from pdc.data.shards import build_shards, read_manifest, sample_key, split_of, verify_shards
from pdc.errors import DataError

MIN = 16


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _members(folder: Path) -> dict[str, str]:
    """sample key -> split, read back from the tar files."""
    out = {}
    for tar_path in folder.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".png"):
                    out[m.name[:-4]] = tar_path.name.split("-")[0]
    return out


def test_two_runs_are_byte_identical(tmp_path, rgb_folder, make_file):
    src = tmp_path / "raw"
    rgb_folder(src / "a", 7)
    make_file(src / "b", "cmyk")  # converted on the way
    make_file(src / "b", "zero")  # rejected, listed in the manifest
    m1 = build_shards(src, tmp_path / "s1", shard_size=3, val_fraction=0.3, min_size=MIN)
    m2 = build_shards(src, tmp_path / "s2", shard_size=3, val_fraction=0.3, min_size=MIN)
    d1, d2 = _digests(tmp_path / "s1"), _digests(tmp_path / "s2")
    assert d1 == d2 and len(d1) >= 4
    assert m1 == m2
    assert m1["counts"]["train"] + m1["counts"]["val"] == 8
    assert m1["rejected"] == [{"path": "b/zero.png", "reason": "empty file (0 bytes)"}]
    for split, entries in m1["shards"].items():
        assert sum(e["samples"] for e in entries) == m1["counts"][split]
        assert all(e["samples"] <= 3 for e in entries)
        for e in entries:
            assert e["sha256"] == d1[e["name"]]
    assert verify_shards(tmp_path / "s1") == []
    with tarfile.open(tmp_path / "s1" / m1["shards"]["train"][0]["name"]) as tar:
        m = tar.getmembers()[0]
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (946_684_800, 0, 0, "", "", 0o444)


def test_rebuild_replaces_output_and_source_hash_tracks_content(tmp_path, rgb_folder):
    src = tmp_path / "raw"
    files = rgb_folder(src, 4)
    out = tmp_path / "shards"
    h1 = build_shards(src, out, shard_size=2, min_size=MIN)["source_hash"]
    (out / "stale.tar").write_bytes(b"x")
    files[0].write_bytes(files[1].read_bytes())
    h2 = build_shards(src, out, shard_size=2, min_size=MIN)["source_hash"]
    assert h1 != h2
    assert not (out / "stale.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_split_is_stable_when_files_are_added(tmp_path, rgb_folder):
    src = tmp_path / "raw"
    rgb_folder(src, 12)
    build_shards(src, tmp_path / "s1", shard_size=4, val_fraction=0.25, min_size=MIN)
    before = _members(tmp_path / "s1")
    assert set(before.values()) == {"train", "val"}
    rgb_folder(src, 12, start=100)
    rgb_folder(src / "new", 5)
    build_shards(src, tmp_path / "s2", shard_size=4, val_fraction=0.25, min_size=MIN)
    after = _members(tmp_path / "s2")
    assert len(after) == 29
    assert {k: after[k] for k in before} == before


def test_split_rule():
    paths = [f"corpus/img{i:05d}.png" for i in range(4000)]
    val = [p for p in paths if split_of(p, 0.1) == "val"]
    assert 300 < len(val) < 500  # ~10 %
    assert all(split_of(p, 0.2) == "val" for p in val)  # a larger fraction only adds files to val
    assert {split_of(p, 0.0) for p in paths} == {"train"} and {split_of(p, 1.0) for p in paths} == {"val"}
    with pytest.raises(DataError):
        split_of("a.png", 1.5)


def test_sample_keys_are_webdataset_safe(tmp_path, rgb_folder):
    assert sample_key("kodak/kodim01.png") == "kodak/kodim01"
    assert sample_key("x/v1.2.final.png") == "x/v1_2_final"
    src = tmp_path / "raw"
    (a,) = rgb_folder(src, 1)
    a.rename(src / "a.b.png")
    (src / "a_b.png").write_bytes((src / "a.b.png").read_bytes())  # same key after sanitizing
    m = build_shards(src, tmp_path / "s", min_size=MIN, val_fraction=0.0)
    assert m["counts"]["train"] == 1 and "already used by" in m["rejected"][0]["reason"]


def test_errors(tmp_path, rgb_folder):
    with pytest.raises(DataError, match="no such folder"):
        build_shards(tmp_path / "missing", tmp_path / "out")
    rgb_folder(tmp_path / "raw", 1)
    with pytest.raises(DataError, match="inside the source"):
        build_shards(tmp_path / "raw", tmp_path / "raw" / "shards", min_size=MIN)
    with pytest.raises(DataError, match="no usable image"):
        build_shards(tmp_path / "raw", tmp_path / "out", min_size=1000)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(tmp_path)
