"""`pdc compress` / `pdc decompress` on files: round trip, bpp, one-line errors with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pdc.imageio import read_image, write_image

REPO = Path(__file__).resolve().parents[2]


def run_pdc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdc", *args], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from pdc.config import parse_model_config
    from pdc.models.package import init_model, save_package

    from tests.models.conftest import MICRO

    d = tmp_path_factory.mktemp("model") / "micro"
    save_package(init_model(parse_model_config(MICRO), seed=0), d)
    return d


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from skimage import data

    p = tmp_path_factory.mktemp("img") / "cat.png"
    write_image(p, np.ascontiguousarray(data.chelsea()[:100, :130]))
    return p


def test_round_trip_via_cli(tmp_path, model_dir, image):
    stream, recon, out = tmp_path / "a.pdc", tmp_path / "sim.png", tmp_path / "out.png"
    r = run_pdc("compress", str(image), "-o", str(stream), "--model", str(model_dir), "--recon", str(recon))
    assert r.returncode == 0, r.stderr
    assert f"{stream.stat().st_size} bytes" in r.stdout
    r = run_pdc("decompress", str(stream), "-o", str(out), "--model", str(model_dir))
    assert r.returncode == 0, r.stderr
    decoded, simulated = read_image(out), read_image(recon)
    assert decoded.shape == (100, 130, 3)
    assert np.abs(decoded.astype(int) - simulated.astype(int)).max() <= 1


def _one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_corrupted_stream(tmp_path, model_dir, image):
    stream = tmp_path / "a.pdc"
    assert run_pdc("compress", str(image), "-o", str(stream), "--model", str(model_dir)).returncode == 0
    data = bytearray(stream.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stream.write_bytes(bytes(data))
    _one_line_error(run_pdc("decompress", str(stream), "-o", str(tmp_path / "o.png"), "--model", str(model_dir)),
                    "checksum")
    assert not (tmp_path / "o.png").exists()


def test_foreign_file_and_missing_model(tmp_path, model_dir, image):
    _one_line_error(run_pdc("decompress", str(image), "-o", str(tmp_path / "o.png"), "--model", str(model_dir)),
                    "bad magic")
    _one_line_error(run_pdc("compress", str(image), "-o", str(tmp_path / "a.pdc"), "--model", str(tmp_path / "none")),
                    "no such model package")
    _one_line_error(run_pdc("compress", str(image), "-o", str(tmp_path / "a.pdc"), "--model", str(model_dir),
                            "--mode", "jpeg"), "unknown mode")


def test_corrdiff_nobits_mode_via_cli(tmp_path, model_dir, image):
    """--mode corrdiff-nobits writes a λ-free stream that decodes to the simulated image; `pdc info` names
    the mode; --gamma, which only scales the encoder's λ, is refused for it."""
    stream, recon, out = tmp_path / "n.pdc", tmp_path / "sim.png", tmp_path / "out.png"
    r = run_pdc("compress", str(image), "-o", str(stream), "--model", str(model_dir), "--mode", "corrdiff-nobits",
                "--recon", str(recon))
    assert r.returncode == 0, r.stderr
    assert "(corrdiff-nobits, λ section 0 B)" in r.stdout
    r = run_pdc("decompress", str(stream), "-o", str(out), "--model", str(model_dir))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_image(out), read_image(recon))
    r = run_pdc("info", str(stream))
    assert r.returncode == 0, r.stderr
    assert "mode      corrdiff-nobits" in r.stdout and "section   lambda" not in r.stdout
    _one_line_error(run_pdc("compress", str(image), "-o", str(tmp_path / "g.pdc"), "--model", str(model_dir),
                            "--mode", "corrdiff_nobits", "--gamma", "0.5"), "fixed λ schedule")


def test_device_option_round_trips_on_cpu_and_refuses_a_missing_gpu(tmp_path, model_dir, image):
    import torch

    stream, out = tmp_path / "d.pdc", tmp_path / "d.png"
    r = run_pdc("compress", str(image), "-o", str(stream), "--model", str(model_dir), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = run_pdc("decompress", str(stream), "-o", str(out), "--model", str(model_dir), "--device", "auto")
    assert r.returncode == 0, r.stderr
    if not torch.cuda.is_available():
        _one_line_error(run_pdc("decompress", str(stream), "-o", str(out), "--model", str(model_dir),
                                "--device", "cuda"), "no CUDA GPU is available")
    _one_line_error(run_pdc("compress", str(image), "-o", str(stream), "--model", str(model_dir), "--device", "tpu"),
                    "unknown device 'tpu'")


@pytest.fixture(scope="module")
def model_set(tmp_path_factory) -> Path:
    """Two rate points (different seeds, so different model ids), codec mode only."""
    from pdc.config import parse_model_config
    from pdc.models.package import init_model, save_package, write_model_set

    from tests.models.conftest import MICRO

    root = tmp_path_factory.mktemp("set")
    members = []
    for seed in (0, 1):
        m = init_model(parse_model_config(MICRO), seed=seed)
        save_package(m, root / f"p{seed}")
        members.append(root / f"p{seed}")
    write_model_set(root / "set", members)
    return root / "set"


def test_decompress_finds_the_rate_point_from_the_stream(tmp_path, model_set, image):
    """The stream's model id names its rate point: decompress needs no --rate; a wrong --rate says the
    model id differs; `pdc info` prints the header."""
    stream, recon, out = tmp_path / "a.pdc", tmp_path / "sim.png", tmp_path / "out.png"
    r = run_pdc("compress", str(image), "-o", str(stream), "--model", str(model_set), "--rate", "1",
                "--mode", "codec", "--recon", str(recon))
    assert r.returncode == 0, r.stderr
    r = run_pdc("decompress", str(stream), "-o", str(out), "--model", str(model_set))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_image(out), read_image(recon))
    _one_line_error(run_pdc("decompress", str(stream), "-o", str(tmp_path / "o.png"), "--model", str(model_set),
                            "--rate", "0"), "stream was written by model")
    r = run_pdc("info", str(stream))
    assert r.returncode == 0, r.stderr
    assert "mode      codec" in r.stdout and "size      130x100" in r.stdout and "section   y" in r.stdout
    _one_line_error(run_pdc("info", str(image)), "bad magic")


def test_compress_a_folder(tmp_path, model_dir, image):
    """A folder in, a folder of streams out (one per image, each decodable); an unreadable file is named."""
    src = tmp_path / "photos"
    src.mkdir()
    write_image(src / "a.png", read_image(image))
    write_image(src / "b.png", read_image(image)[:64, :80])
    r = run_pdc("compress", str(src), "-o", str(tmp_path / "out"), "--model", str(model_dir), "--mode", "e2e")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.pdc", "b.pdc"]
    assert "2 stream(s)" in r.stdout
    r = run_pdc("decompress", str(tmp_path / "out" / "b.pdc"), "-o", str(tmp_path / "b.png"), "--model", str(model_dir))
    assert r.returncode == 0 and read_image(tmp_path / "b.png").shape == (64, 80, 3), r.stderr
    (src / "c.png").write_bytes(b"not a png")
    r = run_pdc("compress", str(src), "-o", str(tmp_path / "out2"), "--model", str(model_dir), "--mode", "e2e")
    assert r.returncode == 2 and "c.png" in r.stderr and (tmp_path / "out2" / "a.pdc").is_file(), r.stderr


def test_no_model_and_no_shipped_model_says_how_to_get_one(tmp_path, image, monkeypatch):
    """Without --model the shipped set is used; where there is none, one line says how to get a model."""
    import pdc.zoo as zoo

    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "nothing")
    from pdc.errors import ModelPackageError

    with pytest.raises(ModelPackageError, match="no --model given and no shipped model"):
        zoo.default_model()


def test_a_fresh_clone_compresses_a_photo_with_the_shipped_model(tmp_path, image):
    """No --model: compress picks the shipped set's best mode, info names the shipped model's rate point,
    decompress finds the rate point from the stream, and the photo comes back (colours included)."""
    from pdc.models.package import load_package, rate_packages
    from pdc.zoo import SHIPPED

    stream, out = tmp_path / "cat.pdc", tmp_path / "cat.png"
    r = run_pdc("compress", str(image), "-o", str(stream), "--rate", "1")
    assert r.returncode == 0, r.stderr
    r = run_pdc("info", str(stream))
    assert r.returncode == 0, r.stderr
    member = rate_packages(SHIPPED)[1]
    assert load_package(member).content_hash()[:16] in r.stdout.replace(" ", "")
    r = run_pdc("decompress", str(stream), "-o", str(out))
    assert r.returncode == 0, r.stderr
    original, decoded = read_image(image).astype(float), read_image(out).astype(float)
    assert decoded.shape == original.shape
    psnr = 10 * np.log10(255**2 / np.mean((decoded - original) ** 2))
    assert psnr > 24, psnr
    assert np.abs(decoded.mean(axis=(0, 1)) - original.mean(axis=(0, 1))).max() < 4  # no colour cast


def test_refine_option_writes_a_stream_any_decoder_reads(tmp_path, image):
    """--refine with the shipped model: a different, decodable e2e stream whose reconstruction is what
    --recon wrote; a model without a rate point gets one line saying why it cannot refine."""
    plain, refined, recon, out = (tmp_path / n for n in ("plain.pdc", "refined.pdc", "recon.png", "out.png"))
    for dest, extra in ((plain, []), (refined, ["--refine", "10", "--recon", str(recon)])):
        r = run_pdc("compress", str(image), "-o", str(dest), "--mode", "e2e", *extra)
        assert r.returncode == 0, r.stderr
    assert plain.read_bytes() != refined.read_bytes()
    r = run_pdc("decompress", str(refined), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert np.abs(read_image(out).astype(int) - read_image(recon).astype(int)).max() <= 1


def test_refine_needs_a_rate_point(tmp_path, model_dir, image):
    r = run_pdc("compress", str(image), "-o", str(tmp_path / "x.pdc"), "--model", str(model_dir), "--refine", "2")
    assert r.returncode == 2 and "λ_rd" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.pdc").exists()
