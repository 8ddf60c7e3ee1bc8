"""``.dvcignore`` keeps Python bytecode out of the stages' code deps (issue 20): with bytecode writing on,
the first stage that imports ``pdc`` writes ``pdc/__pycache__``, and without the ignore lines ``dvc status``
would then list every stage depending on ``pdc/...`` as changed."""

from __future__ import annotations

from pathlib import Path

import pytest

dvc_repo = pytest.importorskip("dvc.repo", reason="DVC (the `pipeline` extra) is not installed")

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path, dvcignore: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC project (no git) with one stage whose code dep is a ``pdc`` folder, reproduced once."""
    monkeypatch.chdir(tmp_path)  # DVC resolves stage targets from the working directory
    dvc_repo.Repo.init(str(tmp_path), no_scm=True)
    (tmp_path / ".dvcignore").write_text(dvcignore)
    (tmp_path / "pdc").mkdir()
    (tmp_path / "pdc" / "stage.py").write_text("print('ok')\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: python -c pass\n    deps: [pdc]\n")
    dvc_repo.Repo(str(tmp_path)).reproduce()
    return tmp_path


def _add_bytecode(root: Path) -> None:
    (root / "pdc" / "__pycache__").mkdir()
    (root / "pdc" / "__pycache__" / "stage.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (root / "pdc" / "legacy.pyc").write_bytes(b"\x00bytecode")


def test_dvcignore_ignores_bytecode_so_status_stays_clean(tmp_path, monkeypatch):
    root = _project(tmp_path, (ROOT / ".dvcignore").read_text(), monkeypatch)
    _add_bytecode(root)
    repo = dvc_repo.Repo(str(root))
    assert repo.dvcignore.is_ignored_dir(str(root / "pdc" / "__pycache__"))
    assert repo.dvcignore.is_ignored_file(str(root / "pdc" / "legacy.pyc"))
    assert not repo.dvcignore.is_ignored_file(str(root / "pdc" / "stage.py"))
    assert repo.status() == {}


def test_without_the_ignore_lines_bytecode_changes_the_code_dep(tmp_path, monkeypatch):
    """The control: the same project with an empty .dvcignore reports the stage as changed."""
    root = _project(tmp_path, "", monkeypatch)
    _add_bytecode(root)
    assert "s" in dvc_repo.Repo(str(root)).status()
