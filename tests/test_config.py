"""params.yaml validation: the shipped file is valid, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pdc.config import load_params
from pdc.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_validate_for_every_profile():
    for name in ("tiny", "paper"):
        p = load_params(REPO / "params.yaml", name)
        assert p.active.model.diffusion.steps >= 1
    tiny = load_params(REPO / "params.yaml")
    assert tiny.profile == "tiny" and tiny.rate_names() == ["r0", "r1", "r2"]  # ~0.1–0.5 bpp, low rate first


def _write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _base() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["profiles"]["tiny"]["model"]["codec"].update(N=4), "model.codec.N"),
        (lambda d: d["profiles"]["tiny"]["train"]["codec"].update(stpes=3), "stpes"),
        (lambda d: d.update(rate_points={}), "rate_points"),
        (lambda d: d.update(rate_points={"r0": -1}), "rate_points"),
        (lambda d: d.update(profile="huge"), "unknown profile 'huge'"),
        (lambda d: d["pipeline"].update(colour="blue"), "pipeline.colour"),
        (lambda d: d["profiles"]["tiny"]["model"]["correction"].update(eps_mode="magic"), "eps_mode"),
    ],
)
def test_bad_params_are_named(tmp_path, edit, message):
    doc = _base()
    edit(doc)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_params(_write(tmp_path, doc))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("profile: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")
