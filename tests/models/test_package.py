"""Model packages: content hash, safe loading, tamper detection."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from pdc.errors import ModelPackageError
from pdc.models.package import _update_digest, load_package, save_package


def test_save_load_round_trip(micro_model, tmp_path):
    digest = save_package(micro_model, tmp_path / "m")
    assert (tmp_path / "m" / "weights.pt").is_file()
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["hash"] == digest and meta["versions"]["torch"] == torch.__version__
    loaded = load_package(tmp_path / "m")
    assert loaded.content_hash() == digest
    assert not list(tmp_path.glob(".m.*"))  # no temp dirs left behind


def test_hash_is_stable_across_saves(micro_model, tmp_path):
    assert save_package(micro_model, tmp_path / "a") == save_package(micro_model, tmp_path / "b")


def test_config_fields_added_later_keep_older_hashes(micro_model):
    """A package written before ``correction.lowpass_sigma`` existed hashed a config without it; at its
    neutral value the field must not change the hash (old streams stay decodable), any other value must."""
    from pdc.models.package import content_hash

    cfg = micro_model.config
    dump = cfg.model_dump(mode="json")
    del dump["correction"]["lowpass_sigma"]
    h = hashlib.sha256(json.dumps(dump, sort_keys=True).encode())
    for part, state in sorted(micro_model.state_parts().items()):
        _update_digest(h, state, f"{part}.")
    assert content_hash(cfg, micro_model.state_parts()) == h.hexdigest()
    moved = cfg.model_copy(update={"correction": cfg.correction.model_copy(update={"lowpass_sigma": 1.0})})
    assert content_hash(moved, micro_model.state_parts()) != h.hexdigest()


def test_modified_weights_are_detected(micro_model, tmp_path):
    save_package(micro_model, tmp_path / "m")
    parts = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    parts["diffusion"]["latent_proj.bias"] += 1
    torch.save(parts, tmp_path / "m" / "weights.pt")
    with pytest.raises(ModelPackageError, match="hash mismatch"):
        load_package(tmp_path / "m")


def test_pickled_code_is_refused(tmp_path, micro_model):
    save_package(micro_model, tmp_path / "m")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"codec": Evil()}, tmp_path / "m" / "weights.pt")
    with pytest.raises(ModelPackageError, match="cannot be loaded safely"):
        load_package(tmp_path / "m")


def test_missing_package(tmp_path):
    with pytest.raises(ModelPackageError, match="no model.json"):
        load_package(tmp_path)


def test_decode_settings_validate_and_keep_the_weights(micro_model):
    from pydantic import ValidationError

    band = micro_model.with_decode_settings(correction={"lowpass_sigma": 1.0})
    assert band.config.correction.lowpass_sigma == 1.0
    assert band.state_parts()["diffusion"].keys() == micro_model.state_parts()["diffusion"].keys()
    assert all(torch.equal(a, b) for a, b in zip(band.diffusion.state_dict().values(),
                                                micro_model.diffusion.state_dict().values()))
    assert torch.equal(band.tables, micro_model.tables)
    with pytest.raises(ValidationError, match="lowpass_sigma"):
        micro_model.with_decode_settings(correction={"lowpass_sigma": -1.0})


def test_sampling_settings_change_the_step_count_not_the_network(micro_model):
    k = micro_model.config.diffusion.steps
    fewer = micro_model.with_decode_settings(sampling={"steps": k - 1, "t_min": 3})
    assert (fewer.config.diffusion.steps, fewer.config.diffusion.t_min) == (k - 1, 3)
    assert fewer.tables.shape == (k - 1, micro_model.config.correction.levels)  # per-step tables: refit
    assert fewer.content_hash() != micro_model.content_hash()
    assert all(torch.equal(a, b) for a, b in zip(fewer.diffusion.state_dict().values(),
                                                micro_model.diffusion.state_dict().values()))
    with pytest.raises(ModelPackageError, match="block_channels: not a sampling setting"):
        micro_model.with_decode_settings(sampling={"block_channels": (64, 64)})


def test_half_precision_storage_loads_back_to_the_hash_it_was_saved_with(micro_model, tmp_path):
    """The diffusion and D_e stored as float16: half the bytes for them, the loaded model is exactly the
    rounded one (same hash, widened to float32), and the codec — whose weights make the entropy coder's
    tables — is stored untouched."""
    import copy

    from pdc.models.package import round_to_half

    full_hash = save_package(micro_model, tmp_path / "fp32")
    model = copy.deepcopy(micro_model)
    digest = save_package(model, tmp_path / "fp16", half=("diffusion", "privileged"))
    assert digest != full_hash  # the rounding changed the weights, and the hash says so
    meta = json.loads((tmp_path / "fp16" / "model.json").read_text())
    assert meta["float16"] == ["diffusion", "privileged"]
    stored = torch.load(tmp_path / "fp16" / "weights.pt", weights_only=True)
    assert all(t.dtype == torch.float16 for t in stored["diffusion"].values() if t.is_floating_point())
    assert all(t.dtype == torch.float32 for t in stored["codec"].values() if t.is_floating_point())
    assert (tmp_path / "fp16" / "weights.pt").stat().st_size < (tmp_path / "fp32" / "weights.pt").stat().st_size
    loaded = load_package(tmp_path / "fp16")
    assert loaded.content_hash() == digest
    w = next(iter(loaded.diffusion.state_dict().values()))
    assert w.dtype == torch.float32
    for part in ("codec", "diffusion"):
        for (k, a), b in zip(getattr(loaded, part).state_dict().items(), getattr(model, part).state_dict().values()):
            assert torch.equal(a, b), k
    for (k, a), b in zip(loaded.codec.state_dict().items(), micro_model.codec.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ModelPackageError, match="codec: only diffusion, privileged may be stored in float16"):
        round_to_half(model, ("codec",))
