"""Orchestration around the pdc library: Prefect flows whose stage work runs as Ray tasks.

    python -m flows.train       the staged training flow (then evaluate, log; --promote: register, promote)
    python -m flows.evaluate    the evaluation flow on a model set or a registry URI
    python -m flows.register    log a finished DVC pipeline to MLflow (the `register` DVC stage;
                                registers only with pipeline.promote)
    python -m flows.schedule    serve the training flow on the cron in params.yaml (production: promotes)
"""
