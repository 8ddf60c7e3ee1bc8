"""Log a finished ``dvc repro`` to MLflow, register the model set, apply the champion rule.

    python -m flows.register --model-set models/corrdiff --eval eval --metrics metrics --out metrics/registry.json

The DVC pipeline's last stage; the Prefect flow calls the same :func:`pdc.tracking.log_pipeline`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from pdc.config import load_params
from pdc.fsutil import atomic_write_bytes
from pdc.tracking import log_pipeline, tracking_uri


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model-set", type=Path, default=Path("models/corrdiff"))
    ap.add_argument("--eval", type=Path, default=Path("eval"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics"))
    ap.add_argument("--out", type=Path, default=Path("metrics/registry.json"))
    args = ap.parse_args(argv)
    params = load_params(args.params)
    result = log_pipeline(params, args.model_set, args.metrics, args.eval,
                          extra_tags={"orchestrator": "dvc", "git_commit": _git_commit()})
    # Only what describes the model goes into the DVC metrics file (run ids differ on every run).
    summary = {k: result[k] for k in ("version", "promoted", "champion", "bd_rate_lpips", "psnr_delta_db")}
    atomic_write_bytes(args.out, (json.dumps(summary, indent=2) + "\n").encode())
    print(f"MLflow {tracking_uri()}: run {result['run_id']}, {params.pipeline.registered_model} "
          f"v{result['version']} ({result['reason']}); champion is v{result['champion']}")


if __name__ == "__main__":
    main()
