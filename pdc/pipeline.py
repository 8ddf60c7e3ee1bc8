"""The training pipeline declared once, as data: its stages, their order, inputs, outputs and code.

Everything that runs the pipeline reads this module: ``pdc train <stage>`` (default paths),
:mod:`pdc.stages` (which stages exist, what a stage resumes from), the Prefect flow (task graph and
layout), MLflow tracking (which stage metrics to log) and ``dvc.yaml``, which is *generated* from it
(``pdc pipeline dvc-yaml``; a test checks that the committed file is the generated one)::

    data/raw (data.dvc) ─▶ shards ─▶ codec@r ─▶ diffusion@r ─▶ privileged@r ─▶ correction@r ─┐
                                                                (one chain per rate point r) │
                         register (MLflow run; registry if promote) ◀─ evaluate ◀─ collect ◀──┘

A stage's *code* is the list of files it runs; DVC re-runs the stage when one of them changes, and the
training stages fold their hash into the checkpoint identity (:func:`code_version`), so a checkpoint
written by other code is never resumed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdc.config import DiffusionConfig

if TYPE_CHECKING:
    from pdc.config import Params

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent

#: The diffusion's fields split by who reads them: the network and its training (fixed when the codec stage
#: creates the package) and the sampler (applied by the correction stage, whose λ tables are per step), so
#: changing a sampling knob in params.yaml re-runs the correction fit, not the training chain.
_DIFFUSION_NETWORK = tuple(f"diffusion.{k}" for k in DiffusionConfig.model_fields
                           if k not in DiffusionConfig.SAMPLING_FIELDS)
_DIFFUSION_SAMPLING = tuple(f"diffusion.{k}" for k in DiffusionConfig.SAMPLING_FIELDS)

#: Code every training stage runs. ``pdc/models`` is listed file by file: a stage depends on the networks it
#: trains or reads, never on the architecture of a network trained after it (the codec stage's package holds
#: the codec alone, see :mod:`pdc.models.package`), so a codec trained once serves any decoder experiment.
_TRAIN_CODE = ("pdc/train.py", "pdc/distributed.py", "pdc/scale.py", "pdc/stages.py", "pdc/pipeline.py",
               "pdc/config.py", "pdc/models/__init__.py", "pdc/models/package.py", "pdc/models/codec.py",
               "pdc/data/loader.py")
_DIFFUSION_CODE = ("pdc/models/diffusion.py", "pdc/metrics/perceptual.py", "pdc/weights.py")
_DECODE_CODE = ("pdc/models/diffusion.py", "pdc/models/privileged.py", "pdc/models/correction.py",
                "pdc/models/sampler.py", "pdc/metrics")
#: Params of the profile's ``scaling`` section: how a stage is spread over workers (batch split, DDP).
_SCALING = ("scaling",)


@dataclass(frozen=True)
class TrainStage:
    """One per-rate-point training stage."""

    name: str
    #: The stage whose package this one starts from (None: a fresh model).
    init: str | None
    #: Resumable checkpoints (training loops); the correction fit has none.
    checkpoints: bool
    #: Code it runs (files or folders, relative to the repository root).
    code: tuple[str, ...]
    #: Keys of the active profile's ``train`` section it reads.
    train_params: tuple[str, ...]
    #: Keys of the active profile's ``model`` section it reads (earlier parts come through the package it
    #: starts from; later parts are not in it).
    model_params: tuple[str, ...]
    help: str
    #: Keys of the active profile outside ``model`` and ``train`` it reads.
    profile_params: tuple[str, ...] = _SCALING


TRAIN_STAGES: tuple[TrainStage, ...] = (
    TrainStage("codec", None, True, _TRAIN_CODE + ("pdc/zoo",), ("codec", "codec_init"), ("codec",),
               "Stage 1: the hyperprior codec (loss R + λ_rd·255²·MSE) for one rate point; --init warm-starts it "
               "from the codec of an earlier package."),
    TrainStage("diffusion", "codec", True, _TRAIN_CODE + _DIFFUSION_CODE + ("pdc/zoo",), ("diffusion", "decoders_init"),
               _DIFFUSION_NETWORK,
               "Stage 2: the conditional diffusion denoiser on the frozen codec's ŷ."),
    TrainStage("privileged", "diffusion", True, _TRAIN_CODE + ("pdc/models/privileged.py", "pdc/zoo"),
               ("privileged", "decoders_init"), ("privileged",),
               "Stage 3: the privileged end-to-end decoder D_e (MSE) on the frozen ŷ; --loss diffusion trains it "
               "with the diffusion's loss instead (the e2e-lpips control of `pdc evaluate --e2e-lpips`)."),
    TrainStage("correction", "privileged", False, _TRAIN_CODE + _DECODE_CODE,
               ("correction_images", "correction_crop"), ("correction", *_DIFFUSION_SAMPLING),
               "Stage 4: simulate the encoder on training crops, fit the λ tables, pick ε̃ by measured quality.", ()),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in TRAIN_STAGES)
#: Code of the stages around the chains (DVC dependencies).
SHARDS_CODE = ("pdc/data",)
COLLECT_CODE = ("pdc/stages.py", "pdc/models/package.py")
EVALUATE_CODE = ("pdc/rd", "pdc/metrics", "pdc/codec.py", "pdc/bitstream.py", "pdc/models", "pdc/pipeline.py")
REGISTER_CODE = ("flows/register.py", "pdc/tracking.py", "pdc/promotion.py", "pdc/rd/bd.py")


def stage(name: str) -> TrainStage:
    from pdc.errors import ConfigError

    for s in TRAIN_STAGES:
        if s.name == name:
            return s
    raise ConfigError(f"unknown stage {name!r} (one of {', '.join(STAGE_NAMES)})")


@dataclass(frozen=True)
class Layout:
    """Where every artifact lives, relative to ``root`` (the repository for DVC, ``--root`` for Prefect)."""

    root: Path = Path(".")
    data: str = "data/raw"
    shards: str = "data/shards"

    @classmethod
    def of(cls, params: "Params", root: Path | str = ".") -> "Layout":
        return cls(Path(root), params.pipeline.data, params.pipeline.shards)

    def _p(self, rel: str) -> Path:
        return self.root / rel

    @property
    def data_dir(self) -> Path:
        return self._p(self.data)

    @property
    def shards_dir(self) -> Path:
        return self._p(self.shards)

    @property
    def stages_dir(self) -> Path:
        return self._p("models/stages")

    @property
    def model_set(self) -> Path:
        return self._p("models/corrdiff")

    @property
    def eval_dir(self) -> Path:
        return self._p("eval")

    @property
    def metrics_dir(self) -> Path:
        return self._p("metrics")

    def package(self, rate: str, stage_name: str) -> Path:
        return self.stages_dir / rate / stage_name

    def checkpoints(self, rate: str, stage_name: str) -> Path:
        return self._p(f"checkpoints/{rate}/{stage_name}")

    def stage_metrics(self, rate: str, stage_name: str) -> Path:
        return stage_metrics_file(self.metrics_dir, rate, stage_name)

    def init_package(self, rate: str, stage_name: str) -> Path | None:
        prev = stage(stage_name).init
        return self.package(rate, prev) if prev else None


def stage_metrics_file(metrics_dir: Path, rate: str, stage_name: str) -> Path:
    """A stage's metrics JSON inside a metrics folder (its loss CSV lies beside it)."""
    return Path(metrics_dir) / rate / f"{stage_name}.json"


def evaluate_for_promotion(params: "Params", root: Path | str = ".", model_dir: Path | None = None,
                           out: Path | None = None, images: Path | None = None) -> dict[str, Any]:
    """The pipeline's evaluation (``pipeline.evaluate``), on images the model never saw.

    ``pipeline.evaluate.images`` is the shards folder by default (its val split) or any image folder;
    images equal to a training image of ``pipeline.shards`` are refused. Used by the DVC stage
    (``pdc pipeline evaluate``) and the Prefect flow, so the champion is picked the same way by both.
    """
    from pdc.rd import evaluate_model_set

    lay = Layout.of(params, root)
    ev = params.pipeline.evaluate
    return evaluate_model_set(
        model_dir or lay.model_set,
        images or lay.root / ev.images,
        out or lay.eval_dir,
        fid_images=lay.root / ev.fid_images if ev.fid_images else None,
        limit=ev.limit,
        crop=ev.crop or None,
        gammas=ev.gamma_values,
        progress=False,
        training_data=lay.shards_dir if lay.shards_dir.is_dir() else None,
    )


# -- identity of code and data ----------------------------------------------------------------------
def _files(paths: tuple[str, ...], root: Path) -> list[Path]:
    out: list[Path] = []
    for rel in paths:
        p = root / rel
        out.extend(sorted(f for f in p.rglob("*.py")) if p.is_dir() else [p] if p.is_file() else [])
    return out


def code_version(stage_name: str, root: Path = REPO_ROOT) -> str:
    """SHA-256 (16 hex) over the source files a stage runs: a changed file means a changed stage."""
    h = hashlib.sha256()
    for f in _files(stage(stage_name).code, root):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def data_version(source: Path | str) -> str:
    """Identity of training data: the shards' manifest (source hash + shard hashes; local or at a URL)
    or a folder's tree hash."""
    import json

    from pdc.data.shards import ShardLocation
    from pdc.fsutil import tree_hash

    location = ShardLocation(source)
    if location.is_shards:
        m = location.manifest()
        text = json.dumps({"source": m.get("source_hash"), "shards": m.get("shards")}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
    return tree_hash(Path(source))[:16]


def dvc_dir_md5(folder: Path) -> str:
    """DVC's hash of a directory (``<md5>.dir`` in a ``.dvc`` file, without the suffix), computed by
    dvc-data without a repo or cache (``dry_run``: nothing is written)."""
    try:
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.db import HashFileDB
        from dvc_objects.fs.local import LocalFileSystem
        from dvc_objects.fs.memory import MemoryFileSystem
    except ImportError:  # DVC is the optional `pipeline` extra: data.dvc stays checkable without it
        import json

        entries = sorted(({"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(folder).as_posix()}
                          for f in Path(folder).rglob("*") if f.is_file()), key=lambda e: e["relpath"])
        return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    odb = HashFileDB(MemoryFileSystem(global_store=False), "/odb")
    _, _, obj = build(odb, str(Path(folder).resolve()), LocalFileSystem(), "md5", dry_run=True)
    return obj.hash_info.value.removesuffix(".dir")


def check_dvc_data(root: Path, data: str) -> str | None:
    """The DVC hash of ``data`` when ``root/data.dvc`` tracks it and the folder matches; None when not
    tracked. Raises :class:`~pdc.errors.DataError` when the folder differs from what DVC recorded."""
    import yaml

    from pdc.errors import DataError

    dvc_file = Path(root) / "data.dvc"
    if not dvc_file.is_file():
        return None
    for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", []):
        if out.get("path") != data:
            continue
        recorded = str(out.get("md5", "")).removesuffix(".dir")
        actual = dvc_dir_md5(Path(root) / data) if (Path(root) / data).is_dir() else "missing"
        if actual != recorded:
            raise DataError(f"{Path(root) / data}: differs from data.dvc ({actual} vs recorded {recorded}); "
                            f"version new data with `dvc add {data}` (and commit data.dvc), or restore it with "
                            "`dvc checkout data.dvc`")
        return recorded
    return None


# -- dvc.yaml, generated ----------------------------------------------------------------------------
DVC_HEADER = """\
# GENERATED from pdc/pipeline.py by `pdc pipeline dvc-yaml` — edit that module, not this file
# (tests/test_pipeline.py fails when they differ). Every stage calls the `pdc` CLI with its stage and
# rate point; paths come from pdc.pipeline.Layout, values from params.yaml, and each stage lists the
# code it runs, so `dvc repro` re-runs exactly the stages whose code, data or parameters changed.
#
#   data/raw (data.dvc) ─▶ shards ─▶ codec@r ─▶ diffusion@r ─▶ privileged@r ─▶ correction@r ─┐
#                                                                 (one chain per rate point r) │
#                         register (MLflow run; registry if promote) ◀─ evaluate ◀─ collect ◀──┘
#
# Checkpoints live in checkpoints/<r>/<stage>/ (persist: true), so a killed stage resumes.
"""


def dvc_stages() -> dict[str, Any]:
    """The ``dvc.yaml`` document (DVC templating: ``${key}`` is the rate point, ``${...}`` params.yaml)."""
    lay = Layout(Path("."), "${pipeline.data}", "${pipeline.shards}")
    r = "${key}"

    def rel(p: Path) -> str:
        return p.as_posix()

    stages: dict = {
        "shards": {
            "cmd": "pdc data shards --src ${pipeline.data} --out ${pipeline.shards} "
                   "--shard-size ${pipeline.shard_size} --val-fraction ${pipeline.val_fraction}",
            "deps": ["${pipeline.data}", *SHARDS_CODE],
            "params": ["pipeline.shard_size", "pipeline.val_fraction"],
            "outs": ["${pipeline.shards}"],
        }
    }
    for s in TRAIN_STAGES:
        init = lay.init_package(r, s.name)
        metrics = lay.stage_metrics(r, s.name)
        do: dict = {
            "cmd": f"pdc train {s.name} -r {r}",
            "deps": [rel(lay.shards_dir), *([rel(init)] if init else []), *s.code],
            "params": (["profile", f"rate_points.{r}"] if s.init is None else [])
            + [f"profiles.${{profile}}.model.{k}" for k in s.model_params]
            + [f"profiles.${{profile}}.train.{k}" for k in s.train_params]
            + [f"profiles.${{profile}}.{k}" for k in s.profile_params],
            "outs": [rel(lay.package(r, s.name))]
            + ([{rel(lay.checkpoints(r, s.name)): {"persist": True, "cache": False}}] if s.checkpoints else []),
            "metrics": [{rel(metrics): {"cache": False}}],
        }
        if s.checkpoints:
            do["plots"] = [{rel(metrics.with_name(f"{s.name}_loss.csv")): {"cache": False, "x": "step", "y": "loss"}}]
        stages[s.name] = {"foreach": "${rate_points}", "do": do}
    stages["collect"] = {
        "cmd": "pdc train collect",
        "deps": [rel(lay.stages_dir), *COLLECT_CODE],
        "params": ["rate_points"],
        "outs": [rel(lay.model_set)],
    }
    stages["evaluate"] = {
        "cmd": "pdc pipeline evaluate",
        "deps": [rel(lay.model_set), rel(lay.shards_dir), "${pipeline.evaluate.images}", *EVALUATE_CODE],
        "params": ["pipeline.evaluate"],
        "outs": [rel(lay.eval_dir)],
    }
    stages["register"] = {
        "cmd": f"python -m flows.register --model-set {rel(lay.model_set)} --eval {rel(lay.eval_dir)} "
               f"--metrics {rel(lay.metrics_dir)} --out {rel(lay.metrics_dir / 'registry.json')}",
        "deps": [rel(lay.model_set), rel(lay.eval_dir), *REGISTER_CODE],
        # pipeline.promote: false (experiments) logs to MLflow only; true also registers and may move champion
        "params": ["pipeline.experiment", "pipeline.registered_model", "pipeline.promotion", "pipeline.promote"],
        "metrics": [{rel(lay.metrics_dir / "registry.json"): {"cache": False}}],
    }
    return {"stages": stages}


#: Systems of every evaluation besides the CorrDiff γ variants: the learned ones, the matched-noise control
#: and the classic codecs (the eval/plots/<system>.csv files of the evaluate stage).
PLOT_SYSTEMS = ("corrdiff", "diffusion", "e2e", "e2e-noise", "codec", "jpeg", "webp", "avif")
#: The RD plots declared for ``dvc plots``: metric and axis label (FID needs ``pipeline.evaluate.fid_images``).
PLOT_METRICS = (("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"), ("lpips", "LPIPS-alex (lower is better)"),
                ("lpips_vgg", "LPIPS-VGG (lower is better)"), ("fid", "FID on 256² patches (lower is better)"))


def plot_systems(params_file: Path = REPO_ROOT / "params.yaml") -> tuple[str, ...]:
    """Every system the pipeline's evaluation writes plot data for: :data:`PLOT_SYSTEMS` plus a CorrDiff per
    γ of ``pipeline.evaluate.gammas`` other than the model's own (the active profile's ``correction.gamma``),
    as params.yaml sets them: regenerate dvc.yaml after changing either."""
    from pdc.config import CorrectionConfig, EvalConfig, load_params
    from pdc.errors import ConfigError

    try:
        params = load_params(params_file)
        gammas, own = params.pipeline.evaluate.gamma_values, params.active.model.correction.gamma
    except ConfigError:  # no params.yaml (an installed package): the schema's defaults
        gammas, own = EvalConfig().gamma_values, CorrectionConfig().gamma
    return PLOT_SYSTEMS[:1] + tuple(f"corrdiff-g{g:g}" for g in gammas if abs(g - own) >= 1e-9) + PLOT_SYSTEMS[1:]


def dvc_yaml() -> str:
    """The complete generated ``dvc.yaml`` text."""
    import yaml

    doc = dvc_stages()
    doc["metrics"] = ["eval/metrics.json"]
    systems = plot_systems()
    plots: list = []
    for metric, label in PLOT_METRICS:
        plots.append({f"rd_{metric}": {"template": "linear", "x": "bpp",
                                       "y": {f"eval/plots/{s}.csv": metric for s in systems},
                                       "x_label": "bit-rate (bpp)", "y_label": label}})
    plots += ["eval/rd_psnr.png", "eval/rd_lpips.png", "eval/rd_lpips_vgg.png", "eval/dp_curve.png", "eval/crops.png"]
    doc["plots"] = plots
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=200)
    return DVC_HEADER + "\n" + body
