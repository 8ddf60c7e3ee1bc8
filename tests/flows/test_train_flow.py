"""The Prefect training flow really runs: Ray tasks, a temp sqlite MLflow store, registry + champion
(``promote=True``: the production path; experiments leave the registry alone, tests/test_tracking.py)."""

from __future__ import annotations

import json

import pytest

from tests.pipeline_fixtures import init_corpus, write_micro_params


@pytest.fixture()
def isolated_services(tmp_path, monkeypatch):
    """Own Prefect home/DB, own MLflow store, own pdc cache; Ray shut down afterwards."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PDC_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import ray

    ray.shutdown()


def test_training_flow_registers_and_crowns_a_model(isolated_services):
    import mlflow
    from prefect.testing.utilities import prefect_test_harness

    from flows.train import train_flow

    root = isolated_services
    params = write_micro_params(root)
    init_corpus(root)
    with prefect_test_harness():
        result = train_flow(str(params), None, str(root), True, True)

    # every stage of both rate points ran and wrote its package
    assert {m["stage"] for m in result["stages"]} == {"correction"}
    for rate in ("r0", "r1"):
        for stage in ("codec", "diffusion", "privileged", "correction"):
            assert (root / "models" / "stages" / rate / stage / "model.json").is_file()
            # …through Ray Train (pdc.scale), the path `pdc train --workers N` takes too
            assert (root / "checkpoints" / "ray" / f"{stage}-{rate}").is_dir()
    index = json.loads((root / "models" / "corrdiff" / "index.json").read_text())
    assert len(index["packages"]) == 2

    # MLflow: one parent run with the stages' live runs nested; a registered version that is now champion
    client = mlflow.MlflowClient()
    assert result["version"] == "1" and result["promoted"] and result["champion"] == "1"
    runs = client.search_runs([client.get_experiment_by_name("corrdiff").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["run_id"]]
    assert len(children) == 8 and {r.data.tags["live"] for r in children} == {"1"}
    codec_run = next(r for r in children if r.info.run_name == "codec-r0")
    history = client.get_metric_history(codec_run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4] and len({m.timestamp for m in history}) > 1
    parent = client.get_run(result["run_id"])
    assert parent.data.metrics["corrdiff/r0/lpips"] > 0 and "jpeg/q20/psnr" in parent.data.metrics
    mv = client.get_model_version_by_alias("corrdiff", "champion")
    assert json.loads(mv.tags["rd_points"])
    assert len(mv.tags["eval.digest"]) == 64 and mv.tags["eval.crop"] == "64" and mv.tags["eval.count"] == "2"

    # the registry URI resolves to a loadable model set
    from pdc.cli.codec import load_model

    model = load_model("models:/corrdiff@champion", rate=1)
    assert model.content_hash() == index["packages"][1]["hash"]

    # the champion is a real MLflow pyfunc model: load + predict round-trips an image
    import numpy as np

    pyfunc = mlflow.pyfunc.load_model("models:/corrdiff@champion")
    img = np.asarray(__import__("skimage.data", fromlist=["x"]).astronaut()[:48, :64])[None]
    out = pyfunc.predict(img, params={"rate": 1, "mode": "e2e"})
    assert out["reconstruction"].shape == img.shape and out["reconstruction"].dtype == np.uint8
    assert 0 < out["bpp"][0] < 24
    assert pyfunc.metadata.signature.params is not None

    # the training data is a run input with its version; the same content registers no new version
    parent = client.get_run(result["run_id"])
    assert parent.inputs.dataset_inputs and parent.data.tags.get("data.shards_version")
    from pdc.config import load_params
    from pdc.tracking import log_pipeline

    again = log_pipeline(load_params(params), root / "models" / "corrdiff", root / "metrics", root / "eval",
                         data_root=root, promote=True)
    assert again["version"] == "1" and not again["new_version"] and "champion already" in again["reason"]
    assert again["run_id"] == result["run_id"]  # the run that logged this model set and evaluation
    assert len(client.search_model_versions("name='corrdiff'")) == 1
