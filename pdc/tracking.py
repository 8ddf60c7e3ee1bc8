"""MLflow glue: tracking store, pipeline runs, the ``corrdiff`` registry and its ``champion`` alias.

This is the only module of ``pdc`` that imports MLflow (lazily, at the edge); the codec core never does.

Store (:func:`tracking_uri`), first that applies: ``$MLFLOW_TRACKING_URI``; ``$PDC_TRACKING_URI``;
params.yaml ``pipeline.tracking_uri``; the project's ``mlflow.db``. A path (not a URI) means an sqlite
file, relative to the project root — the folder holding params.yaml or dvc.yaml, found by walking up
from the working directory (out of a ``dvc exp run --temp`` copy, too) — so a ``models:/`` URI
resolves from any subfolder and never creates a database where it is used. Artifacts of an sqlite
store live in ``mlruns/`` beside its file (the file store is refused by MLflow 3 unless forced).

Experiments vs production: a pipeline run (:func:`log_pipeline`) always logs one parent run — params,
evaluation metrics named ``<system>/<rate point>/<metric>``, artifacts, the training data — with the
stages' runs nested under it; only with ``promote`` (params.yaml ``pipeline.promote``, or
``pdc pipeline promote``) does it register the model set as a version and apply :mod:`pdc.promotion`.

Training stages log live (:func:`live_stage_run`: every metric with its real timestamp) when a store is
configured (:func:`configured_tracking_uri`), under the pipeline's run when one is known
(``$PDC_MLFLOW_PARENT_RUN``, what the Prefect flow passes) or adopted by it afterwards (DVC: the stage
run carries its package hash, and the register stage nests the runs that made its model set).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pdc.config import Params, PromotionConfig
from pdc.errors import ModelPackageError, PdcError
from pdc.promotion import Decision, EvalSet, RDPoint, decide
from pdc.pipeline import STAGE_NAMES, stage_metrics_file
from pdc.stages import read_loss_history

CHAMPION = "champion"
#: A tracking store (URI or sqlite path) used when ``MLFLOW_TRACKING_URI`` is not set.
TRACKING_ENV = "PDC_TRACKING_URI"
#: The pipeline's parent run: training stages started with it set nest their live runs under it.
PARENT_RUN_ENV = "PDC_MLFLOW_PARENT_RUN"
#: Files that mark the project root (the store's default home).
PROJECT_FILES = ("params.yaml", "dvc.yaml")


class TrackingError(PdcError):
    """No usable MLflow tracking store, or a pipeline state that cannot be registered."""


# -- where the store is --------------------------------------------------------------------------------
def _outside_dvc_temp(root: Path) -> Path:
    """``dvc exp run --temp`` and queued experiments run in ``<repo>/.dvc/tmp/exps/<tmp>``: the repo's store."""
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            outer = Path(*parts[:i])
            if any((outer / f).is_file() for f in PROJECT_FILES):
                return outer
    return root


def project_root(start: Path | str | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the cwd) holding params.yaml or dvc.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / f).is_file() for f in PROJECT_FILES):
            return _outside_dvc_temp(folder)
    return None


def _as_uri(value: str, base: Path) -> str:
    """A tracking URI from a setting: URIs pass (a relative ``sqlite:///x.db`` is made absolute against
    ``base``); a bare path is an sqlite file relative to ``base``."""
    if value.startswith("sqlite:///"):
        path = value.removeprefix("sqlite:///")
        return value if path.startswith("/") or path.startswith(":memory:") else f"sqlite:///{(base / path).resolve()}"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", value):  # http(s)://, databricks, file:, postgresql://, …
        return value
    return f"sqlite:///{(base / value).resolve()}"


def _params_setting(root: Path) -> str | None:
    import yaml

    try:
        doc = yaml.safe_load((root / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    pipeline = doc.get("pipeline") if isinstance(doc, dict) else None
    value = pipeline.get("tracking_uri") if isinstance(pipeline, dict) else None
    return str(value) if value else None


def configured_tracking_uri(params: Params | None = None, start: Path | str | None = None) -> str | None:
    """The store named by ``$MLFLOW_TRACKING_URI``, ``$PDC_TRACKING_URI`` or ``pipeline.tracking_uri``
    (``params``' when given, else the project's params.yaml); None when none is set."""
    if value := os.environ.get("MLFLOW_TRACKING_URI"):
        return value
    if value := os.environ.get(TRACKING_ENV):
        return _as_uri(value, Path.cwd())
    root = project_root(start)
    setting = params.pipeline.tracking_uri if params is not None else (_params_setting(root) if root else None)
    return _as_uri(setting, root or Path.cwd()) if setting else None


def tracking_uri(params: Params | None = None, start: Path | str | None = None) -> str:
    """The tracking store: :func:`configured_tracking_uri`, else the project's ``mlflow.db`` (absolute).

    Raises :class:`TrackingError` outside a project with no store configured.
    """
    uri = configured_tracking_uri(params, start)
    if uri:
        return uri
    root = project_root(start)
    if root is None:
        raise TrackingError(f"no MLflow tracking store: set MLFLOW_TRACKING_URI (or {TRACKING_ENV}), or run inside "
                            f"the project (a folder holding {' or '.join(PROJECT_FILES)}, or one below it)")
    return f"sqlite:///{root / 'mlflow.db'}"


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return None if path.startswith(":memory:") else Path(path if path.startswith("/") else Path.cwd() / path)


def _mlflow(params: Params | None = None, *, existing: bool = False, uri: str | None = None):
    """MLflow, pointed at the store (``uri``, else :func:`tracking_uri`). ``existing``: refuse an sqlite
    store that does not exist yet (a read must not create an empty database)."""
    import logging

    uri = uri or tracking_uri(params)
    if existing and (db := _sqlite_file(uri)) is not None and not db.is_file():
        raise TrackingError(f"no MLflow tracking store at {db} (nothing was logged there yet; set MLFLOW_TRACKING_URI "
                            f"or {TRACKING_ENV} to the store that holds the registry)")
    try:
        import mlflow
    except ImportError:
        raise TrackingError("MLflow is not installed: install the pipeline extra (pip install 'pdc[pipeline]')") from None

    logging.getLogger("alembic").setLevel(logging.WARNING)  # DB migrations on first use are not news
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop lines of every stage run
    mlflow.set_tracking_uri(uri)
    return mlflow


def experiment_id(name: str, params: Params | None = None) -> str:
    mlflow = _mlflow(params)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = _sqlite_file(mlflow.get_tracking_uri())
    artifacts = (db.resolve().parent / "mlruns").as_uri() if db is not None else None  # beside the database
    return mlflow.create_experiment(name, artifact_location=artifacts)


def live_tracking(params: Params, parent_run_id: str | None = None) -> dict[str, str | None]:
    """Where a stage's live run goes, as keyword arguments of :func:`live_stage_run` that travel to a Ray
    worker: the store (:func:`tracking_uri`, absolute) and the parent run (``$PDC_MLFLOW_PARENT_RUN``)."""
    return {"uri": tracking_uri(params), "parent_run_id": parent_run_id or os.environ.get(PARENT_RUN_ENV) or None}


def tracking_for_training(params: Params) -> dict[str, str | None] | None:
    """Where a training stage logs live: ``{"uri", "parent_run_id"}`` when a store is configured and
    MLflow is installed; None otherwise (the stage then trains without MLflow)."""
    import importlib.util

    uri = configured_tracking_uri(params)
    if uri is None or importlib.util.find_spec("mlflow") is None:
        return None
    return {"uri": uri, "parent_run_id": os.environ.get(PARENT_RUN_ENV) or None}


# -- names and values ----------------------------------------------------------------------------------
def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _metric_name(*parts: str) -> str:
    """An MLflow metric name (letters, digits, ``_ - . / : space``) from its parts, joined by ``/``."""
    return "/".join(re.sub(r"[^\w\-. :]", "_", str(p)) for p in parts)


#: Entries of an evaluation point that identify it rather than measure it.
_POINT_IDS = frozenset({"label", "gamma", "steps", "quality", "rate_index", "fid_note", "per_image",
                        "mean_lambda_per_step"})


def evaluation_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """An evaluation (``summary.json``) as MLflow metrics: ``<system>/<point>/<metric>`` for every system,
    rate point (``r0`` …, or ``q<quality>`` for the classic codecs) and measured value — e.g.
    ``corrdiff/r0/lpips``, ``jpeg/q50/psnr``, ``corrdiff/r1/fid`` — and ``bd_rate/<comparison>``."""
    out: dict[str, float] = {}
    for system, entry in (summary.get("systems") or {}).items():
        for point in entry.get("points", []):
            for key, value in point.items():
                if key not in _POINT_IDS and (v := _number(value)) is not None:
                    out[_metric_name(system, point.get("label", "?"), key)] = v
    for name, res in ((summary.get("bd_rate") or {}).get("comparisons") or {}).items():
        if (v := _number(res.get("value"))) is not None:
            out[_metric_name("bd_rate", name)] = v
    return out


def log_evaluation(mlflow, summary: dict[str, Any]) -> dict[str, float]:
    """Log an evaluation's metrics (:func:`evaluation_metrics`) and its image set to the active run."""
    metrics = evaluation_metrics(summary)
    items = list(metrics.items())
    for i in range(0, len(items), 900):  # the API takes at most 1000 metrics per batch
        mlflow.log_metrics(dict(items[i : i + 900]))
    if (es := EvalSet.from_summary(summary)) is not None:
        mlflow.set_tags(es.as_tags())
    return metrics


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flat(key, v))
        else:
            out[key] = v
    return out


def _stage_params(params: Params, stage: str, rate: str) -> dict[str, Any]:
    train = getattr(params.active.train, stage).model_dump() if stage != "correction" else {}
    return {"stage": stage, "rate_point": rate, "lambda_rd": params.rate_point(rate).lambda_rd, **_flat("train", train)}


def _final_metrics(m: dict[str, Any]) -> dict[str, float]:
    """A stage metrics file's final values ("loss" is the per-step series, logged on its own)."""
    return {k: v for k, value in m.items() if k != "loss" and (v := _number(value)) is not None}


# -- live training runs ----------------------------------------------------------------------------------
@contextmanager
def live_stage_run(params: Params, stage: str, rate: str, *, every: int = 10,
                   echo: Callable[[str], None] | None = None, uri: str | None = None,
                   parent_run_id: str | None = None,
                   metrics: Path | str | None = None) -> Iterator[Callable[[str, float, int], None]]:
    """An MLflow run for one stage while it trains; yields a :data:`pdc.train.MetricLogger`.

    Every metric of the training loop (loss, lr, images/s, …) goes to the run with the time it was
    measured, in batches of ``every`` steps, with MLflow's system metrics (CPU, memory, GPU) beside them;
    ``echo`` also gets one progress line per ``every`` steps (a Ray worker's stdout reaches the driver's
    log). ``uri``: the store (default :func:`tracking_uri`); ``parent_run_id`` (default
    ``$PDC_MLFLOW_PARENT_RUN``): the pipeline run to nest under. ``metrics``: the stage's metrics file;
    once written, its final values and the package hash (``model_hash`` tag, by which the pipeline's
    run adopts this one, :func:`log_pipeline`) are added when the stage ends.
    """
    mlflow = _mlflow(params, uri=uri)
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    parent_run_id = parent_run_id if parent_run_id is not None else os.environ.get(PARENT_RUN_ENV) or None
    exp = client.get_run(parent_run_id).info.experiment_id if parent_run_id else experiment_id(params.pipeline.experiment, params)
    with mlflow.start_run(experiment_id=exp, run_name=f"{stage}-{rate}", log_system_metrics=True,
                          parent_run_id=parent_run_id,
                          tags={"stage": stage, "rate_point": rate, "profile": params.profile, "live": "1"}) as run:
        mlflow.log_params(_stage_params(params, stage, rate))
        buffer: list[Metric] = []
        last_step = [0]
        seen: set[str] = set()

        def log(name: str, value: float, step: int) -> None:
            key = name.split("/", 1)[-1]
            seen.add(key)
            buffer.append(Metric(key, float(value), int(time.time() * 1000), step))
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
        if metrics is not None and Path(metrics).is_file():
            m = json.loads(Path(metrics).read_text())
            finals = {k: v for k, v in _final_metrics(m).items() if k not in seen}  # the series end there already
            if finals:
                mlflow.log_metrics(finals, step=int(m.get("steps") or 0))
            mlflow.set_tags({k: str(m[k]) for k in ("model_hash", "data_version", "code_version") if m.get(k)})


# -- the pipeline run ------------------------------------------------------------------------------------
def candidate_points(summary: dict[str, Any], system: str = "corrdiff") -> list[RDPoint]:
    """RD points of one system from an evaluation summary (``eval/summary.json``)."""
    rows = summary.get("systems", {}).get(system, {}).get("points", [])
    return [RDPoint(r["bpp"], r["psnr"], r["lpips"]) for r in rows if r.get("lpips") is not None]


def _content_key(index: dict[str, Any]) -> str:
    return ",".join(p["hash"][:12] for p in index["packages"])


def _check_evaluated(summary: dict[str, Any], index: dict[str, Any], eval_dir: Path | None, model_set: Path) -> None:
    """Refuse to register a model set with an evaluation of other packages (a stale ``eval/``)."""
    evaluated = [r.get("hash") for r in summary.get("rate_points", [])]
    packaged = [p["hash"] for p in index["packages"]]
    if evaluated != packaged:
        raise TrackingError(f"{eval_dir} evaluated other packages than {model_set} holds "
                            f"({','.join(h[:12] for h in evaluated if h) or 'none'} vs {_content_key(index)}): "
                            "run the pipeline (`dvc repro`) so that the evaluation is of this model set")


def start_pipeline_run(params: Params, *, run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Open the pipeline's parent run before its stages train (the Prefect flow) and return its id: stage
    runs started with it (``parent_run_id``, ``$PDC_MLFLOW_PARENT_RUN``) nest under it, and
    :func:`log_pipeline` with ``run_id`` fills and closes it."""
    mlflow = _mlflow(params)
    run = mlflow.MlflowClient().create_run(experiment_id(params.pipeline.experiment, params),
                                           run_name=run_name or f"pipeline-{params.profile}",
                                           tags={"profile": params.profile, **(tags or {})})
    return run.info.run_id


def fail_pipeline_run(params: Params, run_id: str) -> None:
    """Mark a parent run opened by :func:`start_pipeline_run` as failed (its pipeline did not finish)."""
    _mlflow(params).MlflowClient().set_terminated(run_id, status="FAILED")


def _live_run(client, exp: str, model_hash: str | None, stage: str, rate: str):
    """The newest live training run that produced the package ``model_hash``, if any."""
    if not model_hash:
        return None
    runs = client.search_runs([exp], filter_string=f"tags.model_hash = '{model_hash}' and tags.stage = '{stage}' "
                                                   f"and tags.rate_point = '{rate}' and tags.live = '1'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _stage_runs(mlflow, client, exp: str, parent_id: str, params: Params, metrics_dir: Path) -> None:
    """Nest the runs of the stages that made this model set under the pipeline run.

    A stage that logged live into this store is adopted (its run gets this parent) — or, when an earlier
    pipeline run adopted it already (DVC kept the stage from an earlier experiment), referenced from a
    child with its final values. A stage that was not tracked gets a child with its final values and its
    loss history from the CSV (steps are real, timestamps are the time of logging).
    """
    for rate in params.rate_names():
        for stage in STAGE_NAMES:
            f = stage_metrics_file(metrics_dir, rate, stage)
            if not f.is_file():
                continue
            m = json.loads(f.read_text())
            live = _live_run(client, exp, m.get("model_hash"), stage, rate)
            owner = live.data.tags.get("mlflow.parentRunId") if live is not None else None
            if live is not None and owner in (None, parent_id):
                if owner is None:
                    client.set_tag(live.info.run_id, "mlflow.parentRunId", parent_id)
                continue
            tags = {"stage": stage, "rate_point": rate, "live": "0"}
            if live is not None:
                tags["trained_in_run"] = live.info.run_id
            with mlflow.start_run(experiment_id=exp, run_name=f"{stage}-{rate}", nested=True, tags=tags):
                mlflow.log_params(_stage_params(params, stage, rate))
                mlflow.log_metrics(_final_metrics(m))
                history = read_loss_history(f) if live is None else []
                if history:
                    from mlflow.entities import Metric

                    now = int(time.time() * 1000)
                    batch = [Metric("loss", float(v), now, i + 1) for i, v in enumerate(history)]
                    run_id = mlflow.active_run().info.run_id
                    for i in range(0, len(batch), 900):
                        client.log_batch(run_id, metrics=batch[i : i + 900])


def _logged_run(client, exp: str, content: str, eval_set: EvalSet | None) -> str | None:
    """The newest pipeline run that logged this model set with this evaluation (to register from it)."""
    query = f"tags.`pdc.content` = '{content}'"
    if eval_set is not None:
        query += f" and tags.`eval.digest` = '{eval_set.digest}' and tags.`eval.crop` = '{eval_set.crop}'"
    runs = client.search_runs([exp], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def log_pipeline(
    params: Params,
    model_set: Path,
    metrics_dir: Path,
    eval_dir: Path | None,
    *,
    promote: bool | None = None,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    data_root: Path | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Log a finished pipeline to MLflow; with ``promote``, register its model set and apply the champion rule.

    ``promote`` (default: params.yaml ``pipeline.promote``) False is an experiment: one parent run with the
    stages' runs nested, params, the evaluation's metrics (:func:`evaluation_metrics`) and artifacts, the
    training data as a run input (:func:`log_dataset`) — and no registry change. True also logs the
    model set as a pyfunc model (:mod:`pdc.mlflow_model`) and registers it, unless a registered version
    holds the same packages (then that version is judged again), and moves ``champion`` if it wins
    (:func:`promote_version`). A run that logged the same model set and evaluation already (an experiment
    promoted later: ``pdc pipeline promote``) is reused instead of logging a second one. ``run_id``: a
    parent run opened by :func:`start_pipeline_run`.
    """
    promote = params.pipeline.promote if promote is None else promote
    mlflow = _mlflow(params)
    client = mlflow.MlflowClient()
    exp = experiment_id(params.pipeline.experiment, params)
    summary = json.loads((eval_dir / "summary.json").read_text()) if eval_dir and (eval_dir / "summary.json").is_file() else {}
    index = json.loads((Path(model_set) / "index.json").read_text())
    content = _content_key(index)
    eval_set = EvalSet.from_summary(summary)
    if promote and summary:
        _check_evaluated(summary, index, eval_dir, Path(model_set))
    name = params.pipeline.registered_model
    target = run_id or (_logged_run(client, exp, content, eval_set) if promote else None)
    start = mlflow.start_run(run_id=target) if target else \
        mlflow.start_run(experiment_id=exp, run_name=run_name or f"pipeline-{params.profile}")
    with start as parent:
        if "pdc.content" not in client.get_run(parent.info.run_id).data.tags:
            mlflow.set_tags({"profile": params.profile, **(extra_tags or {})})
            mlflow.log_params(_flat("", {"profile": params.profile, "rate_points": params.rate_points}))
            mlflow.log_params(_flat("model", params.active.model.model_dump(mode="json")))
            _stage_runs(mlflow, client, exp, parent.info.run_id, params, metrics_dir)
            log_evaluation(mlflow, summary)
            if eval_dir is not None and eval_dir.is_dir():
                mlflow.log_artifacts(str(eval_dir), "evaluation")
            log_dataset(params, data_root or Path.cwd())
            mlflow.set_tag("pdc.content", content)
        result: dict[str, Any] = {"run_id": parent.info.run_id, "promote": promote, "version": None,
                                  "new_version": False, "promoted": False, "comparable": None,
                                  "bd_rate_lpips": None, "psnr_delta_db": None}
        if not promote:
            reason = "an experiment (pipeline.promote is false): logged, not registered"
            mlflow.set_tags({"registered": "no", "promotion": reason})
            return result | {"reason": reason, "champion": champion_version(name, params)}
        version = _version_with_content(client, name, index)
        if version is None:
            from pdc.mlflow_model import log_model_set

            info = log_model_set(model_set)
            version = register(name, info.model_uri, parent.info.run_id, summary, index, params)
            result["new_version"] = True
        elif summary:
            _record_evaluation(client, name, version, summary)  # the same model, judged on this evaluation
        decision = promote_version(name, version, params.pipeline.promotion, params)
        mlflow.set_tags({"registered": f"v{version}" + ("" if result["new_version"] else " (same content)"),
                         "promotion": decision.reason, "promoted": str(decision.promote).lower()})
    return result | {"version": version, "promoted": decision.promote, "reason": decision.reason,
                     "comparable": decision.comparable, "bd_rate_lpips": decision.bd_rate_lpips,
                     "psnr_delta_db": decision.psnr_delta_db, "champion": champion_version(name, params)}


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
    mlflow = _mlflow(params)
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    versions = data_version_of(root, params)
    path = (root / params.pipeline.data).resolve()
    digest = versions.get("dvc_md5") or versions.get("shards_version") or "unknown"
    dataset = MetaDataset(resolve_dataset_source(str(path)), name=params.pipeline.data, digest=digest[:36])
    mlflow.log_input(dataset, context="training")
    mlflow.set_tags({f"data.{k}": v for k, v in versions.items()})
    return versions


# -- the registry --------------------------------------------------------------------------------------
def _evaluation_tags(summary: dict[str, Any]) -> dict[str, str]:
    """What a version records of its evaluation: the CorrDiff RD points, their means, and the image set
    (:class:`pdc.promotion.EvalSet`: the rule compares two versions only on the same one)."""
    points = candidate_points(summary)
    tags = {"rd_points": json.dumps([p._asdict() for p in points])}
    if points:
        tags |= {"mean_bpp": f"{sum(p.bpp for p in points) / len(points):.5f}",
                 "mean_psnr": f"{sum(p.psnr for p in points) / len(points):.4f}",
                 "mean_lpips": f"{sum(p.lpips for p in points) / len(points):.5f}"}
    if (es := EvalSet.from_summary(summary)) is not None:
        tags |= es.as_tags()
    return tags


def _record_evaluation(client, name: str, version: str, summary: dict[str, Any]) -> None:
    for k, v in _evaluation_tags(summary).items():
        client.set_model_version_tag(name, version, k, v)


def resolve_version(uri: str) -> tuple[str, str]:
    """``(name, version)`` of a ``models:/name@alias`` or ``models:/name/version`` URI."""
    mlflow = _mlflow(existing=True)
    name, _, ref = uri.removeprefix("models:/").partition("@")
    if ref:
        return name, str(mlflow.MlflowClient().get_model_version_by_alias(name, ref).version)
    name, _, version = name.partition("/")
    return name, version


def record_evaluation(uri: str, summary: dict[str, Any]) -> tuple[str, str]:
    """Make ``summary`` the evaluation a registered version is judged by (its RD points and image set), e.g.
    the champion re-evaluated on the images a candidate was judged on; returns ``(name, version)``."""
    name, version = resolve_version(uri)
    _record_evaluation(_mlflow().MlflowClient(), name, version, summary)
    return name, version


def register(name: str, source: str, run_id: str, summary: dict[str, Any], index: dict[str, Any],
             params: Params | None = None) -> str:
    """Create a new version of ``name`` from the logged pyfunc model ``source``; returns the version."""
    mlflow = _mlflow(params)
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name, description="CorrDiff model sets (one package per rate point)")
    except MlflowException:
        pass  # already registered
    tags = {"hashes": _content_key(index),
            "rate_points": json.dumps([p.get("rate_point") for p in index["packages"]]),
            **_evaluation_tags(summary)}
    mv = mlflow.register_model(source, name, tags=tags)
    return str(mv.version)


def champion_version(name: str, params: Params | None = None) -> str | None:
    mlflow = _mlflow(params)
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def _points(tags: dict[str, str]) -> list[RDPoint]:
    return [RDPoint(**p) for p in json.loads(tags.get("rd_points", "[]"))]


def promote_version(name: str, version: str, rule: PromotionConfig, params: Params | None = None) -> Decision:
    """Apply the champion rule to ``version``; moves the alias when it wins.

    The decision is recorded on the version: ``promotion`` (the reason) and ``promotion.record`` (JSON:
    the champion compared with, whether both were evaluated on the same images and crop, the numbers).
    """
    mlflow = _mlflow(params)
    client = mlflow.MlflowClient()
    current = champion_version(name, params)
    tags = client.get_model_version(name, version).tags
    if current == version:
        decision = Decision(True, f"v{version} is the champion already", None, None)
    else:
        champ = client.get_model_version(name, current).tags if current is not None else None
        decision = decide(_points(tags), _points(champ) if champ is not None else None, rule,
                          candidate_set=EvalSet.from_tags(tags),
                          champion_set=EvalSet.from_tags(champ) if champ is not None else None)
    record = {"champion_before": current, **decision._asdict(), "rule": rule.model_dump(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    client.set_model_version_tag(name, version, "promotion", decision.reason)
    client.set_model_version_tag(name, version, "promotion.record", json.dumps(record))
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
    """Local directory of a ``models:/name@alias`` or ``models:/name/version`` model set, from the project's
    store (:func:`tracking_uri`) whatever the working directory; never creates a store."""
    mlflow = _mlflow(existing=True)
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
        raise ModelPackageError(f"{uri}: cannot resolve in the MLflow registry at {mlflow.get_tracking_uri()} "
                                f"({exc.message})") from None
