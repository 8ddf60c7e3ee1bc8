"""MLflow tracking while a stage trains (own sqlite store per test)."""

from __future__ import annotations

from tests.pipeline_fixtures import init_corpus, write_micro_params


def test_a_training_stage_logs_live_metrics(tmp_path, monkeypatch):
    import mlflow

    from pdc.config import load_params
    from pdc.stages import run_stage
    from pdc.tracking import live_stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = load_params(write_micro_params(tmp_path, codec={"steps": 4}))
    lines: list[str] = []
    with live_stage_run(params, "codec", "r0", every=2, echo=lines.append) as log:
        run_stage("codec", params, "r0", data=init_corpus(tmp_path) / "default", out=tmp_path / "pkg", log=log)
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("corrdiff").experiment_id])[0]
    assert run.data.tags["stage"] == "codec" and run.data.tags["live"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert {"lr", "images_per_s", "bpp"} <= set(run.data.metrics)
    assert len(lines) == 2 and lines[0].startswith("codec[r0] step 2: loss ")
