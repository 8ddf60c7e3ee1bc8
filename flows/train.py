"""The staged training flow: Prefect orchestrates, Ray executes, MLflow records.

    python -m flows.train [--params params.yaml] [--profile tiny] [--root .] [--no-eval]

One Prefect task per stage and rate point (codec → diffusion → privileged → correction); the rate
points' chains run concurrently, each task running its stage on Ray Train with the profile's
``scaling`` (workers, GPUs asked of the cluster; see :mod:`pdc.scale`) and retrying on transient
failure — a retry, like a Ray Train restart, resumes from the stage's checkpoint. Then the model set is collected,
evaluated and logged to MLflow as one parent run, opened first so that every stage's live run (real
timestamps, system metrics) nests under it. Like ``dvc repro``, it registers the model set and moves
``champion`` (if it beats the current one) only when the run is meant for production: ``--promote`` or
params.yaml ``pipeline.promote`` (the scheduled retraining, :mod:`flows.schedule`, is production). The
file layout is the same as ``dvc repro``'s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import PrefectFuture

from flows.ray_tasks import run_stage_on_ray
from pdc.config import load_params
from pdc.pipeline import TRAIN_STAGES, Layout, stage as stage_spec


@task(name="shards", retries=1)
def build_shards_task(params_path: Path, profile: str | None, root: Path) -> str:
    from pdc.data.corpus import init_default_corpus
    from pdc.data.shards import build_shards

    from pdc.pipeline import check_dvc_data

    params = load_params(params_path, profile)
    lay = Layout.of(params, root)
    if not any(lay.data_dir.rglob("*.png")) and params.pipeline.data == "data/raw":
        init_default_corpus(lay.data_dir / "default")
    # Train only on DVC-versioned data: a corpus that differs from data.dvc is refused (not retried).
    dvc_md5 = check_dvc_data(root, params.pipeline.data)
    get_run_logger().info("data %s: %s", params.pipeline.data, f"DVC {dvc_md5}" if dvc_md5 else "not DVC-tracked")
    manifest = build_shards(lay.data_dir, lay.shards_dir, shard_size=params.pipeline.shard_size,
                            val_fraction=params.pipeline.val_fraction)
    get_run_logger().info("shards: %s", {k: v for k, v in manifest.items() if k != "shards"})
    return str(lay.shards_dir)


def retry_transient(task, task_run, state) -> bool:
    """Retry a stage only for failures a second try can fix (a lost worker, I/O, memory), never for a
    user error (bad config, bad data, bad package: :class:`pdc.errors.PdcError`, also when Ray wraps it)."""
    from pdc.errors import PdcError

    try:
        state.result()
    except PdcError:  # Ray re-raises a worker's exception as a subclass of its type: caught here too
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


@task(name="train-stage", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient,
      task_run_name="{stage}-{rate}")
def stage_task(stage: str, rate: str, params_path: Path, profile: str | None, root: Path, shards: str,
               parent_run_id: str | None = None) -> dict[str, Any]:
    params = load_params(params_path, profile)
    lay = Layout.of(params, root)
    metrics = run_stage_on_ray(
        stage, params_path, profile, rate, parent_run_id=parent_run_id,
        data=Path(shards), out=lay.package(rate, stage),
        init=lay.init_package(rate, stage),
        workdir=lay.checkpoints(rate, stage) if stage_spec(stage).checkpoints else None,
        metrics=lay.stage_metrics(rate, stage),
    )
    get_run_logger().info("%s[%s] done: %s", stage, rate,
                          {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return {k: v for k, v in metrics.items() if k != "history"}


@task(name="collect")
def collect_task(params_path: Path, profile: str | None, root: Path) -> str:
    from pdc.stages import collect

    params = load_params(params_path, profile)
    lay = Layout.of(params, root)
    collect(params, lay.stages_dir, lay.model_set)
    return str(lay.model_set)


@task(name="evaluate")
def evaluate_task(params_path: Path, profile: str | None, root: Path, model_set: str) -> str:
    from flows.evaluate import run_evaluation

    params = load_params(params_path, profile)
    lay = Layout.of(params, root)
    run_evaluation(Path(model_set), params, lay.eval_dir, root=root)
    return str(lay.eval_dir)


@task(name="log-register-promote")
def register_task(params_path: Path, profile: str | None, root: Path, model_set: str, eval_dir: str | None,
                  promote: bool | None = None, run_id: str | None = None) -> dict[str, Any]:
    from flows.register import describe
    from pdc.tracking import log_pipeline

    params = load_params(params_path, profile)
    lay = Layout.of(params, root)
    result = log_pipeline(params, Path(model_set), lay.metrics_dir, Path(eval_dir) if eval_dir else None,
                          promote=promote, extra_tags={"orchestrator": "prefect+ray"}, data_root=root, run_id=run_id)
    get_run_logger().info("MLflow %s", describe(result, params.pipeline.registered_model))
    return result


@flow(name="corrdiff-train", log_prints=True)
def train_flow(params_path: str = "params.yaml", profile: str | None = None, root: str = ".", evaluate: bool = True,
               promote: bool | None = None) -> dict[str, Any]:
    """Train every rate point through the four stages, evaluate, log to MLflow; with ``promote`` (default:
    params.yaml ``pipeline.promote``) also register the model set and move ``champion`` if it wins."""
    params_file, root_dir = Path(params_path).resolve(), Path(root).resolve()
    params = load_params(params_file, profile)
    from pdc.tracking import fail_pipeline_run, start_pipeline_run

    # The parent run (and with it the tracking store and experiment) is created here, once: concurrent Ray
    # workers opening a fresh sqlite store would each run its migrations ("table … already exists").
    run_id = start_pipeline_run(params, tags={"orchestrator": "prefect+ray"})
    try:
        shards = build_shards_task(params_file, profile, root_dir)
        finals: list[PrefectFuture] = []
        for rate in params.rate_names():
            prev: PrefectFuture | None = None
            for spec in TRAIN_STAGES:  # a chain: each stage starts from its predecessor's package
                prev = stage_task.submit(spec.name, rate, params_file, profile, root_dir, shards, run_id,
                                         wait_for=[prev] if prev is not None else [])
            finals.append(prev)
        stage_metrics = [f.result() for f in finals]
        model_set = collect_task(params_file, profile, root_dir)
        eval_dir = evaluate_task(params_file, profile, root_dir, model_set) if evaluate else None
        result = register_task(params_file, profile, root_dir, model_set, eval_dir, promote, run_id)
    except BaseException:
        fail_pipeline_run(params, run_id)
        raise
    return {"stages": stage_metrics, **result}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--root", default=".", help="Folder for data/, models/, checkpoints/, metrics/, eval/.")
    ap.add_argument("--no-eval", action="store_true", help="Skip evaluation (the registry then has no RD tags).")
    ap.add_argument("--promote", action=argparse.BooleanOptionalAction, default=None,
                    help="Register the model set and apply the champion rule (default: params.yaml pipeline.promote).")
    args = ap.parse_args(argv)
    result = train_flow(args.params, args.profile, args.root, not args.no_eval, args.promote)
    print(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=2))


if __name__ == "__main__":
    main()
