"""Stages on Ray Train (pdc.scale): 2 gloo workers on CPU run every stage, a killed worker resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.pipeline_fixtures import init_corpus, write_micro_params


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module (starting it costs seconds); shut down afterwards."""
    import ray

    from pdc.scale import ensure_ray

    ensure_ray()
    yield
    ray.shutdown()


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """Micro params with ``scaling.num_workers: 2`` and the embedded corpus as shards; cwd = tmp_path."""
    from pdc.data.shards import build_shards

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PDC_NO_PROGRESS", "1")
    params = write_micro_params(tmp_path)
    doc = yaml.safe_load(params.read_text())
    doc["profiles"]["micro"]["scaling"] = {"num_workers": 2}
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    build_shards(init_corpus(tmp_path), tmp_path / "data" / "shards", shard_size=4, val_fraction=0.2)
    return tmp_path, params


def _chain(root: Path, params: Path, tag: str, scaled: bool) -> dict[str, dict]:
    from pdc.config import load_params
    from pdc.scale import run_stage_scaled, with_num_workers
    from pdc.stages import run_stage

    out, prev = {}, None
    for stage in ("codec", "diffusion", "privileged", "correction"):
        paths = dict(data=root / "data" / "shards", out=root / tag / "models" / stage, init=prev,
                     workdir=root / tag / "ck" / stage if stage != "correction" else None,
                     metrics=root / tag / "metrics" / f"{stage}.json")
        if scaled:
            out[stage] = run_stage_scaled(stage, params, None, "r0", **paths)
        else:
            out[stage] = run_stage(stage, with_num_workers(load_params(params), 1), "r0", **paths)
        prev = paths["out"]
    return out


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_two_ray_train_workers_run_every_stage_and_write_the_same_layout(ray_local, project):
    from pdc.models.package import load_package

    root, params = project
    scaled = _chain(root, params, "two", scaled=True)
    single = _chain(root, params, "one", scaled=False)
    assert _files(root / "two") == _files(root / "one")  # same packages, checkpoints, metrics, loss CSVs
    for stage in scaled:
        assert set(scaled[stage]) == set(single[stage]) - {"history"}, stage  # history: the CSV beside it
        assert scaled[stage]["data_version"] == single[stage]["data_version"]
    assert scaled["codec"]["steps"] == 4 and scaled["diffusion"]["steps"] == 3
    model = load_package(root / "two" / "models" / "correction")
    assert model.tables is not None and model.config.correction.eps_mode == scaled["correction"]["eps_mode"]
    # the Ray Train runs live under the storage path
    assert (root / "checkpoints" / "ray" / "codec-r0").is_dir()


def test_a_killed_worker_resumes_from_the_checkpoint_under_ray_train(ray_local, project, monkeypatch):
    from pdc.scale import run_stage_scaled

    root, params = project
    doc = yaml.safe_load(params.read_text())
    doc["profiles"]["micro"]["train"]["codec"].update(steps=6, checkpoint_every=2)
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    marker = root / "died"
    monkeypatch.setenv("PDC_FAULT_INJECT", f"5:{marker}")  # rank 0's process exits at step 5, once
    m = run_stage_scaled("codec", params, None, "r0", data=root / "data" / "shards", out=root / "pkg",
                         workdir=root / "ck", metrics=root / "m.json")
    assert marker.exists(), "the fault was not injected"
    assert m["resumed_from"] == 4 and m["steps"] == 6  # Ray Train restarted the group; it resumed
    assert len(json.loads((root / "m.json").read_text())) and (root / "pkg" / "model.json").is_file()


def test_a_user_error_inside_the_workers_is_raised_as_itself(ray_local, project):
    from pdc.errors import ConfigError, DataError
    from pdc.scale import run_stage_scaled

    root, params = project
    with pytest.raises(ConfigError, match="needs --init"):
        run_stage_scaled("diffusion", params, None, "r0", data=root / "data" / "shards", out=root / "pkg")
    with pytest.raises(DataError, match="no such folder|no such file|cannot open"):
        run_stage_scaled("codec", params, None, "r0", data=root / "nowhere", out=root / "pkg")


def test_gpus_are_asked_of_the_cluster_not_of_the_driver():
    from pdc.config import ScalingConfig
    from pdc.scale import wants_gpu, worker_resources

    s = ScalingConfig(num_workers=2, gpus_per_worker=1)
    assert wants_gpu(s, {"CPU": 4.0, "GPU": 2.0}) is True  # a CPU head node in front of GPU workers
    assert wants_gpu(s, {"CPU": 64.0}) is False
    assert wants_gpu(s, {"GPU": 1.0}) is False  # not one per worker
    assert wants_gpu(ScalingConfig(use_gpu=True), {}) is True
    assert worker_resources(s, True) == {"CPU": 1.0, "GPU": 1.0}
    assert worker_resources(s, False) == {"CPU": 1.0}


def test_joining_a_cluster_ships_the_code_but_not_the_data(monkeypatch):
    from pdc.pipeline import REPO_ROOT
    from pdc.scale import runtime_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////shared/mlflow.db")
    local, cluster = runtime_env(None), runtime_env("ray://head:10001")
    assert "working_dir" not in local
    assert cluster["working_dir"] == str(REPO_ROOT)
    assert {"data", "checkpoints", "models", ".venv"} <= set(cluster["excludes"])
    assert cluster["env_vars"]["MLFLOW_TRACKING_URI"] == "sqlite:////shared/mlflow.db"


def test_the_cli_runs_a_stage_on_ray_train_with_workers(ray_local, project):
    from typer.testing import CliRunner

    from pdc.cli import app

    root, params = project
    res = CliRunner().invoke(app, ["train", "codec", "-r", "r0", "--params", str(params), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert (root / "models" / "stages" / "r0" / "codec" / "model.json").is_file()
    bad = CliRunner().invoke(app, ["train", "codec", "-r", "r0", "--params", str(params), "--workers", "3"])
    assert bad.exit_code != 0 and "does not split into scaling.num_workers=3" in str(bad.exception)


def _gpu_params(device: str = "cuda", **scaling):
    from pdc.config import Params

    return Params.model_validate({"profile": "gpu", "rate_points": {"r0": 0.01},
                                  "profiles": {"gpu": {"device": device, "scaling": {"num_workers": 2, **scaling}}}})


def test_a_cuda_profile_on_a_cluster_without_gpus_stops_with_one_line():
    from pdc.errors import ConfigError
    from pdc.scale import plan_gpus

    with pytest.raises(ConfigError) as err:
        plan_gpus(_gpu_params(), {"CPU": 64.0})
    line = str(err.value)
    assert "\n" not in line and "profile 'gpu' says device: cuda" in line
    assert "num_workers=2 × gpus_per_worker=1 = 2 GPU(s)" in line and "the Ray cluster has 0 GPU(s)" in line
    with pytest.raises(ConfigError, match="cluster has 1 GPU"):
        plan_gpus(_gpu_params(), {"GPU": 1.0})  # one short
    with pytest.raises(ConfigError, match="use_gpu: false"):
        plan_gpus(_gpu_params(use_gpu=False), {"GPU": 8.0})
    with pytest.raises(ConfigError, match="says device: cpu"):
        plan_gpus(_gpu_params("cpu", use_gpu=True), {"GPU": 8.0})
    assert plan_gpus(_gpu_params(), {"GPU": 2.0}) is True
    assert plan_gpus(_gpu_params(use_gpu=True), {}) is True  # asked explicitly: Ray waits for the nodes
    assert plan_gpus(_gpu_params("auto"), {"CPU": 64.0}) is False  # "auto" may train on the CPU
    assert plan_gpus(_gpu_params("cpu"), {"GPU": 8.0}) is False


def test_fractional_gpus_that_would_share_a_gpu_between_ranks_are_refused():
    from pdc.errors import ConfigError
    from pdc.scale import plan_gpus

    with pytest.raises(ConfigError, match="two ranks on one GPU"):
        plan_gpus(_gpu_params(gpus_per_worker=0.5), {"GPU": 1.0})
    with pytest.raises(ConfigError, match="two ranks on one GPU"):
        plan_gpus(_gpu_params(gpus_per_worker=1.5), {"GPU": 4.0})
    assert plan_gpus(_gpu_params(num_workers=1, gpus_per_worker=0.5), {"GPU": 1.0}) is True  # one rank


def test_a_cuda_worker_never_falls_back_to_the_cpu():
    from pdc.errors import ConfigError
    from pdc.scale import worker_device

    assert worker_device(_gpu_params(), True, "cuda:1") == "cuda:1"
    assert worker_device(_gpu_params("auto"), False, "cuda:0") == "cpu"
    with pytest.raises(ConfigError, match="says device: cuda, but this Ray Train worker got cpu"):
        worker_device(_gpu_params(), True, "cpu")  # granted a GPU resource, but torch sees no CUDA


def test_run_stage_scaled_refuses_before_building_the_trainer(project, monkeypatch):
    """The driver checks the cluster's GPUs (monkeypatched: no Ray is started) before any worker runs."""
    import ray
    import ray.train.torch

    import pdc.scale
    from pdc.errors import ConfigError

    root, params = project
    doc = yaml.safe_load(params.read_text())
    doc["profiles"]["micro"]["device"] = "cuda"
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setattr(pdc.scale, "ensure_ray", lambda: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", lambda *a, **k: pytest.fail("a trainer was built"))
    with pytest.raises(ConfigError, match="profile 'micro' says device: cuda.*the Ray cluster has 0 GPU"):
        pdc.scale.run_stage_scaled("codec", params, None, "r0", data=root / "data" / "shards", out=root / "pkg")


def test_a_rerun_without_the_workdir_resumes_from_ray_trains_storage(ray_local, project):
    """Every checkpoint is reported to Ray Train (storage_path): a rerun of the stage on a node that lacks the
    first run's workdir (deleted here) continues from the reported checkpoint instead of starting over."""
    import shutil

    from pdc.scale import run_stage_scaled

    root, params = project
    doc = yaml.safe_load(params.read_text())
    doc["profiles"]["micro"]["train"]["codec"].update(steps=4, checkpoint_every=2)
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    paths = dict(data=root / "data" / "shards", out=root / "pkg", workdir=root / "ck", metrics=root / "m.json")
    assert run_stage_scaled("codec", params, None, "r0", **paths)["resumed_from"] == 0
    assert list((root / "checkpoints" / "ray" / "codec-r0").glob("checkpoint_*/codec.ckpt.pt"))
    shutil.rmtree(root / "ck")
    doc["profiles"]["micro"]["train"]["codec"]["steps"] = 6  # not part of the run's identity: it continues
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    m = run_stage_scaled("codec", params, None, "r0", **paths)
    assert m["resumed_from"] == 4 and m["steps"] == 6


def test_ray_trains_storage_may_be_a_url_or_a_folder(tmp_path, monkeypatch):
    from pdc.scale import storage_location

    assert storage_location("s3://bucket/pdc-runs") == "s3://bucket/pdc-runs"  # handed to pyarrow's filesystems
    monkeypatch.chdir(tmp_path)
    assert storage_location(None) == str(tmp_path / "checkpoints" / "ray") and (tmp_path / "checkpoints" / "ray").is_dir()
    assert storage_location("runs/ray") == str(tmp_path / "runs" / "ray")


def test_one_rule_says_where_a_stage_trains(monkeypatch):
    """pdc.scale.runs_on_ray, for the CLI, DVC and the Prefect flow: Ray Train for several workers, a named
    cluster, or stages run concurrently in one process; the calling process otherwise."""
    from pdc.config import load_params
    from pdc.scale import runs_on_ray, with_num_workers

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from pdc.pipeline import REPO_ROOT

    one = with_num_workers(load_params(REPO_ROOT / "params.yaml"), 1)
    assert not runs_on_ray(one)
    assert runs_on_ray(with_num_workers(one, 2))
    assert runs_on_ray(one, concurrent=True)  # the Prefect flow's chains
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert runs_on_ray(one)  # a named cluster is where training was asked to happen
