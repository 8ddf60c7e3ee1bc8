"""Test sets kept apart from training data: where fetches and test imports land, and pixel identity in
shard building (issue 20, item 2)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdc.cli.main import main
from pdc.data.shards import build_shards
from pdc.data.testsets import pixel_hash
from pdc.errors import DataError
from pdc.imageio import read_image

from tests.data.conftest import _chunk, noise, png_bytes


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["data", *args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _one_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pdc: error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _reencoded(arr: np.ndarray, path: Path, kind: str) -> Path:
    """The same pixels in other bytes: PNG without compression plus a text chunk, or lossless WebP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Comment", "a copy")
        Image.fromarray(arr).save(path, compress_level=0, pnginfo=info)
    else:
        Image.fromarray(arr).save(path, lossless=True, quality=100)
    return path


# -- fetch / import land outside pipeline.data -------------------------------------------------------

def test_fetch_lands_in_data_test_and_is_refused_inside_pipeline_data(capsys, tmp_path, kodak, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "fetch", "kodak", "--from", str(kodak))
    assert code == 0, out
    assert len(list((tmp_path / "data/test/kodak").glob("kodim*.png"))) == 24
    assert not (tmp_path / "data/raw").exists()
    code, _, err = run(capsys, "fetch", "kodak", "--from", str(kodak), "--root", "data/raw")
    assert code == 2
    _one_line(err, "data/raw/kodak", "training data")
    assert not (tmp_path / "data/raw").exists()
    # pipeline.data comes from the project's params.yaml
    (tmp_path / "params.yaml").write_text("pipeline:\n  data: corpus\n")
    code, _, err = run(capsys, "fetch", "clic2020", "--from", str(tmp_path), "--root", "corpus/sets")
    assert code == 2
    _one_line(err, "corpus/sets/clic2020", "training data corpus")
    assert not (tmp_path / "corpus").exists()


def test_import_of_a_test_set(capsys, tmp_path, rgb_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rgb_folder(tmp_path / "photos", 2)
    code, out, _ = run(capsys, "import", "photos", "--test", "--name", "mine", "--min-size", "32")
    assert code == 0, out
    assert len(list((tmp_path / "data/test/mine").glob("*.png"))) == 2
    code, _, err = run(capsys, "import", "photos", "--test", "--root", "data/raw", "--min-size", "32")
    assert code == 2
    _one_line(err, "data/raw/photos", "training data")
    assert not (tmp_path / "data/raw").exists()
    code, _, _ = run(capsys, "import", "photos", "--name", "train", "--min-size", "32")  # a training corpus
    assert code == 0 and (tmp_path / "data/raw/train").is_dir()


# -- pixel identity -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["png", "webp"])
def test_pixel_hash_sees_through_the_container(tmp_path, kind):
    arr = noise(40, 48, seed=3)
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes(arr))
    b = _reencoded(arr, tmp_path / f"b.{kind}", kind)
    assert a.read_bytes() != b.read_bytes()
    assert pixel_hash(read_image(a)) == pixel_hash(read_image(b))
    assert pixel_hash(arr) != pixel_hash(arr[:, :-1]) != pixel_hash(arr.reshape(48, 40, 3))


@pytest.mark.parametrize("kind", ["png", "webp"])
def test_shards_refuse_a_reencoded_test_image(tmp_path, rgb_folder, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    rgb_folder(tmp_path / "data/test/kodak", 2)  # the known test sets: everything under data/test
    src = tmp_path / "data/raw"
    rgb_folder(src / "photos", 3, start=10)
    build_shards(src, tmp_path / "data/shards", shard_size=2, min_size=16)
    before = (tmp_path / "data/shards/manifest.json").read_bytes()
    _reencoded(noise(64, 80, seed=1), src / "photos" / f"holiday.{kind}", kind)  # = data/test/kodak/img001.png
    with pytest.raises(DataError) as exc:
        build_shards(src, tmp_path / "data/shards", shard_size=2, min_size=16)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"data/raw/photos/holiday.{kind}" in msg and "data/test/kodak/img001.png" in msg, msg
    assert (tmp_path / "data/shards/manifest.json").read_bytes() == before  # nothing half-written
    assert not [p for p in tmp_path.joinpath("data").iterdir() if p.name.startswith(".")]


def test_shards_cli_checks_extra_test_sets(capsys, tmp_path, rgb_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (held_out,) = rgb_folder(tmp_path / "elsewhere", 1, start=5)
    rgb_folder(tmp_path / "raw", 2)
    (tmp_path / "raw" / "copy.png").write_bytes(held_out.read_bytes())
    code, _, err = run(capsys, "shards", "--src", "raw", "--out", "shards", "--min-size", "16",
                       "--test-set", "elsewhere")
    assert code == 2
    _one_line(err, "raw/copy.png", "elsewhere/img005.png", "test image")
    assert not (tmp_path / "shards").exists()
    code, out, _ = run(capsys, "shards", "--src", "raw", "--out", "shards", "--min-size", "16")
    assert code == 0, out  # without that folder nothing is known about it


def test_every_clash_is_counted(tmp_path, rgb_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tests = rgb_folder(tmp_path / "data/test/set", 3)
    src = tmp_path / "raw"
    for i, p in enumerate(tests):
        (src / f"c{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (src / f"c{i}.png").write_bytes(p.read_bytes())
    rgb_folder(src, 2, start=20)
    with pytest.raises(DataError, match=r"\(and 2 more of 5\)"):
        build_shards(src, tmp_path / "shards", min_size=16)


# -- the swap to webdataset's writer -------------------------------------------------------------------

def test_shards_are_written_by_webdataset_shardwriter(tmp_path, rgb_folder, monkeypatch):
    import webdataset as wds

    made = []
    real = wds.ShardWriter

    def spy(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(wds, "ShardWriter", spy)
    rgb_folder(tmp_path / "raw", 5)
    m = build_shards(tmp_path / "raw", tmp_path / "s", shard_size=2, val_fraction=0.0, min_size=16)
    assert len(made) == 1 and made[0]["mtime"] == 946_684_800 and made[0]["maxcount"] == 2
    assert [e["samples"] for e in m["shards"]["train"]] == [2, 2, 1] and m["shards"]["val"] == []


def test_shard_bytes_are_pinned(tmp_path):
    """The exact bytes (hence the DVC hash of data/shards) of a fixed input: the tarfile writer the
    ShardWriter replaced produced these same digests."""
    src = tmp_path / "raw" / "a"
    src.mkdir(parents=True)
    for i in range(3):  # PNGs written by hand with stored deflate blocks: no zlib version in the bytes
        rows = b"".join(b"\0" + bytes([40 * i, 7, 200]) * 24 for _ in range(20))
        ihdr = struct.pack(">IIBBBBB", 24, 20, 8, 2, 0, 0, 0)
        idat = _chunk(b"IDAT", zlib.compress(rows, 0))
        png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + idat + _chunk(b"IEND", b"")
        (src / f"v{i}.x.png").write_bytes(png)
    src = src.parent
    m = build_shards(src, tmp_path / "s", shard_size=2, val_fraction=0.0, min_size=16)
    digests = {e["name"]: e["sha256"] for e in m["shards"]["train"]}
    assert digests == {
        "train-000000.tar": PINNED[0],
        "train-000001.tar": PINNED[1],
    }, json.dumps(digests)


#: Computed with the tarfile writer before the swap (and unchanged by it).
PINNED = (
    "b4c357dfc5e43a276599c2adefc2d01f9169e5dc41e64fcdc35334db477ec52f",
    "c1afbfc3a9d8115c91f9c17ecebfe835a1090e22f003b54b516870a449852cdd",
)
