"""Stages on files: a killed training stage resumes from its checkpoint, not from step zero."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.pipeline_fixtures import init_corpus, write_micro_params


def _pdc(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PDC_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pdc", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_codec_stage_resumes_from_checkpoint(tmp_path):
    params = write_micro_params(tmp_path, codec={"steps": 60, "checkpoint_every": 3})
    data = init_corpus(tmp_path)
    args = ("train", "codec", "-r", "r0", "--data", str(data / "default"), "--out", "pkg",
            "--workdir", "ck", "--metrics", "m.json", "--params", str(params))
    ckpt = tmp_path / "ck" / "codec.ckpt.pt"
    proc = _pdc(*args, cwd=tmp_path)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 3 <= killed_at < 60, "the run finished before it could be killed"
    assert not (tmp_path / "pkg").exists()  # no half-written package

    done = _pdc(*args, cwd=tmp_path)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["resumed_from"] >= killed_at and m["steps"] == 60
    from pdc.stages import read_loss_history

    assert len(read_loss_history(tmp_path / "m.json")) == 60  # the history before the kill was kept


def test_changed_config_does_not_resume(tmp_path):
    from pdc.config import load_params
    from pdc.stages import run_stage

    data = init_corpus(tmp_path) / "default"
    params = load_params(write_micro_params(tmp_path))
    kw = dict(data=data, out=tmp_path / "pkg", workdir=tmp_path / "ck")
    assert run_stage("codec", params, "r0", **kw)["resumed_from"] == 0
    assert run_stage("codec", params, "r0", **kw)["resumed_from"] == 4  # same run: nothing left to do
    other = load_params(write_micro_params(tmp_path, codec={"lr": 0.01}))
    assert run_stage("codec", other, "r0", **kw)["resumed_from"] == 0


def test_unknown_rate_point_is_refused(tmp_path):
    from pdc.config import load_params
    from pdc.errors import ConfigError
    from pdc.stages import run_stage

    with pytest.raises(ConfigError, match="unknown rate point 'r9'"):
        run_stage("codec", load_params(write_micro_params(tmp_path)), "r9", data=tmp_path, out=tmp_path / "x")


def test_loss_curves_plot_one_panel_per_stage(tmp_path):
    from pdc.stages import plot_loss_curves, write_metrics

    files = []
    for r in ("r0", "r1"):
        for stage in ("codec", "diffusion"):
            f = tmp_path / r / f"{stage}.json"
            f.parent.mkdir(exist_ok=True)
            write_metrics(f, {"stage": stage, "history": [1.0 / (i + 1) for i in range(120)]})
            files.append(f)
    out = plot_loss_curves(files, tmp_path / "curves.png")
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 2 * im.height  # two panels side by side


def test_raised_steps_continue_from_the_checkpoint(tmp_path):
    from pdc.config import load_params
    from pdc.stages import read_loss_history, run_stage

    data = init_corpus(tmp_path) / "default"
    kw = dict(data=data, out=tmp_path / "pkg", workdir=tmp_path / "ck", metrics=tmp_path / "m.json")
    assert run_stage("codec", load_params(write_micro_params(tmp_path)), "r0", **kw)["resumed_from"] == 0
    longer = load_params(write_micro_params(tmp_path, codec={"steps": 6}))
    res = run_stage("codec", longer, "r0", **kw)
    assert res["resumed_from"] == 4 and res["steps"] == 6
    assert len(read_loss_history(tmp_path / "m.json")) == 6


def test_new_data_trains_from_scratch(tmp_path):
    import shutil

    from pdc.config import load_params
    from pdc.stages import run_stage

    data = init_corpus(tmp_path) / "default"
    params = load_params(write_micro_params(tmp_path))
    kw = dict(data=data, out=tmp_path / "pkg", workdir=tmp_path / "ck")
    first = run_stage("codec", params, "r0", **kw)
    extra = sorted(data.glob("*.png"))[0]
    shutil.copy(extra, data / "imported_copy.png")  # `pdc data import` of one more image
    second = run_stage("codec", params, "r0", **kw)
    assert second["resumed_from"] == 0 and second["data_version"] != first["data_version"]


def test_changed_training_code_trains_from_scratch(tmp_path, monkeypatch):
    from pdc import pipeline
    from pdc.config import load_params
    from pdc.stages import run_stage

    data = init_corpus(tmp_path) / "default"
    params = load_params(write_micro_params(tmp_path))
    kw = dict(data=data, out=tmp_path / "pkg", workdir=tmp_path / "ck")
    assert run_stage("codec", params, "r0", **kw)["resumed_from"] == 0
    monkeypatch.setattr(pipeline, "code_version", lambda stage, root=None: "edited")
    assert run_stage("codec", params, "r0", **kw)["resumed_from"] == 0


def test_a_rate_point_is_one_typed_thing_from_params_to_evaluation(tmp_path):
    from pdc.config import RatePoint, load_params
    from pdc.models.package import read_metadata, write_model_set
    from pdc.stages import run_stage

    data = init_corpus(tmp_path) / "default"
    params = load_params(write_micro_params(tmp_path))
    run_stage("codec", params, "r1", data=data, out=tmp_path / "pkg")
    meta = read_metadata(tmp_path / "pkg")
    assert RatePoint.from_meta(meta["rate_point"]) == params.rate_point("r1") == RatePoint("r1", 0.01)
    index = write_model_set(tmp_path / "set", [tmp_path / "pkg"])
    assert index["packages"][0]["name"] == "r1" and index["packages"][0]["rate_point"]["lambda_rd"] == 0.01


def test_correction_stage_applies_the_profiles_decode_settings(tmp_path):
    """The correction knobs and the diffusion's sampling knobs belong to the correction stage (DVC lists
    them there): changing them in params.yaml needs a new fit only, and the fitted package carries them,
    not the codec stage's copy."""
    import yaml

    from pdc.config import load_params
    from pdc.models.package import load_package, save_package
    from pdc.stages import run_stage

    data = init_corpus(tmp_path) / "default"
    path = write_micro_params(tmp_path)
    run_stage("codec", load_params(path), "r0", data=data, out=tmp_path / "codec", workdir=tmp_path / "ck")
    doc = yaml.safe_load(path.read_text())
    doc["profiles"]["micro"]["model"]["correction"] = {"levels": 4, "lowpass_sigma": 1.5}
    steps = doc["profiles"]["micro"]["model"]["diffusion"].get("steps", 6)
    doc["profiles"]["micro"]["model"]["diffusion"].update(steps=steps + 1, t_min=7)
    path.write_text(yaml.safe_dump(doc))
    full = load_package(tmp_path / "codec")
    full.mark_trained("diffusion")  # the fresh decoders stand in for trained ones: only the fit is tested here
    full.mark_trained("privileged")
    save_package(full, tmp_path / "full")
    run_stage("correction", load_params(path), "r0", data=data, out=tmp_path / "fit", init=tmp_path / "full")
    fitted, trained = load_package(tmp_path / "fit"), load_package(tmp_path / "codec")
    assert fitted.config.correction.lowpass_sigma == 1.5 and fitted.config.correction.levels == 4
    assert (fitted.config.diffusion.steps, fitted.config.diffusion.t_min) == (steps + 1, 7)
    assert tuple(fitted.tables.shape) == (steps + 1, 4)
    assert trained.config.correction.lowpass_sigma == 0.0 and trained.config.diffusion.steps == steps


def test_each_stage_builds_its_own_network_from_the_profile(tmp_path):
    """The codec stage's package holds the codec alone; the diffusion stage builds the profile's UNet (here
    one the codec stage never saw) and keeps the codec bit for bit; the correction stage refuses a package
    without trained decoders; a codec warm start records the package it started from."""
    import json

    import yaml

    from pdc.config import load_params
    from pdc.errors import ConfigError
    from pdc.models.package import load_package, state_digest
    from pdc.stages import run_stage

    data = init_corpus(tmp_path) / "default"
    path = write_micro_params(tmp_path)
    run_stage("codec", load_params(path), "r0", data=data, out=tmp_path / "codec", workdir=tmp_path / "ck")
    meta = json.loads((tmp_path / "codec" / "model.json").read_text())
    assert meta["parts"] == ["codec"]
    codec = load_package(tmp_path / "codec")
    assert codec.trained == ("codec",)

    doc = yaml.safe_load(path.read_text())
    channels = [c + 8 for c in doc["profiles"]["micro"]["model"]["diffusion"]["block_channels"]]
    doc["profiles"]["micro"]["model"]["diffusion"]["block_channels"] = channels
    path.write_text(yaml.safe_dump(doc))
    run_stage("diffusion", load_params(path), "r0", data=data, out=tmp_path / "dif", init=tmp_path / "codec",
              workdir=tmp_path / "ckd")
    dif = load_package(tmp_path / "dif")
    assert dif.trained == ("codec", "diffusion")
    assert list(dif.config.diffusion.block_channels) == channels
    assert state_digest(dif.codec.state_dict()) == state_digest(codec.codec.state_dict())

    with pytest.raises(ConfigError, match="no trained privileged"):
        run_stage("correction", load_params(path), "r0", data=data, out=tmp_path / "fit", init=tmp_path / "dif")

    run_stage("codec", load_params(path), "r1", data=data, out=tmp_path / "warm", workdir=tmp_path / "ckw",
              init=tmp_path / "codec")
    warm = json.loads((tmp_path / "warm" / "model.json").read_text())
    assert warm["warm_start"]["hash"] == meta["hash"]


def test_decoders_warm_start_from_the_shipped_package_where_it_holds_them(tmp_path, monkeypatch, capsys):
    """``decoders_init: shipped``: the diffusion and privileged stages start from the shipped package's
    networks of their rate point (trained weights end near those, not near a fresh start — D_e's refiner,
    its g_s copy always starts from this codec's; the start is
    recorded in the package and the run identity); a rate point with no shipped package trains from scratch."""
    import yaml

    import pdc.zoo as zoo
    from pdc.config import load_params
    from pdc.models.package import init_model, load_package, read_metadata, save_package
    from pdc.stages import run_stage

    data = init_corpus(tmp_path) / "default"
    path = write_micro_params(tmp_path)
    run_stage("codec", load_params(path), "r0", data=data, out=tmp_path / "codec", workdir=tmp_path / "ck")
    shipped = init_model(load_package(tmp_path / "codec").config, seed=123)  # decoders unlike any fresh start
    shipped.codec = load_package(tmp_path / "codec").codec
    save_package(shipped, tmp_path / "zoo" / "r0", extra={"rate_point": {"name": "r0", "lambda_rd": 0.002}})
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "zoo")

    def dist(a, b) -> float:  # D_e's copy of g_s is left out: training always starts it from this codec's
        sa, sb = a.state_dict(), b.state_dict()
        return sum(float((sa[k] - sb[k]).norm()) for k in sa if sa[k].is_floating_point() and not k.startswith("g_s."))

    out = {}
    for init in ("scratch", "shipped"):
        doc = yaml.safe_load(path.read_text())
        doc["profiles"]["micro"]["train"]["decoders_init"] = init
        path.write_text(yaml.safe_dump(doc))
        run_stage("diffusion", load_params(path), "r0", data=data, out=tmp_path / init / "dif",
                  init=tmp_path / "codec", workdir=tmp_path / init / "ckd")
        run_stage("privileged", load_params(path), "r0", data=data, out=tmp_path / init / "priv",
                  init=tmp_path / init / "dif", workdir=tmp_path / init / "ckp")
        out[init] = load_package(tmp_path / init / "priv")
    for part in ("diffusion", "privileged"):
        warm, cold = getattr(out["shipped"], part), getattr(out["scratch"], part)
        assert dist(warm, getattr(shipped, part)) < 0.2 * dist(cold, getattr(shipped, part)), part
    meta = read_metadata(tmp_path / "shipped" / "priv")
    assert meta["warm_start"] == {"package": str(tmp_path / "zoo" / "r0"), "hash": shipped.content_hash()}
    assert "warm_start" not in read_metadata(tmp_path / "scratch" / "priv")

    capsys.readouterr()
    run_stage("codec", load_params(path), "r1", data=data, out=tmp_path / "codec1", workdir=tmp_path / "ck1")
    run_stage("diffusion", load_params(path), "r1", data=data, out=tmp_path / "dif1", init=tmp_path / "codec1",
              workdir=tmp_path / "ckd1")
    assert "no shipped package for rate point r1: training its diffusion from scratch" in capsys.readouterr().err
    assert "warm_start" not in read_metadata(tmp_path / "dif1")


@pytest.mark.parametrize(("device", "pinned"), [("cpu", False), ("cuda", True), ("cuda:1", True),
                                                (torch.device("cuda", 0), True), (torch.device("cpu"), False)])
def test_training_batches_are_pinned_for_a_cuda_device_only(device, pinned, monkeypatch):
    """run_stage's loader: pin_memory (for the loop's non_blocking copies) exactly when training runs on CUDA."""
    import pdc.data.loader as L
    from pdc.config import StageTrainConfig
    from pdc.distributed import SINGLE
    from pdc.stages import _batches

    calls = []
    monkeypatch.setattr(L, "make_loader", lambda *a, **kw: calls.append(kw) or iter(()))
    _batches("data", StageTrainConfig(), SINGLE, 0, device)
    assert calls[0]["pin_memory"] is pinned
