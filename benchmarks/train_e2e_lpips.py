"""The e2e-lpips control: D_e trained on the pipeline's ŷ with the diffusion's loss, one per rate point.

Run in a project folder after the pipeline has trained it (`make small`, `dvc repro`): for every rate
point of ``params.yaml`` this runs ``pdc train privileged -r R --loss diffusion`` from the same
diffusion-stage package the pipeline's D_e starts from (so the same codec weights and the same start),
into ``<out>/stages/R`` with its own checkpoints (resumable: run it again after an interruption), then
gathers the packages into the model set ``<out>/set`` that ``pdc evaluate --e2e-lpips`` takes::

    .venv/bin/python benchmarks/train_e2e_lpips.py                 # → models/e2e-lpips/set
    .venv/bin/pdc evaluate -m models/corrdiff --e2e-lpips models/e2e-lpips/set ...

Prints each stage's wall time; the training metrics (with ``pixel_mse_weight``, the MSE weight the
diffusion's loss puts on pixels) go to ``<out>/metrics/R.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from pdc.config import load_params
from pdc.models.package import write_model_set
from pdc.pipeline import Layout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--profile", default=None, help="Profile (default: params.yaml's `profile`).")
    ap.add_argument("--out", type=Path, default=Path("models/e2e-lpips"))
    args = ap.parse_args()

    params = load_params(args.params, args.profile)
    lay = Layout.of(params)
    pdc = [sys.executable, "-m", "pdc"]
    packages = []
    for rate in params.rate_names():
        out = args.out / "stages" / rate
        cmd = [*pdc, "train", "privileged", "-r", rate, "--loss", "diffusion", "--params", str(args.params),
               "--init", str(lay.init_package(rate, "privileged")), "--out", str(out),
               "--workdir", str(args.out / "checkpoints" / rate), "--metrics", str(args.out / "metrics" / f"{rate}.json"),
               "--no-track", *(["--profile", args.profile] if args.profile else [])]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "PDC_NO_PROGRESS": os.environ.get("PDC_NO_PROGRESS", "1")})
        print(f"e2e-lpips {rate}: {time.perf_counter() - start:.0f} s", flush=True)
        packages.append(out)
    write_model_set(args.out / "set", packages)
    print(f"model set: {args.out / 'set'}")


if __name__ == "__main__":
    main()
