"""MLflow glue: tracking store, pipeline runs, the ``corrdiff`` registry and its ``champion`` alias.

This is the only module of ``pdc`` that imports MLflow (lazily, at the edge); the codec core never does.

Store: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<cwd>/mlflow.db`` with artifacts in
``<cwd>/mlruns`` (the file store is refused by MLflow 3 unless forced; sqlite is its supported default).
Inside ``dvc exp run --temp`` or a queue, export an absolute ``MLFLOW_TRACKING_URI`` (DVC runs those in a
temporary copy of the repo).

One pipeline run = one parent MLflow run with a nested run per stage and rate point (params, per-step
loss, final metrics), the evaluation's metrics and plots as artifacts, and the model set registered as a
new version of the registered model, tagged with its validation metrics. :func:`promote` then applies
:mod:`pdc.promotion` and moves the ``champion`` alias only for a better model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pdc.config import Params, PromotionConfig
from pdc.errors import ModelPackageError
from pdc.promotion import Decision, RDPoint, decide
from pdc.pipeline import STAGE_NAMES, stage_metrics_file
from pdc.stages import read_loss_history

CHAMPION = "champion"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _mlflow():
    import logging

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)  # DB migrations on first use are not news
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def experiment_id(name: str) -> str:
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        artifacts = (Path.cwd() / "mlruns").as_uri()
    return mlflow.create_experiment(name, artifact_location=artifacts)


def _log_history(client, run_id: str, name: str, history: Iterable[float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(name, float(v), now, i + 1) for i, v in enumerate(history)]
    for i in range(0, len(batch), 900):  # the REST/DB API takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=batch[i : i + 900])


@contextmanager
def live_stage_run(params: Params, stage: str, rate: str, *, every: int = 10,
                   echo: Callable[[str], None] | None = None) -> Iterator[Callable[[str, float, int], None]]:
    """An MLflow run for one stage while it trains; yields a :data:`pdc.train.MetricLogger`.

    Every metric of the training loop (loss, lr, images/s, …) goes to the run in batches of ``every``
    steps, with MLflow's system metrics (CPU, memory, GPU) beside them; ``echo`` also gets one progress
    line per ``every`` steps (a Ray worker's stdout reaches the driver's log).
    """
    mlflow = _mlflow()
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    exp = experiment_id(params.pipeline.experiment)
    with mlflow.start_run(experiment_id=exp, run_name=f"{stage}-{rate}-live", log_system_metrics=True,
                          tags={"stage": stage, "rate_point": rate, "profile": params.profile, "live": "1"}) as run:
        buffer: list[Metric] = []
        last_step = [0]

        def log(name: str, value: float, step: int) -> None:
            buffer.append(Metric(name.split("/", 1)[-1], float(value), int(time.time() * 1000), step))
            if step != last_step[0] and step % every == 0:
                last_step[0] = step
                client.log_batch(run.info.run_id, metrics=buffer[:])
                if echo is not None:
                    loss = next((m.value for m in reversed(buffer) if m.key == "loss"), float("nan"))
                    echo(f"{stage}[{rate}] step {step}: loss {loss:.4g}")
                buffer.clear()

        yield log
        if buffer:
            client.log_batch(run.info.run_id, metrics=buffer)


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flat(key, v))
        else:
            out[key] = v
    return out


def candidate_points(summary: dict[str, Any], system: str = "corrdiff") -> list[RDPoint]:
    """RD points of one system from an evaluation summary (``eval/summary.json``)."""
    rows = summary.get("systems", {}).get(system, {}).get("points", [])
    return [RDPoint(r["bpp"], r["psnr"], r["lpips"]) for r in rows if r.get("lpips") is not None]


def log_pipeline(
    params: Params,
    model_set: Path,
    metrics_dir: Path,
    eval_dir: Path | None,
    *,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    data_root: Path | None = None,
) -> dict[str, Any]:
    """Log a finished pipeline to MLflow, register its model set, and apply the champion rule.

    The model set is logged as a pyfunc model (:mod:`pdc.mlflow_model`), the training data as a run
    input with its DVC hash (:func:`log_dataset`). A model set whose content (package hashes) equals
    a registered version's creates no new version.
    """
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    exp = experiment_id(params.pipeline.experiment)
    summary = json.loads((eval_dir / "summary.json").read_text()) if eval_dir and (eval_dir / "summary.json").is_file() else {}
    index = json.loads((model_set / "index.json").read_text())
    with mlflow.start_run(experiment_id=exp, run_name=run_name or f"pipeline-{params.profile}") as parent:
        mlflow.set_tags({"profile": params.profile, **(extra_tags or {})})
        mlflow.log_params(_flat("", {"profile": params.profile, "rate_points": params.rate_points}))
        mlflow.log_params(_flat("model", params.active.model.model_dump(mode="json")))
        for rate in params.rate_names():
            for stage in STAGE_NAMES:
                f = stage_metrics_file(metrics_dir, rate, stage)
                if not f.is_file():
                    continue
                m = json.loads(f.read_text())
                with mlflow.start_run(experiment_id=exp, run_name=f"{stage}-{rate}", nested=True) as child:
                    mlflow.log_params({"stage": stage, "rate_point": rate, "lambda_rd": params.rate_point(rate).lambda_rd,
                                       **_flat("train", getattr(params.active.train, stage).model_dump()
                                               if stage != "correction" else {})})
                    # "loss" is logged per step from the history; the rest are final values
                    mlflow.log_metrics({k: float(v) for k, v in m.items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "loss"})
                    history = read_loss_history(f)
                    if history:
                        _log_history(client, child.info.run_id, "loss", history)
        for name, system in summary.get("systems", {}).items():
            for i, r in enumerate(system.get("points", [])):
                mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in r.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}, step=i)
        if eval_dir is not None and eval_dir.is_dir():
            mlflow.log_artifacts(str(eval_dir), "evaluation")
        log_dataset(params, data_root or Path.cwd())
        same = _version_with_content(client, params.pipeline.registered_model, index)
        if same is not None:
            mlflow.set_tag("registered", f"no: content equals v{same}")
            return {"run_id": parent.info.run_id, "version": same, "promoted": False,
                    "reason": f"content equals v{same}: no new version", "bd_rate_lpips": None,
                    "psnr_delta_db": None, "champion": champion_version(params.pipeline.registered_model)}
        from pdc.mlflow_model import log_model_set

        info = log_model_set(model_set)
        version = register(params.pipeline.registered_model, info.model_uri, parent.info.run_id, summary, index)
    decision = promote(params.pipeline.registered_model, version, params.pipeline.promotion)
    return {"run_id": parent.info.run_id, "version": version, "promoted": decision.promote,
            "reason": decision.reason, "bd_rate_lpips": decision.bd_rate_lpips,
            "psnr_delta_db": decision.psnr_delta_db, "champion": champion_version(params.pipeline.registered_model)}


def _content_key(index: dict[str, Any]) -> str:
    return ",".join(p["hash"][:12] for p in index["packages"])


def _version_with_content(client, name: str, index: dict[str, Any]) -> str | None:
    """The registered version of ``name`` holding exactly these packages, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    key = _content_key(index)
    same = [v for v in versions if v.tags.get("hashes") == key]
    return str(max(int(v.version) for v in same)) if same else None


def data_version_of(root: Path, params: Params) -> dict[str, str]:
    """The training data's identity: the DVC hash in ``data.dvc`` (when it tracks ``pipeline.data``) and
    the shards' data version."""
    from pdc.errors import DataError
    from pdc.pipeline import Layout, check_dvc_data, data_version

    out: dict[str, str] = {}
    try:
        md5 = check_dvc_data(root, params.pipeline.data)
        if md5:
            out["dvc_md5"] = md5
    except DataError:
        out["dvc_md5"] = "modified (differs from data.dvc)"
    shards = Layout.of(params, root).shards_dir
    if shards.is_dir():
        out["shards_version"] = data_version(shards)
    return out


def log_dataset(params: Params, root: Path) -> dict[str, str]:
    """Log the training corpus as an MLflow run input (name, source path, digest = its DVC hash)."""
    mlflow = _mlflow()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    versions = data_version_of(root, params)
    path = (root / params.pipeline.data).resolve()
    digest = versions.get("dvc_md5") or versions.get("shards_version") or "unknown"
    dataset = MetaDataset(resolve_dataset_source(str(path)), name=params.pipeline.data, digest=digest[:36])
    mlflow.log_input(dataset, context="training")
    mlflow.set_tags({f"data.{k}": v for k, v in versions.items()})
    return versions


def register(name: str, source: str, run_id: str, summary: dict[str, Any], index: dict[str, Any]) -> str:
    """Create a new version of ``name`` from the logged pyfunc model ``source``; returns the version."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name, description="CorrDiff model sets (one package per rate point)")
    except MlflowException:
        pass  # already registered
    points = candidate_points(summary)
    tags = {
        "hashes": _content_key(index),
        "rate_points": json.dumps([p.get("rate_point") for p in index["packages"]]),
        "rd_points": json.dumps([p._asdict() for p in points]),
    }
    if points:
        tags |= {"mean_bpp": f"{sum(p.bpp for p in points) / len(points):.5f}",
                 "mean_psnr": f"{sum(p.psnr for p in points) / len(points):.4f}",
                 "mean_lpips": f"{sum(p.lpips for p in points) / len(points):.5f}"}
    mv = mlflow.register_model(source, name, tags=tags)
    return str(mv.version)


def champion_version(name: str) -> str | None:
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def _points(client, name: str, version: str) -> list[RDPoint]:
    tags = client.get_model_version(name, version).tags
    return [RDPoint(**p) for p in json.loads(tags.get("rd_points", "[]"))]


def promote(name: str, version: str, rule: PromotionConfig) -> Decision:
    """Apply the champion rule to ``version``; moves the alias when it wins. Records the decision."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    current = champion_version(name)
    champion_points = _points(client, name, current) if current is not None and current != version else None
    decision = decide(_points(client, name, version), champion_points, rule)
    client.set_model_version_tag(name, version, "promotion", decision.reason)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    return decision


def _model_set_in(folder: Path) -> Path | None:
    """The model set inside downloaded registry artifacts (a pyfunc model keeps it under artifacts/)."""
    if (folder / "index.json").is_file():
        return folder
    hits = sorted(folder.glob("**/index.json")) if folder.is_dir() else []
    return hits[0].parent if hits else None


def download_registered_model(uri: str) -> Path:
    """Local directory of a ``models:/name@alias`` or ``models:/name/version`` model set."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    cache = Path(os.environ.get("PDC_CACHE", Path.home() / ".cache" / "pdc")) / "registry"
    try:
        client = mlflow.MlflowClient()
        name, _, ref = uri.removeprefix("models:/").partition("@")
        mv = client.get_model_version_by_alias(name, ref) if ref else client.get_model_version(*name.split("/", 1))
        # keyed by run id too: version numbers repeat across tracking stores (a test DB, a new mlflow.db)
        dest = cache / mv.name / f"{mv.version}-{mv.run_id}"
        found = _model_set_in(dest)
        if found is None:
            dest.mkdir(parents=True, exist_ok=True)
            found = _model_set_in(Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dest))))
        if found is None:
            raise ModelPackageError(f"{uri}: the registered artifacts hold no pdc model set")
        return found
    except MlflowException as exc:
        raise ModelPackageError(f"{uri}: cannot resolve in the MLflow registry at {tracking_uri()} ({exc.message})") from None
