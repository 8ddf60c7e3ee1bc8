"""``pdc train <stage>``: one training stage for one rate point, with parameters from params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Run one training stage (codec → diffusion → privileged → correction) for one rate point; "
    "`dvc repro` runs them all.",
    no_args_is_help=True,
)

Params = Annotated[Path, typer.Option(help="params.yaml with rate points and profiles.")]
ProfileOpt = Annotated[str | None, typer.Option(help="Profile name (default: params.yaml's `profile`).")]
Rate = Annotated[str, typer.Option("--rate-point", "-r", help="Rate point name from params.yaml (e.g. r0).")]
Data = Annotated[Path, typer.Option(help="Training data: a WebDataset shard folder or a folder of images.")]
Init = Annotated[Path, typer.Option(help="Model package written by the previous stage.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Model package to write.")]
Work = Annotated[Path, typer.Option(help="Checkpoint folder: a killed run resumes from here.")]
Metrics = Annotated[Path | None, typer.Option(help="Write the stage's metrics (and loss history) as JSON here.")]


def _run(stage: str, params: Path, profile: str | None, rate: str, **kw) -> None:
    from pdc.config import load_params
    from pdc.stages import run_stage

    res = run_stage(stage, load_params(params, profile), rate, **kw)
    shown = {k: v for k, v in res.items() if isinstance(v, (int, float, str)) and k != "stage"}
    typer.echo(f"{stage} [{rate}]: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in shown.items()))


@app.command()
def codec(rate_point: Rate, data: Data, out: Out, workdir: Work, params: Params = Path("params.yaml"),
          profile: ProfileOpt = None, metrics: Metrics = None) -> None:
    """Stage 1: the hyperprior codec (loss R + λ_rd·255²·MSE) for one rate point."""
    _run("codec", params, profile, rate_point, data=data, out=out, workdir=workdir, metrics=metrics)


@app.command()
def diffusion(rate_point: Rate, data: Data, init: Init, out: Out, workdir: Work, params: Params = Path("params.yaml"),
              profile: ProfileOpt = None, metrics: Metrics = None) -> None:
    """Stage 2: the conditional diffusion denoiser on the frozen codec's ŷ."""
    _run("diffusion", params, profile, rate_point, data=data, init=init, out=out, workdir=workdir, metrics=metrics)


@app.command()
def privileged(rate_point: Rate, data: Data, init: Init, out: Out, workdir: Work,
               params: Params = Path("params.yaml"), profile: ProfileOpt = None, metrics: Metrics = None) -> None:
    """Stage 3: the privileged end-to-end decoder D_e (MSE) on the frozen ŷ."""
    _run("privileged", params, profile, rate_point, data=data, init=init, out=out, workdir=workdir, metrics=metrics)


@app.command()
def correction(rate_point: Rate, data: Data, init: Init, out: Out, params: Params = Path("params.yaml"),
               profile: ProfileOpt = None, metrics: Metrics = None) -> None:
    """Stage 4: simulate the encoder on training crops, fit the λ tables, pick ε̃ by measured PSNR."""
    _run("correction", params, profile, rate_point, data=data, init=init, out=out, metrics=metrics)


@app.command()
def collect(stages: Annotated[Path, typer.Option(help="Folder holding <rate point>/correction packages.")],
            out: Out, params: Params = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Gather every rate point's final package into one model set (what gets registered)."""
    from pdc.config import load_params
    from pdc.stages import collect as run

    index = run(load_params(params, profile), stages, out)
    typer.echo(f"{out}: {len(index['packages'])} rate points")


@app.command("plot-losses")
def plot_losses(
    metrics_files: Annotated[list[Path], typer.Argument(help="Stage metrics JSONs (e.g. metrics/*/diffusion.json); "
                                                           "the *_loss.csv beside each is drawn.")],
    out: Out = Path("loss_curves.png"),
    smooth: Annotated[int, typer.Option(help="Running-mean window in steps.", min=1)] = 50,
) -> None:
    """Loss curves as a PNG, one panel per stage, one line per rate point."""
    from pdc.stages import plot_loss_curves

    typer.echo(plot_loss_curves(metrics_files, out, smooth))
