"""MLflow tracking (own sqlite store per test): live stage runs, experiments vs production, the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipeline_fixtures import init_corpus, write_micro_params


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """A project folder with its own sqlite store and pdc cache; no tracking variables from outside."""
    for var in ("MLFLOW_TRACKING_URI", "PDC_TRACKING_URI", "PDC_MLFLOW_PARENT_RUN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PDC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(None)  # an earlier test's store must not stick (set_tracking_uri beats the variable)
    return tmp_path


def test_a_training_stage_logs_live_metrics(store):
    import mlflow

    from pdc.config import load_params
    from pdc.stages import run_stage
    from pdc.tracking import live_stage_run

    params = load_params(write_micro_params(store, codec={"steps": 4}))
    lines: list[str] = []
    metrics = store / "metrics" / "r0" / "codec.json"
    with live_stage_run(params, "codec", "r0", every=2, echo=lines.append, metrics=metrics) as log:
        res = run_stage("codec", params, "r0", data=init_corpus(store) / "default", out=store / "pkg", log=log,
                        metrics=metrics)
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("corrdiff").experiment_id])[0]
    assert run.data.tags["stage"] == "codec" and run.data.tags["live"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert {"lr", "images_per_s", "bpp"} <= set(run.data.metrics)
    assert len(lines) == 2 and lines[0].startswith("codec[r0] step 2: loss ")
    # once written, the stage's package hash and final values join the run (the pipeline adopts it by that)
    assert run.data.tags["model_hash"] == res["model_hash"] and run.data.metrics["final_loss"] == res["final_loss"]
    assert run.data.params["lambda_rd"] == "0.002"


def test_cli_training_logs_live_under_the_pipeline_run(store, monkeypatch):
    """`pdc train` (what a DVC stage runs) logs every step as it happens, nested under $PDC_MLFLOW_PARENT_RUN."""
    import mlflow
    from typer.testing import CliRunner

    from pdc.cli.main import app
    from pdc.config import load_params
    from pdc.tracking import start_pipeline_run

    params = write_micro_params(store, codec={"steps": 4})
    init_corpus(store)
    parent = start_pipeline_run(load_params(params))
    monkeypatch.setenv("PDC_MLFLOW_PARENT_RUN", parent)
    res = CliRunner().invoke(app, ["train", "codec", "-r", "r0", "--data", "data/raw/default", "--params", str(params)])
    assert res.exit_code == 0, res.output
    client = mlflow.MlflowClient()
    run = next(r for r in client.search_runs([client.get_experiment_by_name("corrdiff").experiment_id])
               if r.data.tags.get("live") == "1")
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.run_name == "codec-r0"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    stamps = [m.timestamp for m in history]
    assert stamps == sorted(stamps) and len(set(stamps)) > 1  # measured when logged, not one stamp for all
    assert run.data.tags["model_hash"] == json.loads((store / "metrics/r0/codec.json").read_text())["model_hash"]


def test_cli_training_without_a_configured_store_does_not_touch_mlflow(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pdc.cli.main import app

    for var in ("MLFLOW_TRACKING_URI", "PDC_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    params = write_micro_params(tmp_path, codec={"steps": 2})
    init_corpus(tmp_path)
    res = CliRunner().invoke(app, ["train", "codec", "-r", "r0", "--data", "data/raw/default", "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    res = CliRunner().invoke(app, ["train", "codec", "-r", "r0", "--data", "data/raw/default", "--params", str(params),
                                   "--track"])
    assert res.exit_code != 0 and "no MLflow store configured" in str(res.exception)


# -- a fake finished pipeline: model set, evaluation, stage metrics ---------------------------------------
def _summary(lpips: tuple[float, float], digest: str = "d1" * 32, crop: int = 64, hashes=("a" * 64, "b" * 64)) -> dict:
    points = [{"label": f"r{i}", "gamma": 1.0, "steps": 2, "bpp": 0.1 * (i + 1), "psnr": 25.0 + i, "lpips": lp,
               "ms_ssim": 0.9, "fid": None, "per_image": []} for i, lp in enumerate(lpips)]
    return {
        "rate_points": [{"label": f"r{i}", "hash": h} for i, h in enumerate(hashes)],
        "images": {"folder": "data/shards", "count": 2, "files": ["x", "y"], "crop": crop, "digest": digest},
        "systems": {"corrdiff": {"points": points},
                    "jpeg": {"points": [{"label": "q50", "quality": 50, "bpp": 0.5, "psnr": 27.0, "lpips": 0.4}]}},
        "bd_rate": {"comparisons": {"corrdiff_vs_jpeg_lpips": {"value": -12.5}, "corrdiff_vs_e2e_lpips": {"value": None}}},
    }


def _pipeline(root: Path, name: str, summary: dict) -> tuple[Path, Path, Path]:
    """models/<name>/index.json, metrics-<name>/ with stage metrics, eval-<name>/summary.json: the
    arguments of log_pipeline after params."""
    model_set, eval_dir, metrics = root / "models" / name, root / f"eval-{name}", root / f"metrics-{name}"
    model_set.mkdir(parents=True)
    packages = [{"name": r["label"], "hash": r["hash"], "rate_point": None} for r in summary["rate_points"]]
    (model_set / "index.json").write_text(json.dumps({"format": "pdc-model-set/1", "packages": packages}))
    eval_dir.mkdir()
    (eval_dir / "summary.json").write_text(json.dumps(summary))
    for rate in ("r0", "r1"):
        (metrics / rate).mkdir(parents=True)
        (metrics / rate / "codec.json").write_text(json.dumps({"model_hash": f"{name}-{rate}", "final_loss": 1.5,
                                                               "steps": 3}))
        (metrics / rate / "codec_loss.csv").write_text("step,loss\n1,3.0\n2,2.0\n3,1.5\n")
    return model_set, metrics, eval_dir


@pytest.fixture()
def stub_model_logging(monkeypatch):
    """The model set logged as a minimal pyfunc model (the real one is tested by the Prefect flow test)."""
    import mlflow

    import pdc.mlflow_model

    class Stub(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    def log_model_set(model_set, name: str = "corrdiff"):
        return mlflow.pyfunc.log_model(name=name, python_model=Stub(), artifacts={"model_set": str(model_set)},
                                       pip_requirements=[])

    monkeypatch.setattr(pdc.mlflow_model, "log_model_set", log_model_set)


def test_evaluation_metrics_are_named_by_system_point_and_metric():
    from pdc.tracking import evaluation_metrics

    m = evaluation_metrics(_summary((0.3, 0.2)))
    assert m["corrdiff/r0/lpips"] == 0.3 and m["corrdiff/r1/psnr"] == 26.0 and m["jpeg/q50/bpp"] == 0.5
    assert m["bd_rate/corrdiff_vs_jpeg_lpips"] == -12.5
    assert not any(k.endswith(("/gamma", "/steps", "/quality", "/fid")) for k in m)  # ids and missing values: no
    assert "bd_rate/corrdiff_vs_e2e_lpips" not in m


def test_an_experiment_logs_but_leaves_the_registry_alone(store, stub_model_logging):
    """pipeline.promote false (the default): one MLflow run, no registered model, no version, no alias."""
    import mlflow

    from flows.register import main as register_main
    from pdc.config import load_params

    params_file = write_micro_params(store)
    params = load_params(params_file)
    assert params.pipeline.promote is False
    model_set, metrics, eval_dir = _pipeline(store, "a", _summary((0.3, 0.2)))
    register_main(["--params", str(params_file), "--model-set", str(model_set), "--eval", str(eval_dir),
                   "--metrics", str(metrics), "--out", str(store / "registry.json")])
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []
    assert json.loads((store / "registry.json").read_text()) == {
        "promote": False, "version": None, "promoted": False, "comparable": None, "champion": None,
        "bd_rate_lpips": None, "psnr_delta_db": None}
    exp = client.get_experiment_by_name("corrdiff").experiment_id
    parent = next(r for r in client.search_runs([exp]) if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["registered"] == "no" and "pipeline.promote is false" in parent.data.tags["promotion"]
    assert parent.data.metrics["corrdiff/r0/lpips"] == 0.3 and "corrdiff.lpips" not in parent.data.metrics
    assert parent.data.tags["eval.digest"] == "d1" * 32 and parent.data.tags["eval.crop"] == "64"
    # stages that were not tracked live: a child each with the final values and the loss history
    children = [r for r in client.search_runs([exp]) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["codec-r0", "codec-r1"]
    assert [m.value for m in client.get_metric_history(children[0].info.run_id, "loss")] == [3.0, 2.0, 1.5]


def test_the_pipeline_run_adopts_the_live_stage_runs(store):
    import mlflow

    from pdc.config import load_params
    from pdc.tracking import live_stage_run, log_pipeline

    params = load_params(write_micro_params(store))
    model_set, metrics, eval_dir = _pipeline(store, "a", _summary((0.3, 0.2)))
    with live_stage_run(params, "codec", "r0", metrics=metrics / "r0" / "codec.json") as log:
        for step in (1, 2, 3):
            log("codec/loss", 3.0 - step, step)
    result = log_pipeline(params, model_set, metrics, eval_dir, promote=False)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("corrdiff").experiment_id
    children = {r.info.run_name: r for r in client.search_runs([exp])
                if r.data.tags.get("mlflow.parentRunId") == result["run_id"]}
    assert set(children) == {"codec-r0", "codec-r1"}
    assert children["codec-r0"].data.tags["live"] == "1"  # the live run itself, not a copy
    assert children["codec-r1"].data.tags["live"] == "0"  # not tracked while it trained: logged afterwards
    # a later pipeline run with the same (DVC-cached) stage points at it instead of taking it over
    again = log_pipeline(params, model_set, metrics, eval_dir, promote=False)
    moved = client.get_run(children["codec-r0"].info.run_id)
    assert moved.data.tags["mlflow.parentRunId"] == result["run_id"]
    later = [r for r in client.search_runs([exp]) if r.data.tags.get("mlflow.parentRunId") == again["run_id"]]
    assert {r.data.tags.get("trained_in_run") for r in later} == {children["codec-r0"].info.run_id, None}


def test_production_registers_and_compares_only_on_the_same_images(store, stub_model_logging):
    import mlflow

    from pdc.config import load_params
    from pdc.tracking import log_pipeline

    params = load_params(write_micro_params(store))
    client = mlflow.MlflowClient()
    # an experiment first; promoting it later reuses its run instead of logging another
    a = _pipeline(store, "a", _summary((0.3, 0.2)))
    exp_run = log_pipeline(params, *a, promote=False)["run_id"]
    first = log_pipeline(params, *a, promote=True)
    assert first["run_id"] == exp_run and first["version"] == "1", first
    assert first["promoted"] and first["champion"] == "1", (first["reason"], first["champion"])
    mv = client.get_model_version("corrdiff", "1")
    assert mv.tags["eval.digest"] == "d1" * 32 and mv.tags["eval.crop"] == "64" and mv.tags["eval.count"] == "2"

    # much better, but judged on other images: registered, not compared, champion stays
    b = _pipeline(store, "b", _summary((0.1, 0.05), digest="e2" * 32, hashes=("c" * 64, "d" * 64)))
    second = log_pipeline(params, *b, promote=True)
    assert second["version"] == "2" and not second["promoted"] and second["comparable"] is False
    assert second["reason"].startswith("not compared: evaluated on other images") and second["champion"] == "1"
    record = json.loads(client.get_model_version("corrdiff", "2").tags["promotion.record"])
    assert record["comparable"] is False and record["champion_before"] == "1" and not record["promote"]

    # another crop of the same images: not compared either
    c = _pipeline(store, "c", _summary((0.1, 0.05), crop=0, hashes=("e" * 64, "f" * 64)))
    assert "another crop" in log_pipeline(params, *c, promote=True)["reason"]

    # the same images and crop: compared, and the better one wins
    d = _pipeline(store, "d", _summary((0.25, 0.15), hashes=("g" * 64, "h" * 64)))
    fourth = log_pipeline(params, *d, promote=True)
    assert fourth["comparable"] and fourth["promoted"] and fourth["champion"] == "4"

    # an evaluation of other packages than the model set holds is refused, naming both
    from pdc.tracking import TrackingError

    e = _pipeline(store, "e", _summary((0.2, 0.1), hashes=("i" * 64, "j" * 64)))
    (e[0] / "index.json").write_text((d[0] / "index.json").read_text())
    with pytest.raises(TrackingError, match="evaluated other packages"):
        log_pipeline(params, *e, promote=True)


# -- where the store is ------------------------------------------------------------------------------------
def _no_store_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "PDC_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


def test_the_store_is_the_projects_from_any_subfolder(tmp_path, monkeypatch):
    from pdc.tracking import TrackingError, project_root, tracking_uri

    _no_store_env(monkeypatch)
    project = tmp_path / "proj"
    (project / "a" / "b").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project / "a" / "b")
    assert tracking_uri() == f"sqlite:///{project / 'mlflow.db'}"
    (project / "params.yaml").write_text("pipeline:\n  tracking_uri: stores/runs.db\n")
    assert tracking_uri() == f"sqlite:///{project / 'stores' / 'runs.db'}"  # the setting, relative to the project
    monkeypatch.setenv("PDC_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking_uri() == "sqlite:////elsewhere/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    # a `dvc exp run --temp` copy of the project uses the project's store
    temp = project / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp.mkdir(parents=True)
    (temp / "params.yaml").write_text("profile: tiny\n")
    assert project_root(temp) == project
    _no_store_env(monkeypatch)
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    with pytest.raises(TrackingError, match="no MLflow tracking store: set MLFLOW_TRACKING_URI"):
        tracking_uri()


def test_a_registry_uri_resolves_from_anywhere_and_creates_no_database(store, stub_model_logging, monkeypatch):
    from pdc.cli.codec import model_path
    from pdc.config import load_params
    from pdc.errors import PdcError
    from pdc.tracking import log_pipeline

    params = load_params(write_micro_params(store))
    a = _pipeline(store, "a", _summary((0.3, 0.2)))
    log_pipeline(params, *a, promote=True)
    _no_store_env(monkeypatch)  # from now on the store is found from the project (params.yaml's folder)

    deep = store / "some" / "folder"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    found = model_path("models:/corrdiff@champion")
    assert json.loads((found / "index.json").read_text()) == json.loads((a[0] / "index.json").read_text())
    assert not (deep / "mlflow.db").exists()

    outside = store.parent / f"{store.name}-outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    with pytest.raises(PdcError, match="no MLflow tracking store"):
        model_path("models:/corrdiff@champion")
    assert not (outside / "mlflow.db").exists()
    monkeypatch.setenv("PDC_TRACKING_URI", str(store / "mlflow.db"))
    assert model_path("models:/corrdiff@champion") == found
    monkeypatch.setenv("PDC_TRACKING_URI", str(store / "missing.db"))
    with pytest.raises(PdcError, match="no MLflow tracking store at"):
        model_path("models:/corrdiff@champion")
    assert not (store / "missing.db").exists()


def test_dvc_declares_plots_for_every_evaluated_system_and_fid():
    import yaml

    from pdc.config import load_params
    from pdc.pipeline import REPO_ROOT, dvc_yaml
    from pdc.rd.classic import classic_codecs
    from pdc.rd.systems import CONTROL_KEY, classic_systems, learned_systems

    doc = yaml.safe_load(dvc_yaml())
    params = load_params(REPO_ROOT / "params.yaml")
    own = params.active.model.correction.gamma
    gammas = tuple(g for g in params.pipeline.evaluate.gamma_values if g != own)
    systems = {s.key for s in learned_systems(gammas)} | {CONTROL_KEY} | {s.key for s in classic_systems(classic_codecs())}
    plots = {k: v for p in doc["plots"] if isinstance(p, dict) for k, v in p.items()}
    for metric in ("psnr", "lpips", "lpips_vgg", "fid"):
        assert set(plots[f"rd_{metric}"]["y"]) >= {f"eval/plots/{s}.csv" for s in systems}
        assert set(plots[f"rd_{metric}"]["y"].values()) == {metric}
    assert "pipeline.promote" in doc["stages"]["register"]["params"]


def test_pdc_pipeline_promote_releases_the_workspace_model_set(store, stub_model_logging):
    """`make promote`: after an experiment-only `dvc repro`, register what the workspace holds."""
    import shutil

    import mlflow
    from typer.testing import CliRunner

    from flows.register import main as register_main
    from pdc.cli.main import app

    params = write_micro_params(store)
    model_set, metrics, eval_dir = _pipeline(store, "x", _summary((0.3, 0.2)))
    shutil.move(model_set, store / "models" / "corrdiff")
    shutil.move(metrics, store / "metrics")
    shutil.move(eval_dir, store / "eval")
    register_main(["--params", str(params)])  # the DVC stage: logs, registers nothing
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []
    before = (store / "metrics" / "registry.json").read_text()

    res = CliRunner().invoke(app, ["pipeline", "promote", "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert "corrdiff v1 (new): promoted (no champion yet); champion is v1" in res.output
    assert str(client.get_model_version_by_alias("corrdiff", "champion").version) == "1"
    assert (store / "metrics" / "registry.json").read_text() == before  # a DVC output: left as the stage wrote it
    runs = client.search_runs([client.get_experiment_by_name("corrdiff").experiment_id],
                              filter_string="tags.`pdc.content` != ''")
    assert len(runs) == 1  # the stage's run was promoted, not logged twice

    shutil.rmtree(store / "eval")
    res = CliRunner().invoke(app, ["pipeline", "promote", "--params", str(params)])
    assert res.exit_code != 0 and "no evaluation of models/corrdiff" in str(res.exception)
