"""``pdc train <stage> -r <rate point>``: one training stage, with parameters from params.yaml.

The commands are generated from :data:`pdc.pipeline.TRAIN_STAGES`; every path defaults to its place in
:class:`pdc.pipeline.Layout`, so a stage command needs only its stage and rate point (what ``dvc.yaml``
calls). ``pdc pipeline dvc-yaml`` writes ``dvc.yaml`` from the same definition.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Literal

import typer

from pdc.pipeline import TRAIN_STAGES, TrainStage

app = typer.Typer(
    help="Run one training stage (" + " → ".join(s.name for s in TRAIN_STAGES) + ") for one rate point; "
    "`dvc repro` runs them all. Paths default to the pipeline layout (models/stages/<r>/<stage>, …).",
    no_args_is_help=True,
)

Params = Annotated[Path, typer.Option(help="params.yaml with rate points and profiles.")]
ProfileOpt = Annotated[str | None, typer.Option(help="Profile name (default: params.yaml's `profile`).")]
Rate = Annotated[str, typer.Option("--rate-point", "-r", help="Rate point name from params.yaml (e.g. r0).")]
Data = Annotated[str | None, typer.Option(help="Training data: a WebDataset shard folder, its URL (file://, https://, "
                                               "s3:// via fsspec, or 'pipe:CMD {name}'), or a folder of images "
                                               "(default: pipeline.shards).")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, help="Data-parallel workers (default: the profile's "
                                             "scaling.num_workers). Above 1, or with RAY_ADDRESS naming a "
                                             "cluster, the stage runs on Ray Train (DDP; pdc.scale.runs_on_ray).")]
Init = Annotated[Path | None, typer.Option(help="Model package written by the previous stage (default: its layout path).")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Model package to write (default: models/stages/<r>/<stage>).")]
Work = Annotated[Path | None, typer.Option(help="Checkpoint folder: a killed run resumes from here "
                                                "(default: checkpoints/<r>/<stage>).")]
Metrics = Annotated[Path | None, typer.Option(help="Metrics JSON (and loss history CSV) to write "
                                                   "(default: metrics/<r>/<stage>.json).")]
Track = Annotated[bool | None, typer.Option("--track/--no-track", help="Log the training loop live to MLflow "
                                           "(default: when a store is configured: MLFLOW_TRACKING_URI, "
                                           "PDC_TRACKING_URI or params.yaml pipeline.tracking_uri; nested under "
                                           "$PDC_MLFLOW_PARENT_RUN when set).")]

Loss = Annotated[Literal["mse", "diffusion"] | None, typer.Option(
    help="D_e's training loss (default: the profile's train.privileged.loss, mse). 'diffusion': the diffusion "
         "stage's loss, mse_weight·MSE + lpips_weight·LPIPS(lpips_net) with the profile's train.diffusion weights: "
         "the e2e-lpips control of `pdc evaluate --e2e-lpips` (give it its own --out and --workdir).")]


def _stage_command(spec: TrainStage):
    def command(rate_point: Rate, data: Data = None, init: Init = None, out: Out = None, workdir: Work = None,
                params: Params = Path("params.yaml"), profile: ProfileOpt = None, metrics: Metrics = None,
                workers: Workers = None, track: Track = None, loss: Loss = None) -> None:
        from contextlib import nullcontext

        from pdc.config import load_params
        from pdc.pipeline import Layout
        from pdc.scale import runs_on_ray, with_num_workers
        from pdc.stages import run_stage, with_privileged_loss

        p = with_privileged_loss(with_num_workers(load_params(params, profile), workers), loss)
        lay = Layout.of(p)
        paths = dict(
            data=data or lay.shards_dir,
            init=init or lay.init_package(rate_point, spec.name),
            out=out or lay.package(rate_point, spec.name),
            workdir=(workdir or lay.checkpoints(rate_point, spec.name)) if spec.checkpoints else None,
            metrics=metrics or lay.stage_metrics(rate_point, spec.name),
        )
        tracking = None
        if track is not False:
            from pdc.tracking import TrackingError, tracking_for_training

            tracking = tracking_for_training(p)
            if track and tracking is None:
                raise TrackingError("--track: no MLflow store configured (MLFLOW_TRACKING_URI, PDC_TRACKING_URI or "
                                    "params.yaml pipeline.tracking_uri) or MLflow is not installed")
        if runs_on_ray(p):
            from pdc.scale import run_stage_scaled

            res = run_stage_scaled(spec.name, params, profile, rate_point, num_workers=workers, live=tracking is not None,
                                   privileged_loss=loss, **paths)
        else:
            live = nullcontext(None)
            if tracking is not None:
                from pdc.tracking import live_stage_run

                live = live_stage_run(p, spec.name, rate_point, metrics=paths["metrics"], **tracking)
            with live as log:
                res = run_stage(spec.name, p, rate_point, log=log, **paths)
        shown = {k: v for k, v in res.items() if isinstance(v, (int, float, str)) and k != "stage"}
        typer.echo(f"{spec.name} [{rate_point}]: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))

    command.__doc__ = spec.help
    if spec.name != "privileged":  # --loss is the privileged stage's alone: hide it from the others
        sig = inspect.signature(command, eval_str=True)  # typer reads these: the types, not their strings
        command.__signature__ = sig.replace(parameters=[q for q in sig.parameters.values() if q.name != "loss"])
    return command


for _spec in TRAIN_STAGES:
    app.command(_spec.name)(_stage_command(_spec))


@app.command()
def collect(stages: Annotated[Path | None, typer.Option(help="Folder holding <rate point>/correction packages "
                                                              "(default: models/stages).")] = None,
            out: Out = None, params: Params = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Gather every rate point's final package into one model set (what gets registered)."""
    from pdc.config import load_params
    from pdc.pipeline import Layout
    from pdc.stages import collect as run

    p = load_params(params, profile)
    lay = Layout.of(p)
    out = out or lay.model_set
    index = run(p, stages or lay.stages_dir, out)
    typer.echo(f"{out}: {len(index['packages'])} rate points")


@app.command("export")
def export_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="A codec stage checkpoint (checkpoints/<r>/codec/codec.ckpt.pt).")],
    rate_point: Rate,
    out: Annotated[Path, typer.Option("--out", "-o", help="Package directory to write.")],
    params: Params = Path("params.yaml"), profile: ProfileOpt = None,
) -> None:
    """Write the codec of a stage checkpoint as a codec-only package, e.g. to warm-start other rate points
    (`pdc train codec --init`) from a run that is still training."""
    from pdc.config import load_params
    from pdc.models.package import export_codec_checkpoint

    p = load_params(params, profile)
    res = export_codec_checkpoint(checkpoint, p.active.model, p.rate_point(rate_point), out)
    typer.echo(f"{out}: codec at step {res['step']} (hash {res['hash'][:16]})")


@app.command("plot-losses")
def plot_losses(
    metrics_files: Annotated[list[Path], typer.Argument(help="Stage metrics JSONs (e.g. metrics/*/diffusion.json); "
                                                           "the *_loss.csv beside each is drawn.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("loss_curves.png"),
    smooth: Annotated[int, typer.Option(help="Running-mean window in steps.", min=1)] = 50,
) -> None:
    """Loss curves as a PNG, one panel per stage, one line per rate point."""
    from pdc.stages import plot_loss_curves

    typer.echo(plot_loss_curves(metrics_files, out, smooth))


pipeline_app = typer.Typer(help="The pipeline definition (pdc/pipeline.py) and what is generated from it.",
                           no_args_is_help=True)


@pipeline_app.command("dvc-yaml")
def dvc_yaml_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write it.")] = Path("dvc.yaml"),
    check: Annotated[bool, typer.Option("--check", help="Only compare: exit 1 when the file differs.")] = False,
) -> None:
    """Write dvc.yaml from the pipeline definition (or --check that it is current)."""
    from pdc.fsutil import atomic_write_bytes
    from pdc.pipeline import dvc_yaml

    text = dvc_yaml()
    if check:
        current = out.read_text() if out.is_file() else ""
        if current != text:
            typer.echo(f"{out} differs from pdc/pipeline.py: run `pdc pipeline dvc-yaml`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is current")
        return
    atomic_write_bytes(out, text.encode())
    typer.echo(f"wrote {out}")


@pipeline_app.command("promote")
def promote_cmd(params: Params = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Production: register the workspace's model set (models/corrdiff, judged by eval/) in MLflow and move
    `champion` if it wins. Experiments (`dvc exp run`, pipeline.promote: false) never touch the registry;
    run this after `dvc repro` or `dvc exp apply` of the run to release (it reuses that run's MLflow run)."""
    from pdc.config import load_params
    from pdc.errors import ConfigError
    from pdc.pipeline import Layout
    from pdc.tracking import log_pipeline, tracking_uri

    p = load_params(params, profile)
    lay = Layout.of(p)
    if not (lay.model_set / "index.json").is_file():
        raise ConfigError(f"{lay.model_set}: no model set to promote; run the pipeline first (dvc repro)")
    if not (lay.eval_dir / "summary.json").is_file():
        raise ConfigError(f"{lay.eval_dir}: no evaluation of {lay.model_set}; run the pipeline first (dvc repro)")
    r = log_pipeline(p, lay.model_set, lay.metrics_dir, lay.eval_dir, promote=True,
                     extra_tags={"orchestrator": "pdc pipeline promote"})
    typer.echo(f"MLflow {tracking_uri(p)}: run {r['run_id']}, {p.pipeline.registered_model} v{r['version']}"
               f"{' (new)' if r['new_version'] else ''}: {'promoted' if r['promoted'] else 'not promoted'} "
               f"({r['reason']}); champion is v{r['champion']}")


@pipeline_app.command("evaluate")
def evaluate_cmd(params: Params = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """The pipeline's evaluate stage: the model set on `pipeline.evaluate.images` (default: the shards' val
    split), refusing training images; writes eval/."""
    from pdc.cli.evaluate import print_table
    from pdc.config import load_params
    from pdc.pipeline import evaluate_for_promotion

    summary = evaluate_for_promotion(load_params(params, profile))
    print_table(summary)
