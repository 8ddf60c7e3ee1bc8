"""A micro pipeline (tiny model, a few steps, the embedded corpus) for flow and stage tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from pdc.config import DiffusionConfig
from tests.models.conftest import MICRO

MICRO_PROFILE = {
    # every diffusion field spelled out: dvc.yaml lists them one by one (network vs sampling knobs)
    "model": {**MICRO, "diffusion": DiffusionConfig(**{**MICRO["diffusion"], "steps": 2}).model_dump(mode="json")},
    "train": {
        "codec": {"steps": 4, "batch_size": 2, "crop": 64, "checkpoint_every": 2},
        "diffusion": {"steps": 3, "batch_size": 2, "crop": 64, "checkpoint_every": 2},
        "privileged": {"steps": 2, "batch_size": 2, "crop": 64, "checkpoint_every": 2},
        "correction_images": 2,
        "correction_crop": 64,
        "codec_init": "scratch",
        "decoders_init": "scratch",
    },
    "scaling": {"num_workers": 1},
}


def write_micro_params(root: Path, **train_overrides) -> Path:
    """params.yaml for the micro profile (two rate points) under ``root``; returns its path."""
    profile = yaml.safe_load(yaml.safe_dump(MICRO_PROFILE))
    for stage, values in train_overrides.items():
        profile["train"][stage].update(values)
    doc = {
        "profile": "micro",
        "rate_points": {"r0": 0.002, "r1": 0.01},
        "pipeline": {
            "shard_size": 4,
            "val_fraction": 0.2,  # the shards' val split (2 of the 9 embedded photos) is the evaluation set
            "evaluate": {"crop": 64, "limit": 2, "gammas": "1.0"},
        },
        "profiles": {"micro": profile},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_micro_pipeline_params(root: Path, repo_params: Path) -> Path:
    """The micro profile with the repository's whole ``pipeline`` section (paths, promotion, tracking):
    a params.yaml that the generated dvc.yaml resolves in a copy of the repository."""
    path = write_micro_params(root)
    doc = yaml.safe_load(path.read_text())
    full = yaml.safe_load(repo_params.read_text())["pipeline"]
    full["evaluate"].update(doc["pipeline"]["evaluate"])
    doc["pipeline"] = full
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def init_corpus(root: Path) -> Path:
    from pdc.data.corpus import init_default_corpus

    init_default_corpus(root / "data" / "raw" / "default")
    return root / "data" / "raw"
