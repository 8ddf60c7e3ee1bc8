"""Log a finished ``dvc repro`` to MLflow; register and promote only when the run is meant for production.

    python -m flows.register --model-set models/corrdiff --eval eval --metrics metrics --out metrics/registry.json

The DVC pipeline's last stage. It always logs (one parent run: params, the stages' runs, evaluation
metrics and artifacts, the training data). It registers a version and applies the champion rule only
with ``pipeline.promote: true`` (``dvc exp run -S pipeline.promote=true``) or ``--promote``; experiments
leave the registry alone. ``pdc pipeline promote`` (``make promote``) registers the workspace's model set
later, reusing this run. The Prefect flow calls the same :func:`pdc.tracking.log_pipeline`.
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


def describe(result: dict, registered_model: str) -> str:
    """One line for the log: where it went and what the registry did."""
    if not result["promote"]:
        return f"run {result['run_id']}: {result['reason']}; champion is v{result['champion']}"
    return (f"run {result['run_id']}, {registered_model} v{result['version']} ({result['reason']}); "
            f"champion is v{result['champion']}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model-set", type=Path, default=Path("models/corrdiff"))
    ap.add_argument("--eval", type=Path, default=Path("eval"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics"))
    ap.add_argument("--out", type=Path, default=Path("metrics/registry.json"))
    ap.add_argument("--promote", action=argparse.BooleanOptionalAction, default=None,
                    help="Register and apply the champion rule (default: params.yaml pipeline.promote).")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    result = log_pipeline(params, args.model_set, args.metrics, args.eval, promote=args.promote,
                          extra_tags={"orchestrator": "dvc", "git_commit": _git_commit()})
    # Only what describes the model goes into the DVC metrics file (run ids differ on every run).
    summary = {k: result[k] for k in ("promote", "version", "promoted", "comparable", "champion", "bd_rate_lpips",
                                      "psnr_delta_db")}
    atomic_write_bytes(args.out, (json.dumps(summary, indent=2) + "\n").encode())
    print(f"MLflow {tracking_uri(params)}: {describe(result, params.pipeline.registered_model)}")


if __name__ == "__main__":
    main()
