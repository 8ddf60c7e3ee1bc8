"""`pdc data ...`: exit codes (0 / 1 with --strict and a rejection / 2 one-line errors), reports, fetch."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import pytest

from pdc.cli.main import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["data", *args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _one_line_error(err: str, needle: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pdc: error:") and needle in lines[0], err


@pytest.mark.parametrize("cmd", [["validate"], ["import"], ["shards", "--src"]])
def test_missing_folder_exits_2(capsys, tmp_path, cmd):
    extra = ["--out", str(tmp_path / "o")] if cmd[0] == "shards" else []
    code, _, err = run(capsys, *cmd, str(tmp_path / "nope"), *extra)
    assert code == 2
    _one_line_error(err, "no such folder")


def test_validate_strict_exit_codes_and_report(capsys, tmp_path, make_file):
    src = tmp_path / "imgs"
    make_file(src, "rgb")
    make_file(src, "truncated")
    report = tmp_path / "r.json"
    code, out, err = run(capsys, "validate", str(src), "--min-size", "16", "--report", str(report))
    assert code == 0 and "1 ok, 0 converted, 1 rejected" in out and "truncated.png" in err
    assert json.loads(report.read_text())["counts"]["rejected"] == 1
    report.unlink()
    code, _, _ = run(capsys, "validate", str(src), "--min-size", "16", "--report", str(report), "--strict")
    assert code == 1 and report.exists()  # the report is written before the status is decided
    (src / "truncated.png").unlink()
    code, _, _ = run(capsys, "validate", str(src), "--min-size", "16", "--report", str(report), "--strict")
    assert code == 0


def test_import_and_shards(capsys, tmp_path, make_file, rgb_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rgb_folder(tmp_path / "photos", 4)
    make_file(tmp_path / "photos", "small")
    code, out, _ = run(capsys, "import", "photos", "--name", "mine", "--min-size", "32", "--strict")
    assert code == 1 and "4 ok" in out
    assert len(list((tmp_path / "data/raw/mine").glob("*.png"))) == 4
    report = json.loads((tmp_path / "data/reports/mine.json").read_text())
    assert report["counts"] == {"ok": 4, "converted": 0, "rejected": 1}
    code, out, _ = run(capsys, "shards", "--shard-size", "2", "--min-size", "32", "--strict")
    assert code == 0, out
    manifest = json.loads((tmp_path / "data/shards/manifest.json").read_text())
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == 4


def test_fetch_kodak_from_local_copy(capsys, tmp_path, kodak):
    code, out, _ = run(capsys, "fetch", "kodak", "--from", str(kodak), "--root", str(tmp_path / "raw"))
    assert code == 0, out
    assert len(list((tmp_path / "raw/kodak").glob("kodim*.png"))) == 24


def test_fetch_kodak_checksum_mismatch(capsys, tmp_path, kodak):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in sorted(kodak.glob("kodim*.png")):
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "kodim07.png").write_bytes((bad / "kodim07.png").read_bytes()[:-1])
    code, _, err = run(capsys, "fetch", "kodak", "--from", str(bad), "--root", str(tmp_path / "raw"))
    assert code == 2
    _one_line_error(err, "kodim07.png: SHA-256 mismatch")
    assert not (tmp_path / "raw" / "kodak").exists()


def test_fetch_without_network_is_one_line_error(capsys, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    for name in ("kodak", "clic2020"):
        code, _, err = run(capsys, "fetch", name, "--root", str(tmp_path / "raw"))
        assert code == 2
        _one_line_error(err, "cannot download http")
        assert "--from DIR" in err
    code, _, err = run(capsys, "fetch", "imagenet", "--root", str(tmp_path / "raw"))
    assert code == 2 and "unknown dataset" in err
    assert not (tmp_path / "raw" / "kodak").exists() and not (tmp_path / "raw" / "clic2020").exists()


def _clic_zip(path: Path, make_file, size: int) -> Path:
    """A zip laid out like CLIC's, plus macOS junk and a path-traversal member that must be ignored."""
    img = make_file(path.parent / "imgs", "rgb", name="photo1.png", size=size)
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(img, "valid/photo1.png")
        zf.writestr("__MACOSX/valid/._photo1.png", b"junk")
        zf.writestr("../evil.png", b"x")
    return path


def test_fetch_clic2020_from_local_zip(capsys, tmp_path, make_file):
    root = tmp_path / "raw"
    small = _clic_zip(tmp_path / "dl1" / "professional_valid_2020.zip", make_file, size=40)
    code, _, err = run(
        capsys, "fetch", "clic2020", "--from", str(small.parent), "--root", str(root), "--sha256", "0" * 64
    )
    assert code == 2
    _one_line_error(err, "SHA-256 mismatch")
    code, _, err = run(
        capsys,
        "fetch",
        "clic2020",
        "--from",
        str(small),
        "--root",
        str(root),
        "--sha256",
        hashlib.sha256(small.read_bytes()).hexdigest(),
    )
    assert code == 2  # hash fine, but 40 px is below the default 256 minimum: nothing importable
    _one_line_error(err, "no usable image")

    z = _clic_zip(tmp_path / "dl2" / "professional_valid_2020.zip", make_file, size=300)
    code, out, _ = run(capsys, "fetch", "clic2020", "--from", str(z.parent), "--root", str(root))
    assert code == 0 and "wrote 1 images" in out
    assert [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.png"))] == ["clic2020/valid/photo1.png"]
    assert not (tmp_path / "evil.png").exists() and not (root / "evil.png").exists()
    source = json.loads((root / "clic2020" / ".source.json").read_text())
    assert source["archive_sha256"] == hashlib.sha256(z.read_bytes()).hexdigest()
    assert source["sha256_verified"] is False


def test_no_orchestrator_imports():
    code = (
        "import sys, pdc.data, pdc.data.loader, pdc.cli.data; "
        "bad = [m for m in ('prefect', 'ray', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad; assert pdc.data.make_loader is pdc.data.loader.make_loader"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
