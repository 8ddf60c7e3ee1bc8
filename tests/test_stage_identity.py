"""Stages stand alone: a stage's DVC identity covers what it trains and reads, nothing trained after it.

A real ``dvc status`` in a copy of the repository (stub outputs committed with ``dvc commit``, so no
training runs): editing the privileged decoder's code or the diffusion's architecture must not list the
codec (nor, for the privileged edit, the diffusion) as changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _dvc(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo copy whose every stage is recorded in dvc.lock as up to date (stub outputs)."""
    from tests.pipeline_fixtures import write_micro_pipeline_params

    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    # the working tree's stage definitions and code (this change), not only what is committed
    for rel in ("dvc.yaml", "pdc", "flows"):
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, repo / rel, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, repo / rel)
    write_micro_pipeline_params(repo, ROOT / "params.yaml")
    (repo / "data.dvc").unlink()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "data/raw/default").mkdir(parents=True)
    (repo / "data/raw/default/a.png").write_bytes(b"stub")
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        for stage in dvc_repo.index.stages:
            for out in stage.outs:
                path = Path(out.fs_path)
                if path.suffix in (".json", ".csv", ".png"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("stub\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "stub").write_text("stub\n")
    _dvc(["commit", "-f", "-q"], repo)
    assert "up to date" in _dvc(["status"], repo).lower()
    return repo


def _status_after(repo: Path, edit) -> str:
    backup = {p: p.read_bytes() for p in (repo / "params.yaml", repo / "pdc/models/privileged.py")}
    try:
        edit(repo)
        return _dvc(["status"], repo)
    finally:
        for p, data in backup.items():
            p.write_bytes(data)


def test_privileged_code_edit_leaves_codec_and_diffusion(committed: Path):
    def edit(repo: Path) -> None:
        f = repo / "pdc/models/privileged.py"
        f.write_text(f.read_text() + "\n# an edit\n")

    status = _status_after(committed, edit)
    assert "privileged@r0:" in status and "privileged@r1:" in status, status
    assert not any(f"{s}@r{r}:" in status for s in ("codec", "diffusion") for r in (0, 1)), status


def test_diffusion_architecture_edit_leaves_codec(committed: Path):
    def edit(repo: Path) -> None:
        doc = yaml.safe_load((repo / "params.yaml").read_text())
        doc["profiles"]["micro"]["model"]["diffusion"]["block_channels"][-1] += 8
        (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    status = _status_after(committed, edit)
    assert "diffusion@r0:" in status and "diffusion@r1:" in status, status
    assert not any(f"codec@r{r}:" in status for r in (0, 1)), status


def test_codec_edit_reaches_every_stage(committed: Path):
    """The control: the codec's own code is a dependency of every stage after it."""
    def edit(repo: Path) -> None:
        f = repo / "pdc/models/codec.py"
        f.write_text(f.read_text() + "\n# an edit\n")

    backup = (committed / "pdc/models/codec.py").read_bytes()
    try:
        status = _status_after(committed, edit)
    finally:
        (committed / "pdc/models/codec.py").write_bytes(backup)
    for s in ("codec", "diffusion", "privileged", "correction"):
        assert f"{s}@r0:" in status, status
