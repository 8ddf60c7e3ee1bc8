"""The evaluation flow: RD(P) curves of a model set against baselines, logged to MLflow.

    python -m flows.evaluate --model models:/corrdiff@champion [--images DIR] [--out eval-champion] [--record]

Metrics are logged as ``<system>/<rate point>/<metric>`` (:func:`pdc.tracking.evaluation_metrics`) with
the image set's identity as tags. ``--record`` (registry models only) makes this evaluation the one the
version is judged by: the champion rule compares two versions only when both were evaluated on the same
images and crop, so re-evaluating the champion on a candidate's images lets ``pdc pipeline promote``
compare them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task

from pdc.config import Params, load_params


def run_evaluation(model_dir: Path, params: Params, out: Path, root: Path = Path("."), images: Path | None = None) -> dict[str, Any]:
    """Evaluate with the pipeline's settings, on unseen images (:func:`pdc.pipeline.evaluate_for_promotion`)."""
    from pdc.pipeline import evaluate_for_promotion

    return evaluate_for_promotion(params, root, model_dir=model_dir, out=out, images=images)


@task(name="evaluate-model-set", retries=1)
def evaluate_task(model: str, params_path: str, out: str, images: str | None) -> dict[str, Any]:
    from pdc.cli.codec import model_path

    params = load_params(params_path)
    return run_evaluation(model_path(model), params, Path(out), images=Path(images) if images else None)


@task(name="log-evaluation")
def log_task(model: str, params_path: str, out: str, record: bool = False) -> str:
    import json

    from pdc.tracking import _mlflow, experiment_id, log_evaluation, record_evaluation

    params = load_params(params_path)
    mlflow = _mlflow(params)
    summary = json.loads((Path(out) / "summary.json").read_text())
    with mlflow.start_run(experiment_id=experiment_id(params.pipeline.experiment, params),
                          run_name=f"evaluate {model}") as run:
        mlflow.set_tag("model", model)
        log_evaluation(mlflow, summary)
        mlflow.log_artifacts(out, "evaluation")
        if record and model.startswith("models:/"):
            name, version = record_evaluation(model, summary)
            mlflow.set_tags({"recorded_on": f"{name} v{version}"})
    return run.info.run_id


@flow(name="corrdiff-evaluate")
def evaluate_flow(model: str = "models:/corrdiff@champion", params_path: str = "params.yaml",
                  out: str = "eval-registry", images: str | None = None, record: bool = False) -> dict[str, Any]:
    result = evaluate_task(model, params_path, out, images)
    run_id = log_task(model, params_path, out, record)
    return {"mlflow_run": run_id, "outputs": result.get("outputs", [])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models:/corrdiff@champion")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="eval-registry")
    ap.add_argument("--images", default=None)
    ap.add_argument("--record", action="store_true",
                    help="Registry models: judge the version by this evaluation from now on (its RD points, image set).")
    args = ap.parse_args(argv)
    print(evaluate_flow(args.model, args.params, args.out, args.images, args.record))


if __name__ == "__main__":
    main()
