"""``pdc train <stage>``: run one training stage on a profile from params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run one training stage (codec → diffusion → privileged → correction).", no_args_is_help=True)

Params = Annotated[Path, typer.Option(help="params.yaml with the profiles.")]
ProfileOpt = Annotated[str | None, typer.Option(help="Profile name (default: params.yaml's `profile`).")]
Rate = Annotated[int, typer.Option(help="Index into the profile's rate_points.", min=0)]
Data = Annotated[Path, typer.Option(help="Training data: a WebDataset shard folder or a folder of images.")]
Init = Annotated[Path, typer.Option(help="Model package from the previous stage.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Model package to write.")]
Work = Annotated[Path, typer.Option(help="Checkpoint folder (resume after a kill).")]
Metrics = Annotated[Path | None, typer.Option(help="Write the stage's metrics as JSON here.")]


def _write_metrics(path: Path | None, metrics: dict) -> None:
    import json

    from pdc.imageio import atomic_write_bytes

    if path is not None:
        atomic_write_bytes(path, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())


def _batches(data: Path, stage_cfg, seed_offset: int = 0):
    from pdc.data.loader import make_loader

    return iter(make_loader(data, stage_cfg.crop, stage_cfg.batch_size, seed=stage_cfg.seed + seed_offset))


@app.command()
def codec(data: Data, out: Out, workdir: Work, params: Params = Path("params.yaml"), profile: ProfileOpt = None,
          rate: Rate = 0, metrics: Metrics = None) -> None:
    """Stage 1: train the hyperprior codec for one rate point."""
    from pdc.config import load_params
    from pdc.errors import ConfigError
    from pdc.models.package import init_model, save_package
    from pdc.train import train_codec

    _, prof, _ = load_params(params, profile)
    if rate >= len(prof.rate_points):
        raise ConfigError(f"--rate {rate}: the profile has {len(prof.rate_points)} rate points")
    model = init_model(prof.model, seed=prof.train.codec.seed + rate)
    res = train_codec(model, prof.rate_points[rate], _batches(data, prof.train.codec, rate), prof.train.codec, workdir)
    save_package(model, out, extra={"stage": "codec", "rate_point": prof.rate_points[rate]})
    _write_metrics(metrics, {"final_loss": res.final_loss, **res.metrics})


def _continue(stage: str, data: Data, init: Init, out: Out, workdir: Work, params: Path, profile: str | None,
              metrics: Path | None) -> None:
    from pdc.config import load_params
    from pdc.models.package import load_package, read_metadata, save_package
    from pdc import train as T

    _, prof, _ = load_params(params, profile)
    model = load_package(init)
    meta = read_metadata(init)
    cfg = getattr(prof.train, stage)
    fn = {"diffusion": T.train_diffusion, "privileged": T.train_privileged_decoder}[stage]
    res = fn(model, _batches(data, cfg), cfg, workdir)
    save_package(model, out, extra={"stage": stage, "rate_point": meta.get("rate_point")})
    _write_metrics(metrics, {"final_loss": res.final_loss, **res.metrics})


@app.command()
def diffusion(data: Data, init: Init, out: Out, workdir: Work, params: Params = Path("params.yaml"),
              profile: ProfileOpt = None, metrics: Metrics = None) -> None:
    """Stage 2: train the conditional diffusion denoiser on the frozen codec's ŷ."""
    _continue("diffusion", data, init, out, workdir, params, profile, metrics)


@app.command()
def privileged(data: Data, init: Init, out: Out, workdir: Work, params: Params = Path("params.yaml"),
               profile: ProfileOpt = None, metrics: Metrics = None) -> None:
    """Stage 3: train the privileged end-to-end decoder D_e (MSE) on the frozen ŷ."""
    _continue("privileged", data, init, out, workdir, params, profile, metrics)


@app.command()
def correction(data: Data, init: Init, out: Out, params: Params = Path("params.yaml"), profile: ProfileOpt = None,
               metrics: Metrics = None) -> None:
    """Stage 4: simulate the encoder on training crops, fit λ tables, pick ε̃ by measured PSNR."""
    from pdc.config import load_params
    from pdc.data.loader import make_loader
    from pdc.models.package import load_package, read_metadata, save_package
    from pdc.train import apply_correction_fit, fit_correction

    _, prof, _ = load_params(params, profile)
    model = load_package(init)
    meta = read_metadata(init)
    t = prof.train
    loader = iter(make_loader(data, t.correction_crop, 1, seed=12345))
    images = [next(loader) for _ in range(t.correction_images)]
    fit = fit_correction(model, images)
    final = apply_correction_fit(model, fit)
    save_package(final, out, extra={"stage": "correction", "rate_point": meta.get("rate_point"), "correction": fit.report})
    _write_metrics(metrics, {"eps_mode": fit.eps_mode, **fit.report})
