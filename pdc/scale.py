"""Training stages on Ray Train: data-parallel workers (DDP) on a local Ray or a cluster (``RAY_ADDRESS``).

This is the one module of ``pdc`` that imports Ray (as :mod:`pdc.tracking` is the one for MLflow); the
stage code itself (:func:`pdc.stages.run_stage`) knows only :mod:`pdc.distributed`. ::

    driver: CLI (num_workers > 1) / DVC stage / Prefect task
      └─ run_stage_scaled(stage, params, rate, paths)
           ├─ checks the inputs here (a bad config or path fails at once, not once per restart)
           └─ TorchTrainer(_worker_loop,
                           ScalingConfig(num_workers, use_gpu, resources_per_worker),   ← params.yaml `scaling`
                           RunConfig(storage_path, failure_config=FailureConfig(max_failures)))
                 worker r of W: run_stage(..., d=Dist(r, W), device=ray.train.torch.get_device())
                   reads its own part of the shards, DDP-averages gradients;
                   rank 0 writes checkpoints, the package and the metrics (atomically);
                   every checkpoint also goes to Ray Train (ray.train.report → storage_path)

A lost worker or node makes Ray Train restart the group (up to ``max_failures`` times); every worker
then resumes from the furthest checkpoint of this run it finds: the stage's workdir or what Ray Train
hands back (``ray.train.get_checkpoint``), which also covers a rerun of the same stage, as Ray Train
keeps a run's checkpoints under ``storage_path/<stage>-<rate>``. ``storage_path`` may be a local folder
or a URL Ray Train's pyarrow filesystems read (``s3://…``, ``gs://…``). Packages, metrics and data are
plain paths: on a multi-node cluster they must be on storage every node mounts at the same path (the
driver passes absolute paths). ``RAY_ADDRESS`` joins a running cluster and ships this checkout to it as
the job's ``working_dir``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pdc.config import Params, ScalingConfig, explain_validation, load_params
from pdc.errors import ConfigError, PdcError

_INIT_LOCK = threading.Lock()  # Prefect runs concurrent tasks in threads of one process
#: Big folders a cluster job must not upload as its working_dir (they live on shared storage).
_NOT_SHIPPED = [".git", ".venv", "data", "models", "checkpoints", "metrics", "eval", "mlruns", "mlflow.db", "runs",
                ".dvc/cache", "**/__pycache__"]
#: Environment the workers must share with the driver (the MLflow store their live runs write to, …).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "PDC_CACHE", "PDC_WEIGHTS_SOURCE")


def runtime_env(address: str | None) -> dict[str, Any]:
    """Ray's ``runtime_env`` for this driver: forwarded settings; on a cluster also the code."""
    from pdc.pipeline import REPO_ROOT

    env: dict[str, Any] = {"env_vars": {"PDC_NO_PROGRESS": "1",
                                        **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}}
    if address:
        env.update(working_dir=str(REPO_ROOT), excludes=_NOT_SHIPPED)
    return env


def ensure_ray() -> None:
    """Start a local Ray (or join ``RAY_ADDRESS``) once per process."""
    import ray

    with _INIT_LOCK:
        if ray.is_initialized():
            return
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True, runtime_env=runtime_env(address))
        else:
            ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False,
                     runtime_env=runtime_env(None))


def wants_gpu(scaling: ScalingConfig, cluster: dict[str, float]) -> bool:
    """Whether the workers ask for GPUs: ``use_gpu`` as set, or with "auto" when the *cluster* (not the
    driver) has ``gpus_per_worker`` for every worker."""
    if scaling.use_gpu != "auto":
        return bool(scaling.use_gpu)
    return cluster.get("GPU", 0.0) >= scaling.gpus_per_worker * scaling.num_workers


def plan_gpus(params: Params, cluster: dict[str, float]) -> bool:
    """Whether the workers get GPUs (:func:`wants_gpu`), refusing what would silently train elsewhere:
    a profile with ``device: cuda`` whose workers the cluster grants no GPU, a ``device: cpu`` profile
    with ``use_gpu: true``, and a fractional ``gpus_per_worker`` that puts two ranks on one GPU."""
    prof, s = params.active, params.active.scaling
    gpu = False if prof.device == "cpu" and s.use_gpu == "auto" else wants_gpu(s, cluster)
    ask = (f"scaling.num_workers={s.num_workers} × gpus_per_worker={s.gpus_per_worker:g} = "
           f"{s.num_workers * s.gpus_per_worker:g} GPU(s), use_gpu: {str(s.use_gpu).lower()}")
    where = f"profile {params.profile!r}"
    if prof.device == "cuda" and not gpu:
        hint = "; use_gpu: true waits for autoscaled GPU nodes" if s.use_gpu == "auto" else ""
        raise ConfigError(f"{where} says device: cuda, but its workers get no GPU: asked {ask}, the Ray cluster "
                          f"has {cluster.get('GPU', 0.0):g} GPU(s){hint}")
    if prof.device == "cpu" and gpu:
        raise ConfigError(f"{where} says device: cpu, but asks the Ray cluster for GPUs ({ask})")
    if gpu and s.gpus_per_worker % 1 and (s.num_workers > 1 or s.gpus_per_worker > 1):
        raise ConfigError(f"{where}: {ask} would put two ranks on one GPU (NCCL refuses that); "
                          "use a whole number of GPUs per worker")
    return gpu


def worker_device(params: Params, use_gpu: bool, granted: str) -> str:
    """The device a worker trains on: Ray Train's ``granted`` one when it asked for GPUs, else cpu; a
    ``device: cuda`` profile that ends up anywhere but a GPU stops instead of training on the CPU."""
    device = granted if use_gpu else "cpu"
    if params.active.device == "cuda" and not device.startswith("cuda"):
        raise ConfigError(f"profile {params.profile!r} says device: cuda, but this Ray Train worker got {device}")
    return device


def worker_resources(scaling: ScalingConfig, gpu: bool) -> dict[str, float]:
    return {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if gpu else {})}


def runs_on_ray(params: Params, *, concurrent: bool = False) -> bool:
    """Where a stage trains: the one rule every caller applies (``pdc train``, hence ``dvc repro``, and the
    Prefect flow).

    On Ray Train when the stage needs more than one worker (``scaling.num_workers > 1``), when a Ray
    cluster is named (``RAY_ADDRESS``: training there was asked for), or when the caller runs stages
    ``concurrent``-ly in one process (the Prefect flow's rate-point chains: torch's global RNG and thread
    pool would be shared, so each stage gets worker processes of its own); otherwise in the calling process,
    which starts in a second instead of several and trains the same model.
    """
    return params.active.scaling.num_workers > 1 or bool(os.environ.get("RAY_ADDRESS")) or concurrent


def with_num_workers(params: Params, num_workers: int | None) -> Params:
    """``params`` with the active profile's ``scaling.num_workers`` replaced (validated again)."""
    if num_workers is None or num_workers == params.active.scaling.num_workers:
        return params
    doc = params.model_dump()
    doc["profiles"][params.profile]["scaling"]["num_workers"] = num_workers
    try:
        return Params.model_validate(doc)
    except ValidationError as exc:
        raise explain_validation(exc, f"scaling.num_workers={num_workers}") from None


class RayCheckpoints:
    """:class:`~pdc.distributed.CheckpointStore` on Ray Train: each checkpoint file is reported (rank 0
    uploads it to ``storage_path``, the others report metrics only, in step), and the latest reported one
    (of this fit, of a restarted one, or of an earlier run of the same name) is downloaded on start."""

    def __init__(self) -> None:
        import shutil
        import tempfile
        import weakref

        self._local = Path(tempfile.mkdtemp(prefix="pdc-ray-checkpoint-"))
        weakref.finalize(self, shutil.rmtree, self._local, True)  # the downloaded copy goes with the worker

    def latest(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        files = sorted(Path(checkpoint.to_directory(str(self._local / "restored"))).glob("*.ckpt.pt"))
        return files[0] if files else None

    def persist(self, path: Path | None, metrics: dict[str, float]) -> None:
        import shutil
        import tempfile

        import ray.train

        if path is None or not path.is_file():
            ray.train.report(metrics)
            return
        # Ray uploads a folder: a hard link to the file beside it (no second copy of a large checkpoint on
        # disk before the upload); a copy only where the file system has no hard links.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ray-report-") as folder:
            try:
                os.link(path, Path(folder) / path.name)
            except OSError:
                shutil.copy2(path, Path(folder) / path.name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))  # uploads, then returns


def storage_location(storage_path: str | None) -> str:
    """Ray Train's ``storage_path``: a URL as given, a local folder made absolute (workers may run elsewhere)
    and created; unset = ``checkpoints/ray`` under the working directory."""
    from pdc.data.shards import is_url

    if storage_path and is_url(storage_path):
        return storage_path
    folder = Path(storage_path or "checkpoints/ray").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the stage on this worker's share (see the module docstring)."""
    import contextlib

    import ray.train
    import ray.train.torch
    import torch

    from pdc.distributed import Dist
    from pdc.stages import run_stage

    if config["cwd"]:
        os.chdir(config["cwd"])
    ctx = ray.train.get_context()
    d = Dist(ctx.get_world_rank(), ctx.get_world_size(), RayCheckpoints())
    torch.set_num_threads(max(1, int(config["threads"])))
    params = Params.model_validate(config["params"])  # the driver's, validated: not re-read from disk
    device = worker_device(params, config["use_gpu"], str(ray.train.torch.get_device()))
    stage, rate = config["stage"], config["rate"]
    live = contextlib.nullcontext(None)
    if config["live"] and d.is_main:
        from pdc.tracking import live_stage_run

        live = live_stage_run(params, stage, rate, echo=lambda line: print(line, flush=True),
                              metrics=config["paths"]["metrics"], **config["live"])  # {uri, parent_run_id}
    with live as log:
        log = _inject_fault(log, config.get("fault"))
        paths = {k: (Path(v) if k != "data" else v) if v else None for k, v in config["paths"].items()}
        run_stage(stage, params, rate, log=log, d=d, device=device, **paths)


def _inject_fault(log, spec: str | None):
    """Test hook (``PDC_FAULT_INJECT=<step>:<marker file>`` in the driver): rank 0's process dies at that
    step once — as a killed worker would — so a test can watch Ray Train restart and resume."""
    if not spec:
        return log
    step_text, marker = spec.split(":", 1)

    def logged(name: str, value: float, step: int) -> None:
        if step == int(step_text) and not Path(marker).exists():
            Path(marker).write_text("died once\n")
            os._exit(1)
        if log is not None:
            log(name, value, step)

    return logged


def _check_inputs(stage: str, params: Params, rate: str, data: str, init: Path | None) -> None:
    """Refuse what no restart can fix, before any worker starts (the same errors run_stage raises)."""
    from pdc.pipeline import data_version, stage as stage_spec

    stage_spec(stage)
    params.rate_point(rate)
    if stage != "codec" and (init is None or not init.exists()):
        raise ConfigError(f"stage {stage} needs --init (the previous stage's package){f': {init} not found' if init else ''}")
    data_version(data)  # reads the manifest (local or URL) or walks the folder: a missing source fails here


def run_stage_scaled(
    stage: str,
    params_path: Path,
    profile: str | None,
    rate: str,
    *,
    data: Path | str,
    out: Path,
    init: Path | None = None,
    workdir: Path | None = None,
    metrics: Path | None = None,
    live: bool = False,
    num_workers: int | None = None,
    parent_run_id: str | None = None,
    privileged_loss: str | None = None,
) -> dict[str, Any]:
    """Run :func:`pdc.stages.run_stage` on Ray Train with the profile's ``scaling``; returns its metrics.

    ``num_workers`` overrides ``scaling.num_workers`` and ``privileged_loss`` ``train.privileged.loss``; ``live``
    logs the training loop to MLflow (rank 0), nested under the pipeline run ``parent_run_id`` (default
    ``$PDC_MLFLOW_PARENT_RUN``) when given.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from pdc.data.shards import is_url
    from pdc.tracking import live_tracking

    from pdc.stages import with_privileged_loss

    params = with_privileged_loss(with_num_workers(load_params(params_path, profile), num_workers), privileged_loss)
    scaling = params.active.scaling
    absolute = lambda p: Path(p).resolve() if p is not None else None  # noqa: E731 - workers may run elsewhere
    data = data if is_url(data) else absolute(data)
    out, init, workdir = absolute(out), absolute(init), absolute(workdir)
    _check_inputs(stage, params, rate, str(data), init)
    metrics = absolute(metrics) if metrics is not None else (workdir or out.parent) / f"{out.name}.metrics.json"
    storage = storage_location(scaling.storage_path)

    ensure_ray()
    gpu = plan_gpus(params, ray.cluster_resources())  # a cuda profile without GPUs stops here, loudly
    config = {
        # The parameters travel with the job: a restart hours later (or a node without this checkout's
        # params.yaml) trains with what the driver validated.
        "stage": stage, "rate": rate, "params": params.model_dump(mode="json"),
        "use_gpu": gpu, "threads": scaling.cpus_per_worker,
        "live": live_tracking(params, parent_run_id) if live else None,
        "cwd": None if os.environ.get("RAY_ADDRESS") else os.getcwd(),
        "fault": os.environ.get("PDC_FAULT_INJECT"),
        "paths": {"data": str(data), "out": str(out), "init": str(init) if init else None,
                  "workdir": str(workdir) if workdir else None, "metrics": str(metrics)},
    }
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=gpu,
                                               resources_per_worker=worker_resources(scaling, gpu)),
        run_config=ray.train.RunConfig(name=f"{stage}-{rate}", storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _user_error(exc) or exc
    return json.loads(metrics.read_text())


def _user_error(exc: Exception) -> PdcError | None:
    """The first worker's :class:`PdcError` inside Ray Train's failure (so callers see the real message)."""
    for failure in getattr(exc, "worker_failures", {}).values():
        for candidate in (failure, getattr(failure, "cause", None), getattr(failure, "__cause__", None)):
            if isinstance(candidate, PdcError):
                return candidate
    return None
