"""`pdc metrics` on files: values, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_pdc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdc", *args], capture_output=True, text=True, cwd=REPO)


def test_lpips_cli_reference(lpips_reference):
    r = run_pdc("metrics", "lpips", str(lpips_reference / "ex_ref.png"), str(lpips_reference / "ex_p0.png"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lpips_alex"] == pytest.approx(0.722, abs=0.002)


def test_all_on_identical_images(kodak):
    img = str(kodak / "kodim01.png")
    r = run_pdc("metrics", "all", img, img)
    assert r.returncode == 0, r.stderr
    values = dict(line.split("\t") for line in r.stdout.strip().splitlines())
    assert values["psnr"] == "inf"
    assert float(values["ms_ssim"]) == pytest.approx(1.0)
    assert float(values["lpips_alex"]) == pytest.approx(0.0, abs=1e-6)


def _assert_one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]


def test_non_image_input(tmp_path):
    notes = tmp_path / "README.md"
    notes.write_text("# not an image\n")
    r = run_pdc("metrics", "psnr", str(notes), str(notes))
    _assert_one_line_error(r, "not an image")


def test_missing_file(tmp_path):
    r = run_pdc("metrics", "psnr", str(tmp_path / "nope.png"), str(tmp_path / "nope.png"))
    _assert_one_line_error(r, "no such file")


def test_truncated_png(tmp_path):
    from pdc.imageio import write_image
    import numpy as np

    write_image(tmp_path / "a.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes()[:300])
    r = run_pdc("metrics", "psnr", str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    _assert_one_line_error(r, "truncated")


def test_different_sizes(tmp_path):
    from pdc.imageio import write_image
    import numpy as np

    write_image(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    write_image(tmp_path / "b.png", np.zeros((16, 20, 3), np.uint8))
    r = run_pdc("metrics", "psnr", str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    _assert_one_line_error(r, "differ in size")


def test_one_pixel_ms_ssim(tmp_path):
    from pdc.imageio import write_image
    import numpy as np

    write_image(tmp_path / "a.png", np.zeros((1, 1, 3), np.uint8))
    r = run_pdc("metrics", "ms-ssim", str(tmp_path / "a.png"), str(tmp_path / "a.png"))
    _assert_one_line_error(r, "161x161")
