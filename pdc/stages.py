"""The pipeline's stages on files: what ``pdc train …``, ``dvc repro`` and the Prefect/Ray flow run.

Each stage reads its inputs from paths, trains or fits one part, and writes a model package, a metrics
JSON (final values, what ``dvc metrics show`` lists) and, for training stages, the per-step loss as
``<metrics>_loss.csv`` beside it (what ``dvc plots show`` draws), all atomically. The same call from the
CLI, a DVC stage or a Ray task therefore gives the same result.

::

    shards ─▶ codec(r) ─▶ diffusion(r) ─▶ privileged(r) ─▶ correction(r) ─┐   for each rate point r
                                                                          └─▶ collect ─▶ model set
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pdc.config import Params, explain_validation
from pdc.devices import resolve_device
from pdc.distributed import SINGLE, Dist
from pdc.errors import ConfigError
from pdc.fsutil import atomic_write_bytes
from pdc.train import MetricLogger, StageResult

from pdc.pipeline import stage as stage_spec  # the one stage list (pdc/pipeline.py)


def _batches(data: Path | str, cfg, d: Dist, loader_workers: int = 0, device: Any = "cpu"):
    """This worker's micro-batches: its share of the global batch, split for gradient accumulation.

    On a CUDA ``device`` the batches come in pinned memory (the training loop copies them with
    ``non_blocking=True``). The stream starts lazily, so a resumed ``_run`` can still set its step."""
    from pdc.data.loader import make_loader

    return iter(make_loader(data, cfg.crop, cfg.micro_batch(d.world), seed=cfg.seed, num_workers=loader_workers,
                            rank=d.rank, world=d.world, pin_memory=str(device).startswith("cuda")))


def loss_history_path(metrics: Path) -> Path:
    """Where the per-step loss of a stage lives, next to its metrics file."""
    return metrics.with_name(f"{metrics.stem}_loss.csv")


def write_metrics(path: Path | None, metrics: dict[str, Any]) -> None:
    """Write the scalar metrics as JSON and a ``history`` list, if any, as a step,loss CSV."""
    if path is None:
        return
    history = metrics.get("history")
    scalars = {k: v for k, v in metrics.items() if k != "history"}
    atomic_write_bytes(path, (json.dumps(scalars, indent=2, sort_keys=True) + "\n").encode())
    if history is not None:
        rows = "".join(f"{i},{v:.6g}\n" for i, v in enumerate(history, start=1))
        atomic_write_bytes(loss_history_path(path), ("step,loss\n" + rows).encode())


def read_loss_history(metrics: Path) -> list[float]:
    f = loss_history_path(metrics)
    if not f.is_file():
        return []
    return [float(line.split(",")[1]) for line in f.read_text().splitlines()[1:] if line]


def plot_loss_curves(metrics_files: list[Path], out: Path, smooth: int = 50) -> Path:
    """One panel per stage: each file's per-step loss (light) and its running mean over ``smooth`` steps.

    ``metrics_files`` are stage metrics JSONs (their ``*_loss.csv`` beside them is what is drawn); the
    legend names each by its folder (the rate point). Written atomically as PNG.
    """
    import io

    import numpy as np

    from pdc.rd.report import _figure

    curves: dict[str, list[tuple[str, list[float]]]] = {}
    for f in metrics_files:
        history = read_loss_history(Path(f))
        if not history:
            raise ConfigError(f"{loss_history_path(Path(f))}: no loss history to plot")
        curves.setdefault(Path(f).stem, []).append((Path(f).parent.name, history))
    plt, (fig, axes) = _figure(ncols=len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (stage, series) in zip(axes[0], curves.items()):
        for label, h in series:
            y = np.asarray(h)
            k = max(1, min(smooth, len(y) // 5))
            mean = np.convolve(y, np.ones(k) / k, mode="valid")
            line = ax.plot(np.arange(1, len(y) + 1), y, alpha=0.2, linewidth=0.6)[0]
            ax.plot(np.arange(k, len(y) + 1), mean, color=line.get_color(), label=f"{label} (mean of {k})")
        ax.set_title(f"{stage} loss")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _result_metrics(stage: str, res: StageResult) -> dict[str, Any]:
    return {"stage": stage, "final_loss": res.final_loss, "steps": res.steps, "resumed_from": res.resumed_from,
            **res.metrics, "history": res.history}


def run_stage(
    stage: str,
    params: Params,
    rate_point: str,
    *,
    data: Path | str,
    out: Path,
    init: Path | None = None,
    workdir: Path | None = None,
    metrics: Path | None = None,
    log: MetricLogger | None = None,
    d: Dist = SINGLE,
    device: str | None = None,
) -> dict[str, Any]:
    """Run one stage for one rate point; returns (and writes) its metrics.

    In a data-parallel group (``d``, see :mod:`pdc.distributed`) every worker trains on its share and
    rank 0 alone writes the package and metrics. ``device`` overrides the profile's.
    """
    from pdc.models.package import init_model, load_package, read_metadata, save_package
    from pdc import train as T

    from pdc.pipeline import code_version, data_version

    stage_spec(stage)  # refuses an unknown stage, naming the known ones
    rp = params.rate_point(rate_point)

    prof = params.active
    lmbda = rp.lambda_rd
    versions = {"data_version": data_version(data), "code_version": code_version(stage)}
    # A checkpoint is resumed only by the same data and code (and configuration, see pdc.train).
    identity = f"data={versions['data_version']};code={versions['code_version']}"
    extra = {"stage": stage, "rate_point": rp.as_dict(), "profile": params.profile, **versions}
    device = device or resolve_device(prof.device)
    nl = prof.scaling.loader_workers
    if stage == "codec":
        model = init_model(prof.model, seed=prof.train.codec.seed)
        model.trained = ("codec",)  # the later stages build their own networks from the profile
        if init is None and prof.train.codec_init == "shipped":
            init = _shipped_part(rate_point, "codec", prof.model.codec)
        if init is not None:  # a warm start: the codec weights of an earlier package, trained further here
            model.codec = _warm_codec(init, prof.model.codec)
            identity += _record_warm_start(init, versions, extra)
        model = model.to(device)
        res = T.train_codec(model, lmbda, _batches(data, prof.train.codec, d, nl, device), prof.train.codec, workdir,
                            log, identity, d)
        result = _result_metrics(stage, res)
    else:
        if init is None:
            raise ConfigError(f"stage {stage} needs --init (the previous stage's package)")
        model = load_package(init)
        if stage in ("diffusion", "privileged"):
            model = _own_network(model, stage, getattr(prof.model, stage), getattr(prof.train, stage).seed, init)
            warm = (_shipped_part(rate_point, stage, getattr(prof.model, stage))
                    if prof.train.decoders_init == "shipped" and stage not in model.trained else None)
            if warm is not None:  # a warm start: the shipped network, trained further on this codec's ŷ
                getattr(model, stage).load_state_dict(getattr(load_package(warm), stage).state_dict())
                identity += _record_warm_start(warm, versions, extra)
        elif missing := [p for p in ("diffusion", "privileged") if p not in model.trained]:
            raise ConfigError(f"{init}: has no trained {' or '.join(missing)} network; the correction stage starts "
                              "from the privileged stage's package")
        model = model.to(device)
        if stage == "correction":
            t = prof.train
            loader = iter(_crop_images(data, t.correction_crop, t.correction_images))
            # The correction knobs and the diffusion's sampling knobs are this stage's (the package
            # carries the codec stage's copy): the λ tables it fits are per sampling step.
            dif = prof.model.diffusion
            model = model.with_decode_settings(
                correction=prof.model.correction.model_dump(exclude={"eps_mode"}),
                sampling={k: getattr(dif, k) for k in type(dif).SAMPLING_FIELDS})
            fit = T.fit_correction(model, list(loader), log=log, d=d)
            model = T.apply_correction_fit(model, fit)
            result = {"stage": stage, "eps_mode": fit.eps_mode, **fit.report}
            extra["correction"] = fit.report
            if "privileged_loss" in (init_meta := read_metadata(init)):  # the D_e this package carries on
                extra["privileged_loss"] = init_meta["privileged_loss"]
        else:
            cfg = getattr(prof.train, stage)
            batches = _batches(data, cfg, d, nl, device)
            if stage == "diffusion":
                res = T.train_diffusion(model, batches, cfg, workdir, log, identity, d)
            else:
                res = T.train_privileged_decoder(model, batches, cfg, workdir, log, identity, d,
                                                 loss_weights=prof.train.diffusion)
                extra["privileged_loss"] = privileged_loss_record(params)
            result = _result_metrics(stage, res)
            model.mark_trained(stage)
    result.update(versions)
    if d.is_main:
        result["model_hash"] = save_package(model.to("cpu"), out, extra=extra)
        write_metrics(metrics, result)
    return result


def privileged_loss_record(params: Params) -> dict[str, Any]:
    """What a privileged stage's package records of its loss (``model.json`` → ``privileged_loss``): the
    loss and, for "diffusion", the diffusion stage's weights it used."""
    t = params.active.train
    return {"loss": t.privileged.loss, **(t.diffusion.image_loss() if t.privileged.loss == "diffusion" else {})}


def with_privileged_loss(params: Params, loss: str | None) -> Params:
    """``params`` with the active profile's ``train.privileged.loss`` replaced (validated again); None: as is."""
    if loss is None or loss == params.active.train.privileged.loss:
        return params
    doc = params.model_dump()
    doc["profiles"][params.profile]["train"]["privileged"]["loss"] = loss
    try:
        return Params.model_validate(doc)
    except ValidationError as exc:
        raise explain_validation(exc, "--loss") from None


def _network_fields(cfg: Any) -> dict[str, Any]:
    """The fields that shape a network's weights (the diffusion's sampling knobs left out)."""
    skip = set(getattr(type(cfg), "SAMPLING_FIELDS", ()))
    return {k: v for k, v in cfg.model_dump().items() if k not in skip}


def _own_network(model: Any, part: str, cfg: Any, seed: int, init: Path) -> Any:
    """The model with ``part`` as this stage trains it: the profile's architecture, freshly initialised, unless
    ``init`` already holds a trained ``part`` of that architecture (then training continues from it)."""
    if part in model.trained and _network_fields(getattr(model.config, part)) == _network_fields(cfg):
        return model
    if part in model.trained:
        print(f"{init}: its {part} network differs from the profile's model.{part}: training a fresh one",
              file=sys.stderr, flush=True)
    return model.with_fresh_part(part, cfg, seed=seed)


def _record_warm_start(init: Path, versions: dict[str, Any], extra: dict[str, Any]) -> str:
    """Record in the stage's package that it started from ``init``; returns the run-identity suffix."""
    from pdc.models.package import read_metadata

    versions["warm_start"] = read_metadata(init)["hash"]
    extra["warm_start"] = {"package": str(init), "hash": versions["warm_start"]}
    return f";warm={versions['warm_start']}"


def _shipped_part(rate_point: str, part: str, cfg: Any) -> Path | None:
    """The shipped package of ``rate_point`` when it holds a trained ``part`` of the profile's architecture,
    else None (said on stderr: the stage then trains that network from scratch)."""
    from pdc.config import parse_model_config
    from pdc.models.package import PARTS, read_metadata
    from pdc.zoo import SHIPPED, shipped_package

    package = shipped_package(rate_point)
    if package is None:
        print(f"{SHIPPED}: no shipped package for rate point {rate_point}: training its {part} from scratch",
              file=sys.stderr, flush=True)
        return None
    meta = read_metadata(package)
    if part not in meta.get("parts", PARTS):
        print(f"{package}: holds no trained {part} network: training it from scratch", file=sys.stderr, flush=True)
        return None
    shipped = _network_fields(getattr(parse_model_config(meta["config"], where=f"{package}/model.json"), part))
    if shipped != _network_fields(cfg):
        print(f"{package}: shipped {part} {shipped} is not the profile's model.{part} {_network_fields(cfg)}: "
              "training from scratch", file=sys.stderr, flush=True)
        return None
    return package


def _warm_codec(init: Path, cfg: Any) -> Any:
    """The codec of package ``init``, refused (naming the sizes) when it does not fit ``cfg``."""
    from pdc.models.package import load_package

    warm = load_package(init)
    if warm.config.codec != cfg:
        raise ConfigError(f"{init}: its codec is {warm.config.codec.model_dump()}, the profile's model.codec is "
                          f"{cfg.model_dump()}: a warm start needs the same architecture")
    return warm.codec


def _crop_images(data: Path | str, crop: int, count: int):
    from pdc.data.loader import make_loader

    stream = iter(make_loader(data, crop, 1, seed=12345))
    return [next(stream) for _ in range(count)]


def collect(params: Params, stage_root: Path, out: Path) -> dict[str, Any]:
    """Gather the final (correction-stage) package of every rate point into one model set."""
    from pdc.models.package import write_model_set

    packages = [stage_root / name / "correction" for name in params.rate_names()]
    return write_model_set(out, packages)
