"""Stage work for the Prefect flow: on Ray Train (:mod:`pdc.scale`), with the profile's ``scaling``
(workers, GPUs from the cluster, failures), live-logging to MLflow.

Where a stage trains follows one rule, :func:`pdc.scale.runs_on_ray`, for the CLI, ``dvc repro`` and this
flow; the flow runs its rate-point chains concurrently in one process, which that rule sends to Ray Train
whatever the worker count. Either way the stage code is :func:`pdc.stages.run_stage`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pdc.scale import run_stage_scaled

__all__ = ["run_stage_on_ray"]


def run_stage_on_ray(stage: str, params_path: Path, profile: str | None, rate: str, *,
                     parent_run_id: str | None = None, **paths: Path | None) -> dict[str, Any]:
    """Run one stage of one rate point on Ray Train and wait for its metrics; its live MLflow run nests
    under the pipeline run ``parent_run_id``."""
    return run_stage_scaled(stage, params_path, profile, rate, live=True, parent_run_id=parent_run_id, **paths)
