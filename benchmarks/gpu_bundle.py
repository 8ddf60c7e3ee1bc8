"""Build ``gpu_bundle/``: what a bare GPU machine (python3 + torch, no package index) needs for
benchmarks/gpu_check.sh and benchmarks/gpu_burst.sh, downloaded here, where PyPI is reachable.

    gpu_bundle/wheels/   the wheels a torch-only machine lacks (--no-deps: the list below is the whole
                         import graph beyond torch, numpy, pillow, scikit-image, scipy, pyyaml, typer,
                         tqdm, rich, safetensors, einops, torchvision, torch-geometric; versions from
                         constraints.txt; the test in tests/test_gpu_check.py runs through exactly these)
    gpu_bundle/kodak/    Kodak photos (decode timing, the burst's bpp/PSNR), from ../shared/data/kodak
    gpu_bundle/train/    BSDS500 train photos (the burst's training set), from ../shared/data/bsds500/train

    .venv/bin/python benchmarks/gpu_bundle.py                        # or: make gpu-bundle
    .venv/bin/python benchmarks/gpu_bundle.py --python-version 3.11  # wheels for another interpreter

The whole folder stays under 40 MiB (it travels with the working tree to the GPU machine); the script
fails if it would not.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LIMIT = 40 * 2**20
#: Distributions a torch-only machine lacks, found by import graph (not by metadata: compressai's
#: metadata also asks for matplotlib, diffusers' for regex and importlib_metadata, never imported here).
WHEELS = [
    "compressai", "pandas", "python-dateutil", "six",  # compressai imports pandas (its point-cloud datasets)
    "diffusers", "huggingface_hub", "httpx2", "httpcore2", "h11", "truststore",  # diffusers → huggingface_hub
    "pytorch-msssim", "lpips", "webdataset", "braceexpand",
    "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
]
# compressai's cp312 wheel is manylinux_2_34, pandas' manylinux_2_28 (pip does not expand these tags downwards)
PLATFORMS = ["manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path = REPO / "constraints.txt") -> list[str]:
    """``NAME==VERSION`` for every bundled wheel, the versions the project is tested with."""
    known = {}
    for line in constraints.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            known[_norm(name)] = version
    missing = [n for n in WHEELS if _norm(n) not in known]
    if missing:
        raise SystemExit(f"gpu_bundle: {', '.join(missing)} not pinned in {constraints}")
    return [f"{n}=={known[_norm(n)]}" for n in WHEELS]


def photos(kodak: Path, train: Path, n_kodak: int, n_train: int) -> dict[str, list[Path]]:
    """The photos that travel: the first ``n_kodak`` Kodak and ``n_train`` BSDS500 train files (sorted)."""
    if not sorted(kodak.glob("kodim*.png")):
        raise SystemExit(f"gpu_bundle: no Kodak photos in {kodak} (--kodak DIR)")
    pick = lambda folder, pattern, n: sorted(folder.glob(pattern))[:n]  # noqa: E731
    return {"kodak": pick(kodak, "kodim*.png", n_kodak), "train": pick(train, "*.jpg", n_train)}


def photo_dir(given: Path | None, kind: str) -> Path:
    """``given``, else the bundle's ``kind`` folder ("kodak" or "train"), else the shared data set; a
    missing one stops the caller with a message (never a silent stand-in photo)."""
    pattern = {"kodak": "kodim*.png", "train": "*.jpg"}[kind]
    shared = SHARED / ("kodak" if kind == "kodak" else "bsds500/train")
    candidates = [given] if given is not None else [REPO / "gpu_bundle" / kind, shared]
    for d in candidates:
        if sorted(d.glob(pattern)):
            return d
    raise SystemExit(f"no {pattern} photos in {' or '.join(map(str, candidates))}: pass the folder, or build the "
                     "bundle (make gpu-bundle) and bring gpu_bundle/ along")


def download(dest: Path, python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "--dest", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + pins(), check=True)


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "gpu_bundle")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's python3 (default 3.12)")
    ap.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    ap.add_argument("--train", type=Path, default=SHARED / "bsds500" / "train")
    ap.add_argument("--kodak-images", type=int, default=24)
    ap.add_argument("--train-images", type=int, default=56)
    args = ap.parse_args(argv)

    chosen = photos(args.kodak, args.train, args.kodak_images, args.train_images)
    shutil.rmtree(args.out, ignore_errors=True)
    download(args.out / "wheels", args.python_version)
    for folder, files in chosen.items():
        (args.out / folder).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, args.out / folder / f.name)
    (args.out / "python-version").write_text(args.python_version + "\n")
    total = size(args.out)
    wheels = size(args.out / "wheels")
    print(f"{args.out}: {len(list((args.out / 'wheels').glob('*.whl')))} wheels {wheels / 2**20:.1f} MiB, "
          f"{len(chosen['kodak'])} Kodak + {len(chosen['train'])} train photos; {total / 2**20:.1f} MiB in all")
    if total > LIMIT:
        raise SystemExit(f"gpu_bundle: {total / 2**20:.1f} MiB exceeds {LIMIT / 2**20:.0f} MiB; lower --train-images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
