"""The retraining schedule: survives restarts, never overlaps, retries only transient failures."""

from __future__ import annotations

import pytest


class _State:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def result(self):
        raise self.exc


def test_user_errors_are_not_retried_even_through_ray():
    import ray.exceptions

    from flows.train import retry_transient
    from pdc.errors import ConfigError

    assert retry_transient(None, None, _State(ConfigError("params.yaml: bad"))) is False
    wrapped = ray.exceptions.RayTaskError("stage", "traceback", ConfigError("bad")).as_instanceof_cause()
    assert retry_transient(None, None, _State(wrapped)) is False
    assert retry_transient(None, None, _State(OSError("disk hiccup"))) is True
    assert retry_transient(None, None, _State(ray.exceptions.WorkerCrashedError())) is True


def test_deployment_runs_one_retrain_at_a_time(tmp_path):
    pytest.importorskip("prefect")
    from flows.schedule import build_deployment
    from tests.pipeline_fixtures import write_micro_params

    dep = build_deployment(str(write_micro_params(tmp_path)), cron="0 3 * * 1")
    assert dep.concurrency_limit == 1
    assert dep.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * 1"]
