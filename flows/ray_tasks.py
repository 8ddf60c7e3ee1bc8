"""Stage work as Ray tasks: a local cluster by default, ``RAY_ADDRESS`` joins an existing one.

GPUs are requested only when this machine has one (a ``num_gpus=1`` task on a GPU-less cluster waits
forever). Inputs and outputs are paths, so workers need the same filesystem as the driver (true for
the local cluster; on a multi-node cluster, point the paths at shared storage).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import ray


_INIT_LOCK = threading.Lock()  # Prefect runs concurrent tasks in threads of one process


def ensure_ray() -> None:
    with _INIT_LOCK:
        if not ray.is_initialized():
            _init()


def _init() -> None:
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False,
                 runtime_env={"env_vars": {"PDC_NO_PROGRESS": "1", **_forwarded_env()}})


def _forwarded_env() -> dict[str, str]:
    """Settings the workers must share with the driver (the MLflow store their live runs write to)."""
    return {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "PDC_CACHE") if k in os.environ}


def gpus_per_task() -> float:
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


@ray.remote(max_retries=1)
def _stage_remote(stage: str, params_path: str, profile: str | None, rate: str, kw: dict[str, Any], cwd: str) -> dict[str, Any]:
    os.chdir(cwd)
    from pdc.config import load_params
    from pdc.stages import run_stage
    from pdc.tracking import live_stage_run

    params = load_params(params_path, profile)
    # Metrics reach MLflow while the stage trains; progress lines reach the driver's log (log_to_driver).
    with live_stage_run(params, stage, rate, echo=lambda line: print(line, flush=True)) as log:
        return run_stage(stage, params, rate, log=log, **{k: Path(v) if v else None for k, v in kw.items()})


def run_stage_on_ray(stage: str, params_path: Path, profile: str | None, rate: str, **paths: Path | None) -> dict[str, Any]:
    """Run :func:`pdc.stages.run_stage` in a Ray worker and wait for its metrics."""
    ensure_ray()
    task = _stage_remote.options(num_gpus=gpus_per_task(), name=f"{stage}-{rate}")
    kw = {k: str(v) if v is not None else None for k, v in paths.items()}
    return ray.get(task.remote(stage, str(params_path), profile, rate, kw, os.getcwd()))
