"""The evaluation flow: RD(P) curves of a model set against baselines, logged to MLflow.

    python -m flows.evaluate --model models:/corrdiff@champion [--images DIR] [--out eval-champion]
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
def log_task(model: str, params_path: str, out: str) -> str:
    from pdc.tracking import _mlflow, experiment_id

    params = load_params(params_path)
    mlflow = _mlflow()
    with mlflow.start_run(experiment_id=experiment_id(params.pipeline.experiment), run_name=f"evaluate {model}") as run:
        mlflow.set_tag("model", model)
        mlflow.log_artifacts(out, "evaluation")
    return run.info.run_id


@flow(name="corrdiff-evaluate")
def evaluate_flow(model: str = "models:/corrdiff@champion", params_path: str = "params.yaml",
                  out: str = "eval-registry", images: str | None = None) -> dict[str, Any]:
    result = evaluate_task(model, params_path, out, images)
    run_id = log_task(model, params_path, out)
    return {"mlflow_run": run_id, "outputs": result.get("outputs", [])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models:/corrdiff@champion")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="eval-registry")
    ap.add_argument("--images", default=None)
    args = ap.parse_args(argv)
    print(evaluate_flow(args.model, args.params, args.out, args.images))


if __name__ == "__main__":
    main()
