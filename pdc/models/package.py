"""The composite model package: the four networks, their config and the λ tables, with a content hash.

On disk a package is one directory::

    model.json    {"format": "pdc-model/1", "hash": …, "config": {…}, "parts": [...], "versions": {…}, …}
    weights.pt    {"codec": state_dict, "diffusion": …, "privileged": …, "correction": {"tables": (K, L)}}

A package written by an early stage holds only the parts trained so far (``parts``; the codec stage's
package has the codec alone): the next stage builds its own network from the profile, so a stage's
package — and its DVC identity — never depends on the architecture of a network trained after it.
Packages without ``parts`` (the complete ones) hold all three networks.

``weights.pt`` holds tensors only and is loaded with ``torch.load(weights_only=True)``.  The hash is a
SHA-256 over the canonical JSON of the config and every tensor (name, dtype, shape, bytes) in sorted
order, so it identifies the model independently of how ``torch.save`` lays out the zip; its first 16
bytes travel in every bitstream header.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdc import __version__
from pdc.config import DiffusionConfig, ModelConfig, PrivilegedConfig, RatePoint, parse_model_config
from pdc.errors import ModelPackageError
from pdc.fsutil import staging_dir
from pdc.models.codec import build_codec
from pdc.models.correction import uniform_tables
from pdc.models.diffusion import ConditionalDenoiser, build_scheduler
from pdc.models.privileged import PrivilegedDecoder

FORMAT = "pdc-model/1"
PARTS = ("codec", "diffusion", "privileged")


class CorrDiffModel(nn.Module):
    """All four components of a CorrDiff codec, ready for :mod:`pdc.codec`."""

    def __init__(self, config: ModelConfig, tables: torch.Tensor | None = None,
                 trained: tuple[str, ...] = PARTS) -> None:
        super().__init__()
        self.config = config
        #: The networks holding trained weights (what a package stores); the rest are fresh initialisations
        #: that the stage training them replaces (:meth:`with_fresh_part`).
        self.trained = tuple(p for p in PARTS if p in trained)
        self.codec = build_codec(config.codec)
        self.diffusion = ConditionalDenoiser(config.diffusion, config.codec.M)
        self.privileged = PrivilegedDecoder(config.privileged, self.codec.g_s)
        self.scheduler = build_scheduler(config.diffusion)
        steps = config.diffusion.steps
        self.register_buffer("tables", tables if tables is not None else uniform_tables(steps, config.correction.levels))
        #: The rate point the package was trained for (``model.json``; None for a model built in memory): its
        #: λ_rd is the trade-off the encoder's latent refinement optimises (:mod:`pdc.models.refine`).
        self.rate_point: RatePoint | None = None
        self._hash: str | None = None

    def with_decode_settings(self, tables: torch.Tensor | None = None, *, correction: Mapping[str, Any] | None = None,
                             sampling: Mapping[str, Any] | None = None) -> "CorrDiffModel":
        """A copy with decode-time settings changed and validated: ``config.correction`` fields and the
        diffusion's sampling fields (:attr:`DiffusionConfig.SAMPLING_FIELDS`); same network weights, same
        device. λ tables: ``tables`` if given, else the current ones while their shape still fits, else
        uniform ones."""
        sampling = dict(sampling or {})
        wrong = sorted(set(sampling) - set(DiffusionConfig.SAMPLING_FIELDS))
        if wrong:
            raise ModelPackageError(f"{', '.join(wrong)}: not a sampling setting of model.diffusion (those are "
                                    f"{', '.join(DiffusionConfig.SAMPLING_FIELDS)}); other fields need retraining")
        c, dif = self.config.correction, self.config.diffusion
        cfg = self.config.model_copy(update={
            "correction": type(c).model_validate({**c.model_dump(), **(correction or {})}),
            "diffusion": type(dif).model_validate({**dif.model_dump(), **sampling}),
        })
        same_shape = (cfg.correction.levels, cfg.diffusion.steps) == (c.levels, dif.steps)
        if tables is None and same_shape:
            tables = self.tables.clone()
        new = CorrDiffModel(cfg, tables=tables, trained=self.trained)
        for part in PARTS:
            getattr(new, part).load_state_dict(getattr(self, part).state_dict())
        return self._adopt(new)

    def with_fresh_part(self, part: str, config: DiffusionConfig | PrivilegedConfig, seed: int = 0) -> "CorrDiffModel":
        """A copy whose ``part`` ("diffusion" or "privileged") is a fresh network built from ``config``.

        The stage that trains a part builds it from the profile, not from what an earlier stage's package
        carried, so a codec trained once serves any diffusion or privileged-decoder architecture. Other
        trained parts and the λ tables (uniform again when the step count changes) carry over.
        """
        if part not in ("diffusion", "privileged"):
            raise ModelPackageError(f"{part}: only the diffusion and the privileged decoder are rebuilt per stage")
        cfg = self.config.model_copy(update={part: config})
        same_tables = (cfg.diffusion.steps, cfg.correction.levels) == (self.config.diffusion.steps,
                                                                       self.config.correction.levels)
        torch.manual_seed(seed)
        new = CorrDiffModel(cfg, tables=self.tables.clone() if same_tables else None,
                            trained=tuple(p for p in self.trained if p != part))
        for other in PARTS:
            if other != part:
                getattr(new, other).load_state_dict(getattr(self, other).state_dict())
        return self._adopt(new)

    def _adopt(self, new: "CorrDiffModel") -> "CorrDiffModel":
        """What every derived copy shares with this model: entropy tables rebuilt, the rate point, the
        device, eval mode."""
        new.codec.update(force=True)
        new.rate_point = self.rate_point
        return new.to(self.tables.device).eval()

    def mark_trained(self, part: str) -> None:
        """Record that ``part`` now holds trained weights (it is saved with the package from now on)."""
        self.trained = tuple(p for p in PARTS if p in (*self.trained, part))
        self.invalidate_hash()

    # -- identity -----------------------------------------------------------------------------------
    def state_parts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The trained networks' states and the λ tables: what a package stores and its hash covers."""
        return {**{p: getattr(self, p).state_dict() for p in self.trained}, "correction": {"tables": self.tables}}

    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = content_hash(self.config, self.state_parts())
        return self._hash

    def invalidate_hash(self) -> None:
        self._hash = None

    @property
    def hash_bytes(self) -> bytes:
        return bytes.fromhex(self.content_hash())[:16]


def _update_digest(h: "hashlib._Hash", state: dict[str, torch.Tensor], prefix: str = "") -> None:
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{prefix}{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state_dict's names, dtypes, shapes and values (independent of torch.save)."""
    h = hashlib.sha256()
    _update_digest(h, state)
    return h.hexdigest()


#: Config fields added after pdc-model/1 shipped, with the value that reproduces the earlier behaviour. At
#: that value they are left out of the hash, so older packages keep their hash and their streams decode.
_ADDED_LATER: dict[tuple[str, str], object] = {("correction", "lowpass_sigma"): 0.0}


def content_hash(config: ModelConfig, parts: dict[str, dict[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    dump = config.model_dump(mode="json")
    for (section, key), neutral in _ADDED_LATER.items():
        if dump[section].get(key) == neutral:
            del dump[section][key]
    h.update(json.dumps(dump, sort_keys=True).encode())
    for part in sorted(parts):
        _update_digest(h, parts[part], f"{part}.")
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import compressai
    import diffusers

    return {
        "pdc": __version__,
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


#: Parts that may be stored in float16 (:func:`save_package`'s ``half``). The codec stays float32: its
#: entropy models derive the coder's tables from its weights, and it is the smaller share of a package.
HALF_PARTS = ("diffusion", "privileged")


def round_to_half(model: CorrDiffModel, parts: tuple[str, ...]) -> None:
    """Round the floating-point weights of ``parts`` to float16 values, in place (they stay float32)."""
    wrong = sorted(set(parts) - set(HALF_PARTS))
    if wrong:
        raise ModelPackageError(f"{', '.join(wrong)}: only {', '.join(HALF_PARTS)} may be stored in float16")
    with torch.no_grad():
        for part in parts:
            for t in getattr(model, part).state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
    model.invalidate_hash()


def save_package(model: CorrDiffModel, path: str | os.PathLike[str], extra: dict[str, Any] | None = None,
                 *, half: tuple[str, ...] = ()) -> str:
    """Write the package directory atomically (temp dir + rename); returns the content hash.

    ``half`` names parts (of :data:`HALF_PARTS`) to store as float16: their weights are first rounded in
    ``model`` itself, so the hash, computed on the float32 model, is that of what loading gives back
    (``load_state_dict`` widens them again). Recorded as ``"float16": [...]`` in model.json.
    """
    half = tuple(p for p in PARTS if p in half and p in model.trained)
    round_to_half(model, half)
    model.codec.update(force=True)  # entropy-coder CDFs must be current before they are frozen
    model.invalidate_hash()
    meta = {
        "format": FORMAT,
        "hash": model.content_hash(),
        "config": model.config.model_dump(mode="json"),
        **({} if model.trained == PARTS else {"parts": list(model.trained)}),
        **({"float16": list(half)} if half else {}),
        "versions": _versions(),
        **(extra or {}),
    }
    state = model.state_parts()
    for part in half:
        state[part] = {k: t.half() if t.is_floating_point() else t for k, t in state[part].items()}
    with staging_dir(Path(path)) as tmp:
        torch.save(state, tmp / "weights.pt")
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta["hash"]


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    meta_file = p / "model.json"
    if not meta_file.is_file():
        raise ModelPackageError(f"{p}: not a pdc model package (no model.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelPackageError(f"{meta_file}: invalid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelPackageError(f"{p}: unsupported package format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def load_package(path: str | os.PathLike[str], *, verify: bool = True) -> CorrDiffModel:
    """Load a package directory; with ``verify`` the recomputed content hash must match model.json."""
    p = Path(path)
    meta = read_metadata(p)
    config = parse_model_config(meta["config"], where=f"{p}/model.json")
    try:
        parts = torch.load(p / "weights.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelPackageError(f"{p}: weights.pt is missing") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt zip or a refused pickle global
        raise ModelPackageError(f"{p}/weights.pt: cannot be loaded safely ({exc})") from None
    trained = tuple(meta.get("parts", PARTS))
    if "codec" not in trained or any(t not in PARTS for t in trained):
        raise ModelPackageError(f"{p}/model.json: parts must name the codec and only {', '.join(PARTS)}, "
                                f"got {list(trained)}")
    model = CorrDiffModel(config, tables=parts["correction"]["tables"], trained=trained)
    try:
        for part in trained:
            getattr(model, part).load_state_dict(parts[part])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ModelPackageError(f"{p}: weights do not match the config ({exc})") from None
    model.eval()
    model.rate_point = RatePoint.from_meta(meta.get("rate_point"))
    if verify and model.content_hash() != meta["hash"]:
        raise ModelPackageError(f"{p}: content hash mismatch (package modified or corrupted)")
    return model


def init_model(config: ModelConfig, seed: int = 0) -> CorrDiffModel:
    """A freshly initialised model (deterministic in ``seed``): the start of training, and tests."""
    torch.manual_seed(seed)
    model = CorrDiffModel(config)
    model.codec.update(force=True)
    return model.eval()


def export_codec_checkpoint(checkpoint: str | os.PathLike[str], config: ModelConfig, rate_point: Any,
                            out: str | os.PathLike[str]) -> dict[str, Any]:
    """A codec stage checkpoint (see :mod:`pdc.train`) as a codec-only package at ``out``.

    The checkpoint's codec must fit ``config.codec``; the package records the checkpoint's step.
    """
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        codec_state, step = state["modules"]["codec"], int(state["step"])
    except (OSError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelPackageError(f"{checkpoint}: not a codec stage checkpoint ({exc})") from None
    from pdc.train import fit_entropy_bottleneck

    model = CorrDiffModel(config, trained=("codec",))
    try:
        model.codec.load_state_dict(codec_state)
    except RuntimeError as exc:
        raise ModelPackageError(f"{checkpoint}: its codec does not fit model.codec {config.codec.model_dump()} "
                                f"({str(exc).splitlines()[0]})") from None
    fit_entropy_bottleneck(model.codec)  # as the codec stage does before it writes a package
    digest = save_package(model, out, extra={"stage": "codec", "rate_point": rate_point.as_dict(),
                                             "exported": {"checkpoint": str(checkpoint), "step": step}})
    return {"hash": digest, "step": step}


# -- model sets: one package per rate point ---------------------------------------------------------
SET_FORMAT = "pdc-model-set/1"


def write_model_set(dest: str | os.PathLike[str], packages: list[str | os.PathLike[str]]) -> dict[str, Any]:
    """Gather rate-point packages into one directory (what the pipeline registers in MLflow).

    Layout: ``index.json`` (rate points in the given order — low rate first —, names, hashes) and one
    package per rate point, in a folder named after the rate point (``r{i}`` for packages without one).
    Written atomically like a package.
    """

    with staging_dir(Path(dest)) as tmp:
        entries = []
        for i, src in enumerate(packages):
            meta = read_metadata(src)
            rp = RatePoint.from_meta(meta.get("rate_point"))
            name = rp.name if rp is not None and rp.name else f"r{i}"
            shutil.copytree(src, tmp / name)
            entries.append({"name": name, "hash": meta["hash"], "rate_point": rp.as_dict() if rp else None})
        index = {"format": SET_FORMAT, "packages": entries}
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def rate_packages(path: str | os.PathLike[str]) -> list[Path]:
    """The package directories behind ``path``: itself if it is a package, its members if it is a set."""
    p = Path(path)
    index_file = p / "index.json"
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text())
        except json.JSONDecodeError as exc:
            raise ModelPackageError(f"{index_file}: invalid JSON ({exc})") from None
        if index.get("format") != SET_FORMAT or not index.get("packages"):
            raise ModelPackageError(f"{p}: not a pdc model set")
        return [p / e["name"] for e in index["packages"]]
    read_metadata(p)  # raises a clear error if this is not a package either
    return [p]


def load_rate_point(path: str | os.PathLike[str], rate: int = 0) -> CorrDiffModel:
    """Load one rate point of a package or model set (``rate`` indexes the set)."""
    members = rate_packages(path)
    if not 0 <= rate < len(members):
        raise ModelPackageError(f"{path}: rate index {rate} out of range (the set has {len(members)} rate points)")
    return load_package(members[rate])
