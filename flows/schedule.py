"""Scheduled retraining: serve the training flow on the cron from params.yaml.

    prefect server start                                   # terminal 1 (or use Prefect Cloud)
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.schedule     # terminal 2: serves the schedule

``--print`` shows the deployment that would be served (name, cron, parameters) without serving it.

What a schedule must survive: restarting this process does not pause the schedule
(``pause_on_shutdown=False``); two retrains never overlap (deployment concurrency limit 1, a run due
while another is still going waits in the queue: ``ENQUEUE``); and the training tasks retry only
transient failures (:func:`flows.train.retry_transient`), not configuration or data errors.
"""

from __future__ import annotations

import argparse

from flows.train import train_flow
from pdc.config import load_params

DEPLOYMENT = "corrdiff-retrain"


def build_deployment(params_path: str = "params.yaml", cron: str | None = None):
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    params = load_params(params_path)
    return train_flow.to_deployment(
        name=DEPLOYMENT,
        cron=cron or params.pipeline.retrain_cron,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        # Scheduled retraining is the production path: it registers and may move `champion`.
        parameters={"params_path": params_path, "evaluate": True, "promote": True},
        description="Retrain every rate point, evaluate, register, promote the champion if better.",
        tags=["corrdiff", "retrain"],
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cron", default=None, help="Override pipeline.retrain_cron.")
    ap.add_argument("--print", action="store_true", help="Show the deployment and exit.")
    args = ap.parse_args(argv)
    deployment = build_deployment(args.params, args.cron)
    if args.print:
        print(f"deployment {deployment.name}: schedules={[s.schedule.cron for s in deployment.schedules]} "
              f"concurrency_limit={deployment.concurrency_limit} parameters={deployment.parameters}")
        return
    from prefect import serve

    serve(deployment, pause_on_shutdown=False)


if __name__ == "__main__":
    main()
