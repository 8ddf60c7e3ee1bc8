"""The e2e-lpips control's training side: `pdc train privileged --loss diffusion` trains D_e with the
diffusion's weights, the package records it (and the correction stage carries the record on), and the
package set it makes is accepted by `pdc evaluate --e2e-lpips` beside the MSE one (same codec)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline_fixtures import init_corpus, write_micro_params


def _photo_folder(root: Path) -> Path:
    from skimage import data

    from pdc.imageio import encode_png

    root.mkdir()
    (root / "a.png").write_bytes(encode_png(np.ascontiguousarray(data.astronaut()[100:180, 150:222])))
    return root


def test_train_privileged_loss_option_trains_records_and_evaluates_as_e2e_lpips(tmp_path):
    from typer.testing import CliRunner

    from pdc.cli import app
    from pdc.config import load_params
    from pdc.errors import PdcError
    from pdc.rd import evaluate_model_set
    from pdc.stages import run_stage

    data = init_corpus(tmp_path) / "default"
    params = write_micro_params(tmp_path, diffusion={"mse_weight": 0.1, "lpips_weight": 0.9, "lpips_crop": 48})
    p = load_params(params)
    assert p.active.train.privileged.loss == "mse"  # the default: params.yaml need not say it
    run_stage("codec", p, "r0", data=data, out=tmp_path / "codec", workdir=tmp_path / "ckc")
    run_stage("diffusion", p, "r0", data=data, out=tmp_path / "dif", init=tmp_path / "codec",
              workdir=tmp_path / "ckd")

    def train(name: str, *loss: str) -> dict:
        res = CliRunner().invoke(app, ["train", "privileged", "-r", "r0", "--params", str(params), "--data", str(data),
                                       "--init", str(tmp_path / "dif"), "--out", str(tmp_path / name), "--workdir",
                                       str(tmp_path / f"ck-{name}"), "--metrics", str(tmp_path / f"{name}.json"),
                                       "--no-track", *loss], env={"PDC_NO_PROGRESS": "1"})
        assert res.exit_code == 0, (res.output, res.exception)
        return json.loads((tmp_path / name / "model.json").read_text())

    assert train("mse")["privileged_loss"] == {"loss": "mse"}
    meta = train("lpips", "--loss", "diffusion")
    assert meta["privileged_loss"] == {"loss": "diffusion", "mse_weight": 0.1, "lpips_weight": 0.9,
                                       "lpips_net": "vgg", "lpips_crop": 48}
    assert "lpips" in json.loads((tmp_path / "lpips.json").read_text())
    assert "lpips" not in json.loads((tmp_path / "mse.json").read_text())

    run_stage("correction", p, "r0", data=data, out=tmp_path / "fit", init=tmp_path / "lpips")
    assert json.loads((tmp_path / "fit" / "model.json").read_text())["privileged_loss"] == meta["privileged_loss"]

    bad = CliRunner().invoke(app, ["train", "privileged", "-r", "r0", "--params", str(params), "--loss", "lpips"])
    assert bad.exit_code == 2 and "'lpips' is not one of" in bad.output
    env = {"COLUMNS": "200"}
    assert "e2e-lpips control" in CliRunner().invoke(app, ["train", "privileged", "--help"], env=env).output
    assert "--loss" not in CliRunner().invoke(app, ["train", "codec", "--help"], env=env).output

    # Both D_e were trained on the one codec stage's weights: the evaluation takes the LPIPS one as e2e-lpips,
    # and refuses the MSE one (its record says so).
    images = _photo_folder(tmp_path / "imgs")
    kw = dict(limit=1, crop=64, gammas=(), progress=False, with_lpips=False, classic=[], systems=("e2e",), decode=False)
    summary = evaluate_model_set(tmp_path / "mse", images, tmp_path / "ev", e2e_lpips=tmp_path / "lpips", **kw)
    assert set(summary["systems"]) == {"e2e", "e2e-lpips"}
    assert summary["e2e_lpips"]["rate_points"][0]["privileged_loss"]["loss"] == "diffusion"
    with pytest.raises(PdcError, match="trained with loss 'mse'"):
        evaluate_model_set(tmp_path / "lpips", images, tmp_path / "ev2", e2e_lpips=tmp_path / "mse", **kw)
