"""Packaging: the codec installs without the orchestration stack, pyproject states ranges and
constraints.txt is the lock, and `flows` is no installed top-level package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATION = {"dvc", "prefect", "mlflow", "ray"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def test_core_dependencies_exclude_the_orchestration_stack():
    project = _project()
    assert not _names(project["dependencies"]) & ORCHESTRATION
    assert _names(project["optional-dependencies"]["pipeline"]) >= ORCHESTRATION
    torch = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    assert any(s.operator == ">=" for s in torch.specifier), "pyproject states the torch floor"


def test_pyproject_states_ranges_and_constraints_pin_every_one():
    project = _project()
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    lock = _lock()
    for line in reqs:
        req = Requirement(line)
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"pyproject pins {line!r}: state a range"
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(lock[name], prereleases=True), \
            f"constraints.txt {name}=={lock[name]} is outside {line!r}"


def test_make_install_still_installs_everything():
    makefile = (REPO / "Makefile").read_text()
    assert '-c constraints.txt -e ".[pipeline,dev]"' in makefile


def test_flows_is_not_an_installed_top_level_package(tmp_path):
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert all(p == "pdc" or p.startswith("pdc.") for p in find["include"])
    from pdc.distribution import build_wheel

    with zipfile.ZipFile(build_wheel(tmp_path)) as whl:
        tops = {n.split("/", 1)[0] for n in whl.namelist()}
    assert tops == {"pdc", "pdc-0.1.0.dist-info"}


def test_an_installed_pdc_packs_again_into_an_equivalent_wheel(tmp_path):
    """Logging a model from a non-editable install: the installed files become the wheel."""
    from pdc.distribution import build_wheel

    built = build_wheel(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
                    "--target", str(tmp_path / "site"), str(built)], check=True, capture_output=True)
    code = ("import sys, pdc.distribution as d; assert d.source_root() is None, d.__file__; "
            "print(d.build_wheel(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "again")], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""})
    again = Path(out.stdout.strip())
    with zipfile.ZipFile(built) as a, zipfile.ZipFile(again) as b:
        files = {n for n in a.namelist() if not n.endswith(("RECORD", "WHEEL"))}
        assert files <= set(b.namelist()) and not any(n.startswith("flows/") for n in b.namelist())
        assert a.read("pdc-0.1.0.dist-info/METADATA") == b.read("pdc-0.1.0.dist-info/METADATA")
    # pip takes the repacked wheel (its RECORD hashes hold)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
                    "--target", str(tmp_path / "site2"), str(again)], check=True, capture_output=True)
    assert (tmp_path / "site2" / "pdc" / "codec.py").is_file()


def test_the_codec_core_imports_no_orchestrator():
    code = ("import sys, pdc, pdc.codec, pdc.bitstream, pdc.metrics, pdc.models.package, pdc.imageio, pdc.cli.main\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(ORCHESTRATION)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
