"""benchmarks/gpu_check.sh and gpu_burst.sh on a bare GPU machine, simulated on the CPU.

A lent GPU machine's python3 has torch and a few libraries (DESIGN §5) but not compressai, diffusers,
pydantic, …, and reaches no package index: everything else comes from the wheel bundle
(benchmarks/gpu_bundle.py). The "bare" python below sees only that machine's packages (taken from this
venv, dependencies included, nothing else: ``python -S`` and a PYTHONPATH of links), so the smoke runs
prove that the bundle's wheels are the whole import graph of both scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_bundle  # noqa: E402

#: What a lent GPU machine's python3 has (DESIGN §5), and pip.
GPU_MACHINE = ["torch", "numpy", "pillow", "scikit-image", "scipy", "pyyaml", "typer", "tqdm", "rich", "safetensors",
               "einops", "torchvision", "torch-geometric", "pip"]
#: Its numpy is 2.x (this venv's is 1.26, for compressai's metadata): the bare python gets this one.
NUMPY_2 = "numpy==2.3.5"
#: …and what it lacks even where this venv's metadata links it in (typer 0.29 requires pydantic).
ABSENT = {"compressai", "diffusers", "pytorch-msssim", "pydantic", "pydantic-core", "annotated-types",
          "typing-inspection", "lpips", "webdataset", "mlflow", "ray", "dvc", "prefect"}


def _closure(names: list[str]) -> dict[str, object]:
    seen: dict[str, object] = {}
    todo = list(names)
    while todo:
        name = gpu_bundle._norm(todo.pop())
        if name in seen or name in ABSENT:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[name] = dist
        todo += [r.name for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


def _bare_python(root: Path, numpy_2: Path) -> Path:
    """A ``python3`` that imports only the GPU machine's packages (links to this venv's copies; numpy 2
    from ``numpy_2``)."""
    site = root / "site"
    site.mkdir(parents=True)
    for dist in _closure(GPU_MACHINE).values():
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    python = root / "python3"
    path = f"{numpy_2}:{site}${{PYTHONPATH:+:$PYTHONPATH}}"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{path}" exec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    return python


def _build_bundle(*args: str) -> None:
    """benchmarks/gpu_bundle.py (downloads from the package index); skipped where no index answers."""
    if not (gpu_bundle.SHARED / "kodak").is_dir() or not (gpu_bundle.SHARED / "bsds500" / "train").is_dir():
        pytest.skip(f"no Kodak / BSDS500 photos in {gpu_bundle.SHARED}")
    try:
        gpu_bundle.main(list(args))
    except subprocess.CalledProcessError:
        probe = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest",
                                str(Path(args[args.index("--out") + 1]).parent / "probe"), "six==1.17.0"])
        if probe.returncode:
            pytest.skip("no package index reachable to download the bundle's wheels")
        raise


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """The bare python and a bundle built for it (this interpreter's version, 1 Kodak + 4 train photos)."""
    root = tmp_path_factory.mktemp("bare")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    _build_bundle("--out", str(root / "bundle"), "--python-version", version, "--kodak-images", "1",
                  "--train-images", "4")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(root / "np"),
                    NUMPY_2], check=True)
    subprocess.run([*pip, "install", "--quiet", "--no-index", "--no-deps", "--target", str(root / "numpy2"),
                    *map(str, (root / "np").glob("*.whl"))], check=True)
    python = _bare_python(root, root / "numpy2")
    for module in ("compressai", "diffusers", "pydantic", "pandas", "lpips", "webdataset"):
        r = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
        assert r.returncode != 0, f"the bare python imports {module}: the simulation proves nothing"
    r = subprocess.run([python, "-c", "import numpy, torch, skimage, yaml; print(numpy.__version__)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == NUMPY_2.split("==")[1], r.stderr[-2000:]
    return python, root / "bundle"


def _run(script: str, bare, out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    from tests.pipeline_fixtures import write_micro_params

    python, bundle = bare
    out.mkdir(parents=True, exist_ok=True)
    params = write_micro_params(out)
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "PATH", "PDC_CACHE", "TMPDIR", "LANG")}
    return subprocess.run(["bash", str(REPO / "benchmarks" / script), "--device", "cpu", "--params", str(params),
                           "--profile", "micro", *args], capture_output=True, text=True, timeout=900,
                          env={**keep, "PDC_PYTHON": str(python), "PDC_GPU_BUNDLE": str(bundle), "OUT": str(out),
                               "OMP_NUM_THREADS": "1", **env})


def test_the_bundle_for_the_gpu_machine_stays_under_40_mib(tmp_path):
    """The real thing: cp312 wheels for manylinux, all of Kodak, the training photos (as `make gpu-bundle`)."""
    out = tmp_path / "gpu_bundle"
    _build_bundle("--out", str(out))
    wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
    assert all("-cp312-" in w or "-py3-" in w or "-py2.py3-" in w for w in wheels), wheels
    pinned = {gpu_bundle._norm(name): version for name, version in (p.split("==") for p in gpu_bundle.pins())}
    assert {gpu_bundle._norm(w.split("-")[0]): w.split("-")[1] for w in wheels} == pinned  # constraints.txt's
    assert len(list((out / "kodak").glob("kodim*.png"))) == 24 and len(list((out / "train").glob("*.jpg"))) >= 50
    assert gpu_bundle.size(out) <= 40 * 2**20


def test_gpu_check_runs_on_a_bare_machine_from_the_bundle(bare, tmp_path):
    python, bundle = bare
    r = _run("gpu_check.sh", bare, tmp_path, "--train-steps", "1", "--steps", "2", "--repeats", "1", "--crop", "64")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (bundle / "site" / ".installed").is_file()  # the bundled path was taken
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["image"] == "kodim01.png" and (res["width"], res["height"]) == (64, 64)
    # the codec trains in fp32 only: one fp32 row, no bf16 row posing as one
    assert set(res["training"]["fp32"]) == {"codec", "diffusion", "privileged"}
    assert set(res["training"]["bf16"]) == set(res["training"]["bf16_speedup"]) == {"diffusion", "privileged"}
    assert res["training"]["fp32"]["codec"]["steps_per_s"] > 0 and res["training"]["fp32"]["codec"]["precision"] == "fp32"
    for precision in ("fp32", "bf16"):
        assert res["training"][precision]["diffusion"]["precision"] == precision
    assert res["diffusion_lpips"]  # what the diffusion row trained with (the LPIPS term, or why it is off)
    assert set(res["decode"]) == {"codec@0", "e2e@0", "diffusion@2", "corrdiff@2"}
    assert res["decode_matches_encoder"] is True


def test_gpu_burst_trains_scores_and_packages_on_a_bare_machine(bare, tmp_path):
    r = _run("gpu_burst.sh", bare, tmp_path, "--steps", "2", "--batch", "2", "--crop", "64")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_burst.json").read_text())
    assert list(res["rates"]) == ["r0", "r1"] and res["train_photos"] == 4 and res["decode_equals_encoder"] is True
    for name, row in res["rates"].items():
        assert row["steps"] == 2 and row["kodak"]["images"] == 1
        assert 0 < row["kodak"]["bpp"] < 24 and row["kodak"]["psnr"] > 0
        files = list((tmp_path / "packages" / name).iterdir())
        assert {f.name for f in files} == {"model.json", "weights.pt"}
        assert all(f.stat().st_size <= 16 * 2**20 for f in files)
        meta = json.loads((tmp_path / "packages" / name / "model.json").read_text())
        assert meta["rate_point"]["name"] == name and meta["parts"] == ["codec"]
        assert meta["hash"] == row["package"]["hash"]
    assert res["rates"]["r0"]["lambda_rd"] < res["rates"]["r1"]["lambda_rd"]


def test_without_the_bundle_or_kodak_the_scripts_stop_with_a_clear_message(bare, tmp_path):
    python, bundle = bare
    r = _run("gpu_check.sh", bare, tmp_path / "a", PDC_GPU_BUNDLE=str(tmp_path / "none"))
    assert r.returncode == 2 and "cannot import the GPU path" in r.stderr and "make gpu-bundle" in r.stderr
    assert "make install" not in r.stderr
    r = _run("gpu_check.sh", bare, tmp_path / "b", PDC_KODAK=str(tmp_path / "no-kodak"))
    assert r.returncode != 0 and "no kodim*.png photos" in r.stderr
    assert not (tmp_path / "b" / "gpu_check.json").exists()
