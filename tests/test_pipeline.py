"""The pipeline definition (pdc/pipeline.py) is the one source of dvc.yaml, the CLI's paths and code hashes."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from pdc.pipeline import REPO_ROOT, STAGE_NAMES, TRAIN_STAGES, Layout, code_version, dvc_yaml, stage

ROOT = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_is_the_generated_one():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), "run `pdc pipeline dvc-yaml` after editing pdc/pipeline.py"


def test_every_training_stage_lists_existing_code_and_its_predecessor():
    doc = yaml.safe_load(dvc_yaml())["stages"]
    for s in TRAIN_STAGES:
        do = doc[s.name]["do"]
        assert do["cmd"] == f"pdc train {s.name} -r ${{key}}"  # stage and rate point, nothing else
        for rel in s.code:
            assert (ROOT / rel).exists(), rel
            assert rel in do["deps"]
        if s.init:
            assert f"models/stages/${{key}}/{s.init}" in do["deps"]
    assert [s.name for s in TRAIN_STAGES] == list(STAGE_NAMES) == ["codec", "diffusion", "privileged", "correction"]


def test_every_profile_spells_every_parameter_dvc_lists():
    """DVC refuses to run a stage whose listed parameter is missing from params.yaml, and the diffusion's
    fields are listed one by one: network/training fields at the codec stage, sampling fields at the
    correction stage (changing a sampling knob re-fits λ, it does not retrain)."""
    from pdc.config import DiffusionConfig

    listed = [k for s in TRAIN_STAGES for k in s.model_params if k.startswith("diffusion.")]
    assert sorted(listed) == sorted(f"diffusion.{f}" for f in DiffusionConfig.model_fields)  # each once
    assert "diffusion.steps" in stage("correction").model_params
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, profile in doc["profiles"].items():
        for s in TRAIN_STAGES:
            for section, keys in (("model", s.model_params), ("train", s.train_params)):
                for key in keys:
                    node = profile[section]
                    for part in key.split("."):
                        assert part in node, f"profiles.{name}.{section}.{key} is missing (stage {s.name})"
                        node = node[part]


def test_code_version_follows_the_stage_code(tmp_path):
    for rel in stage("diffusion").code:
        src = REPO_ROOT / rel
        dst = tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    before = code_version("diffusion", tmp_path)
    assert before == code_version("diffusion", REPO_ROOT)
    (tmp_path / "pdc/train.py").write_text((tmp_path / "pdc/train.py").read_text() + "\n# edited\n")
    assert code_version("diffusion", tmp_path) != before


def test_layout_names_each_artifact_once():
    lay = Layout(Path("/r"))
    assert lay.package("r0", "diffusion") == Path("/r/models/stages/r0/diffusion")
    assert lay.init_package("r0", "diffusion") == lay.package("r0", "codec")
    assert lay.init_package("r0", "codec") is None
    assert lay.stage_metrics("r1", "codec") == Path("/r/metrics/r1/codec.json")


def test_data_dvc_check_matches_dvc_and_refuses_unversioned_changes(tmp_path):
    import pytest

    from pdc.data.corpus import init_default_corpus
    from pdc.errors import DataError
    from pdc.pipeline import check_dvc_data

    init_default_corpus(tmp_path / "data" / "raw" / "default")
    shutil.copy(ROOT / "data.dvc", tmp_path / "data.dvc")  # the committed pin of the embedded corpus
    recorded = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(".dir")
    assert check_dvc_data(tmp_path, "data/raw") == recorded  # our hash is DVC's
    (tmp_path / "data" / "raw" / "default" / "new.png").write_bytes(b"x")
    with pytest.raises(DataError, match="differs from data.dvc.*dvc add data/raw"):
        check_dvc_data(tmp_path, "data/raw")
    assert check_dvc_data(tmp_path, "elsewhere") is None
