"""Stage work for the Prefect flow: every stage runs on Ray Train (:mod:`pdc.scale`), with the
profile's ``scaling`` (workers, GPUs from the cluster, failures), live-logging to MLflow.

The CLI and ``dvc repro`` use the same :func:`pdc.scale.run_stage_scaled` when ``num_workers > 1``; with
one worker they train in their own process. Either way the stage code is :func:`pdc.stages.run_stage`.
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
