"""`dvc exp run -S KEY=VALUE` must take, and change that key alone (issue 20 item 1).

DVC applies ``-S`` with ``dvc.utils.hydra.apply_overrides`` (OmegaConf over a round-trip YAML load). A
key shared through a YAML anchor/alias is reachable by two paths: the override is dropped or lands in
several profiles. These tests run DVC's own function on every leaf of params.yaml.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from pdc.config import Params, load_params
from pdc.errors import ConfigError

hydra_utils = pytest.importorskip("dvc.utils.hydra", reason="DVC (the `pipeline` extra) is not installed")
ruamel_yaml = pytest.importorskip("ruamel.yaml")

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

#: Leaves where no generic change is a valid value (nulls, formatted strings): an explicit valid one.
EXPLICIT: dict[str, Any] = {
    "profile": "small",
    "pipeline.retrain_cron": "0 4 * * 2",
    "pipeline.evaluate.limit": 5,
    "pipeline.evaluate.fid_images": "data/test/fid",
    "pipeline.evaluate.gammas": "0.25,1.0",
    "storage_path": "/tmp/ray",  # profiles.<name>.scaling.storage_path
}


def _choices(path: tuple[str, ...]) -> list[Any]:
    """The values the schema allows at ``path`` when it is a Literal or bool (else [])."""
    model: type[BaseModel] = Params
    ann: Any = None
    i = 0
    while i < len(path):
        ann = model.model_fields[path[i]].annotation
        i += 1
        if get_origin(ann) is dict:  # profiles: {name: Profile}, rate_points: {name: float}
            ann, i = get_args(ann)[1], i + 1
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    options: list[Any] = []
    for a in get_args(ann) if get_origin(ann) in (Union, UnionType) else (ann,):
        options += list(get_args(a)) if get_origin(a) is Literal else [True, False] if a is bool else []
    return options


def leaves(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, value) of every leaf of a loaded YAML document; a list counts as one leaf."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in leaves(v, (*prefix, str(k)))]
    return [(prefix, node)]


def _set(doc: dict, path: tuple[str, ...], value: Any) -> dict:
    out = copy.deepcopy(doc)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def _candidates(path: tuple[str, ...], value: Any) -> list[Any]:
    """Changed values of the leaf's type, most natural first (the schema then picks a valid one)."""
    dotted, name = ".".join(path), path[-1]
    if dotted in EXPLICIT:
        return [EXPLICIT[dotted]]
    if name in EXPLICIT:
        return [EXPLICIT[name]]
    if choices := _choices(path):
        return [v for v in choices if v != value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2, value // 2]
    if isinstance(value, float):
        return [value * 0.5, value * 1.5, value + 0.1, value - 0.1] if value else [0.5, 0.1]
    if isinstance(value, str):  # names and paths
        return [f"{value}-2"]
    if isinstance(value, list):
        return [[v + 1 for v in value], [v - 1 for v in value], value[:-1], [*value, value[-1] + 1]]
    raise AssertionError(f"{dotted}: no generic change for {value!r}; add one to EXPLICIT")


def _valid(doc: dict) -> bool:
    try:
        params = Params.model_validate(doc)
    except ValidationError:
        return False
    return params.profile in params.profiles


def _hydra(value: Any) -> str:
    """A value in Hydra's override grammar (what a user types after ``-S key=``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, str):
        return "'" + value + "'"
    if isinstance(value, str):  # names and paths
        return [f"{value}-2"]
    if isinstance(value, list):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    return repr(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


def _load_as_dvc(path: Path) -> Any:
    """The document as DVC reads it (YAML 1.2: ruamel writes ``lr: 5e-05``, which PyYAML reads as a string)."""
    return ruamel_yaml.YAML(typ="safe", pure=True).load(path.read_text())


def check_every_leaf(params_path: Path, section: str, tmp_path: Path) -> None:
    """Apply DVC's override function to each leaf under ``section`` ("" = outside ``profiles``)."""
    raw = _load_as_dvc(params_path)
    base = load_params(params_path).model_dump(mode="json")
    todo = [(p, v) for p, v in leaves(raw) if (".".join(p).startswith(section + ".") if section
                                                else p[0] != "profiles")]
    assert todo, f"no leaves under {section!r}"
    failures = []
    for path, old in todo:
        dotted = ".".join(path)
        new = next((c for c in _candidates(path, old) if _valid(_set(raw, path, c))), None)
        assert new is not None, f"{dotted}: no candidate value passes the schema; add one to EXPLICIT"
        work = tmp_path / "params.yaml"
        shutil.copyfile(params_path, work)
        hydra_utils.apply_overrides(work, [f"{dotted}={_hydra(new)}"])
        got_raw = _load_as_dvc(work)
        if got_raw != _set(raw, path, new):
            failures.append(f"{dotted}={_hydra(new)}: the file changed elsewhere or not at all")
            continue
        got = load_params(work).model_dump(mode="json")
        want = copy.deepcopy(base)
        node_g, node_w = got, want
        for k in path[:-1]:
            node_g, node_w = node_g[k], node_w[k]
        if not _same(node_g[path[-1]], new):
            failures.append(f"{dotted}: loaded {node_g[path[-1]]!r}, wanted {new!r}")
        node_w[path[-1]] = node_g[path[-1]]
        if got != want:
            failures.append(f"{dotted}: other keys changed in the loaded config")
    assert not failures, "\n".join(failures)


def _sections() -> list[str]:
    return ["", *(f"profiles.{name}" for name in yaml.safe_load(PARAMS.read_text())["profiles"])]


@pytest.mark.parametrize("section", _sections(), ids=lambda s: s or "top-level")
def test_every_leaf_override_takes_and_changes_that_key_alone(section, tmp_path):
    check_every_leaf(PARAMS, section, tmp_path)


def test_params_yaml_has_no_anchors_aliases_or_merge_keys():
    bad = []
    for event in yaml.parse(PARAMS.read_text()):
        if isinstance(event, yaml.AliasEvent):
            bad.append(f"alias *{event.anchor} (line {event.start_mark.line + 1})")
        elif getattr(event, "anchor", None):
            bad.append(f"anchor &{event.anchor} (line {event.start_mark.line + 1})")
        elif isinstance(event, yaml.ScalarEvent) and event.value == "<<" and event.style is None:
            bad.append(f"merge key << (line {event.start_mark.line + 1})")
    assert not bad, "params.yaml: a key reachable by two paths: " + ", ".join(bad)


def test_bad_override_value_names_the_key(tmp_path):
    work = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, work)
    hydra_utils.apply_overrides(work, ["profiles.tiny.train.codec.steps=-1"])
    with pytest.raises(ConfigError, match=r"profiles\.tiny\.train\.codec\.steps"):
        load_params(work)
