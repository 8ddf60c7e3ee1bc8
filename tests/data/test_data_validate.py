"""Validation and import: every bad-input kind is converted or rejected with its reason; outputs are atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pdc.data.validate import import_folder, inspect_file, validate_folder, write_report
from pdc.errors import DataError

MIN = 16  # small images keep the tests fast; the rule is the same as for the default 256

REJECTED = {
    "corrupt": "corrupt or truncated",
    "truncated": "truncated",
    "zero": "empty file (0 bytes)",
    "nonimage": "not an image file",
    "small": "too small: 40x8",
    "gigapixel": "exceeds the pixel limit",
    "gif": "unsupported format GIF",
}

CONVERTED = {
    "cmyk": ["CMYK -> RGB"],
    "16bit": ["16-bit -> 8-bit", "grayscale -> RGB"],
    "palette": ["palette -> RGB"],
    "alpha": ["alpha composited over white"],
    "gray": ["grayscale -> RGB"],
}


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_bad_file_is_rejected_with_reason(tmp_path, make_file, kind):
    p = make_file(tmp_path, kind)
    res, pixels = inspect_file(p, p.name, min_size=MIN)
    assert res.status == "rejected"
    assert pixels is None
    assert REJECTED[kind] in res.reason


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_convertible_file_is_converted(tmp_path, make_file, kind):
    p = make_file(tmp_path, kind)
    res, pixels = inspect_file(p, p.name, min_size=MIN)
    assert res.status == "converted", res.reason
    assert res.conversions == CONVERTED[kind]
    assert pixels.dtype == np.uint8 and pixels.shape == (48, 48, 3)


def test_conversion_values(tmp_path, make_file):
    px = {k: inspect_file(make_file(tmp_path, k), k, min_size=MIN)[1] for k in CONVERTED}
    assert (px["16bit"] == 156).all()  # 40000 / 257 = 155.6 -> 156
    assert (px["palette"] == [10, 200, 30]).all()
    assert (px["alpha"][:24] == [200, 0, 0]).all() and (px["alpha"][24:] == 255).all()  # over white
    assert (px["cmyk"][..., 0] > 240).all() and (px["cmyk"][..., 1:] < 15).all()  # C=0 M=Y=255 is red
    assert (px["gray"][..., 0] == px["gray"][..., 2]).all()


def test_gigapixel_is_refused_from_the_header(tmp_path, make_file):
    p = make_file(tmp_path, "gigapixel")
    assert p.stat().st_size < 200  # nothing to decode: the header alone must trigger the refusal
    res, _ = inspect_file(p, p.name, min_size=MIN, max_pixels=64_000_000)
    assert "10000x8000" in res.reason
    ok, _ = inspect_file(make_file(tmp_path, "rgb"), "rgb.png", min_size=MIN, max_pixels=48 * 48 - 1)
    assert ok.status == "rejected" and "pixel limit" in ok.reason


def test_clean_files_are_ok(tmp_path, make_file):
    for kind in ("rgb", "jpeg", "webp"):
        res, pixels = inspect_file(make_file(tmp_path, kind), kind, min_size=MIN)
        assert res.status == "ok" and res.conversions == [] and pixels.shape == (48, 48, 3)


def test_validate_folder_report(tmp_path, make_file):
    src = tmp_path / "src"
    for kind in ("rgb", "zero", "cmyk", "nonimage"):
        make_file(src, kind)
    (src / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    report = validate_folder(src, min_size=MIN)
    assert report.counts == {"ok": 1, "converted": 1, "rejected": 2}
    out = tmp_path / "reports" / "src.json"
    write_report(report, out)
    data = json.loads(out.read_text())
    by_path = {f["path"]: f for f in data["files"]}
    assert sorted(by_path) == ["cmyk.jpg", "notes.png", "rgb.png", "zero.png"]
    assert by_path["zero.png"]["reason"] == "empty file (0 bytes)"
    assert data["counts"]["rejected"] == 2


def test_import_writes_png_for_usable_files_only(tmp_path, make_file):
    src = tmp_path / "src"
    for kind in ("rgb", "jpeg", "alpha", "truncated"):
        make_file(src, kind)
    make_file(src / "sub", "gray")
    dest = tmp_path / "raw" / "mine"
    report = import_folder(src, dest, min_size=MIN)
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == ["alpha.png", "photo.png", "rgb.png", "sub/gray.png"]
    for p in dest.rglob("*.png"):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB"
    assert report.counts == {"ok": 2, "converted": 2, "rejected": 1}
    assert [p.name for p in dest.parent.iterdir()] == ["mine"]  # no staging leftovers


def test_import_name_clash_is_rejected(tmp_path, make_file):
    src = tmp_path / "src"
    make_file(src, "rgb", name="a.png")
    make_file(src, "jpeg", name="a.jpg")
    report = import_folder(src, tmp_path / "out", min_size=MIN)
    (bad,) = report.rejected
    assert bad.path == "a.png" and "already taken by a.jpg" in bad.reason


def test_failed_import_keeps_the_old_folder(tmp_path, make_file, rgb_folder):
    src = tmp_path / "src"
    rgb_folder(src, 3)
    dest = tmp_path / "raw" / "set"
    import_folder(src, dest, min_size=MIN)
    before = sorted(p.name for p in dest.iterdir())

    def boom(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    rgb_folder(src, 2, start=10)
    with pytest.raises(KeyboardInterrupt):
        import_folder(src, dest, min_size=MIN, progress=boom)
    assert sorted(p.name for p in dest.iterdir()) == before
    assert [p.name for p in dest.parent.iterdir()] == ["set"]


def test_import_errors(tmp_path, make_file):
    with pytest.raises(DataError, match="no such folder"):
        import_folder(tmp_path / "missing", tmp_path / "out")
    make_file(tmp_path / "bad", "zero")
    with pytest.raises(DataError, match="no usable image"):
        import_folder(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()
