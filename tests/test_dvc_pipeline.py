"""The DVC pipeline for real (slow lane): a micro profile through `dvc repro` in a copy of the repo.

Checks the promises of the generated dvc.yaml: a second repro is a no-op, a sampling knob re-runs the
correction stage only, an edit to a stage's code makes `dvc status` list that stage, and new data
retrains every stage from step 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PDC_NO_PROGRESS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    from tests.pipeline_fixtures import write_micro_pipeline_params

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    write_micro_pipeline_params(tmp_path, ROOT / "params.yaml")
    _run(["git", "init", "-q"], tmp_path)
    _run(["pdc", "data", "init"], tmp_path)
    return tmp_path


def test_repro_is_honest_about_code_and_data(repo: Path):
    _run(["dvc", "repro"], repo)
    assert "up to date" in _run(["dvc", "repro"], repo)

    # a sampling knob is the correction stage's: the networks stay, λ is re-fitted
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profiles"]["micro"]["model"]["diffusion"]["t_min"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run(["dvc", "status"], repo)
    assert "correction@r0:" in status and "correction@r1:" in status
    assert not any(f"{s}@r{r}:" in status for s in ("codec", "diffusion", "privileged") for r in (0, 1)), status
    _run(["dvc", "repro"], repo)

    code = repo / "pdc" / "models" / "privileged.py"
    code.write_text(code.read_text() + "\n# an edit\n")
    status = _run(["dvc", "status"], repo)
    for stage in ("privileged@r0", "correction@r1", "evaluate"):
        assert f"{stage}:" in status
    assert "codec@r0:" not in status and "diffusion@r1:" not in status, status  # stages stand alone
    _run(["dvc", "repro"], repo)

    from PIL import Image

    img = Image.open(repo / "data/raw/default/chelsea.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img.save(repo / "data/raw/default/chelsea_flipped.png")
    _run(["dvc", "repro"], repo)
    for f in (repo / "metrics").glob("r*/*.json"):
        m = json.loads(f.read_text())
        if "resumed_from" in m:
            assert m["resumed_from"] == 0, f
