"""The typed configuration schema: one place for every model size and training knob.

A *profile* (``tiny`` for CPUs, ``paper`` for GPUs; see ``params.yaml``) is a :class:`Profile`: the
model architecture (:class:`ModelConfig`, which is stored inside every model package) plus per-stage
training settings.  Unknown keys and out-of-range values are refused with a :class:`ConfigError`
that names the offending key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pdc.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodecConfig(_Strict):
    """CompressAI mean-scale hyperprior (Minnen et al. 2018 without context model)."""

    N: int = Field(64, ge=8, le=512)
    M: int = Field(96, ge=8, le=512)


class DiffusionConfig(_Strict):
    """Conditional denoiser ε_θ(x_t, t, c(ŷ)) — a diffusers ``UNet2DModel`` — and its DDIM sampler."""

    #: Fields read only when sampling (never by training): the correction stage applies the profile's
    #: values to the package it fits (its λ tables are per step), so changing them needs no retraining.
    SAMPLING_FIELDS: ClassVar[tuple[str, ...]] = ("steps", "timestep_spacing", "t_min", "spacing_power",
                                                 "noise_temperature")

    block_channels: tuple[int, ...] = (48, 64, 96)
    layers_per_block: int = Field(1, ge=1, le=4)
    norm_groups: int = Field(8, ge=1)
    #: The UNet runs on pixel-unshuffled tensors (space-to-depth by this factor): 16× cheaper at 4.
    unshuffle: int = Field(4, ge=1, le=8)
    #: Channels of the learned projection of ŷ fed to the UNet beside the base reconstruction.
    latent_channels: int = Field(8, ge=0)
    train_timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    #: What the network predicts. "v_prediction" keeps x̂0 well-conditioned at the first trailing step,
    #: where ᾱ_T ≈ 0 makes the ε-parameterisation divide by ~0; "epsilon" and "sample" are available.
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    #: The diffusion models the residual x − g_s(ŷ), scaled by this factor towards unit variance.
    residual_scale: float = Field(8.0, gt=0)
    #: Default number of DDIM steps K; the bitstream records the value used.
    steps: int = Field(6, ge=1, le=64)
    #: Where the K steps sit. "trailing" (diffusers): t = T−1, T−1−T/K, …, T/K — the last estimate is
    #: taken at t = T/K, far from clean for small K. "power": t_k = t_min + (T−1−t_min)·(1 − k/(K−1))^ρ
    #: with ρ = ``spacing_power`` — ends at ``t_min`` (near 0) and, for ρ > 1, packs steps at low noise.
    timestep_spacing: Literal["trailing", "power"] = "trailing"
    t_min: int = Field(0, ge=0)
    spacing_power: float = Field(1.0, gt=0, le=8)
    #: Scale of the initial noise r_T ~ N(0, τ² I); τ < 1 trades diversity for fidelity.
    noise_temperature: float = Field(1.0, gt=0, le=2)

    @field_validator("block_channels")
    @classmethod
    def _channels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not 1 <= len(v) <= 6 or any(c < 4 for c in v):
            raise ValueError("block_channels needs 1–6 entries, each ≥ 4")
        return v

    @model_validator(mode="after")
    def _spans_output(self) -> "DiffusionConfig":
        # The UNet's last conv maps block_channels[0] features to 3·u² outputs per position: with fewer
        # features its output lives in a fixed subspace, and in the rest the DDIM loop is linear in r_T,
        # so a share of the initial noise reaches every image whatever the weights (DESIGN §5).
        need = 3 * self.unshuffle**2
        if self.block_channels[0] < need:
            raise ValueError(
                f"block_channels[0]={self.block_channels[0]} is below 3·unshuffle²={need}: the UNet cannot span "
                "its output space and initial noise leaks into every image (raise block_channels[0] or lower unshuffle)"
            )
        if any(c % self.norm_groups for c in self.block_channels):
            raise ValueError(f"norm_groups={self.norm_groups} must divide every block_channels entry "
                             f"{list(self.block_channels)} (GroupNorm)")
        if self.t_min >= self.train_timesteps - 1:
            raise ValueError(f"t_min={self.t_min} must be below train_timesteps−1={self.train_timesteps - 1}")
        return self


class PrivilegedConfig(_Strict):
    """Privileged end-to-end decoder D_e: g_s (initialised from the codec) + a residual refiner."""

    refine_channels: int = Field(32, ge=4)
    refine_blocks: int = Field(2, ge=0, le=16)


class CorrectionConfig(_Strict):
    """Per-step correction weights λ_k: quantizer, entropy model and the distortion–perception knob."""

    #: λ is quantized uniformly to this many levels on [0, 1] (level 0 = no correction).
    levels: int = Field(16, ge=2, le=256)
    #: How the DDIM update re-noises: keep the network's ε̂, or re-derive ε from the corrected x̃0.
    eps_mode: Literal["network", "rederive"] = "rederive"
    #: Strength γ ∈ [0, 1] scaling the encoder's least-squares λ* (1 = maximum fidelity).
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    #: Steps (counted from the first sampling step, 0-based) allowed to carry a λ; None = all.
    correct_steps: tuple[int, ...] | None = None
    #: λ pulls only the band below a Gaussian low-pass of this σ (pixels) towards x_e; finer detail stays
    #: the diffusion's. 0 = the whole estimate (the paper's correction).
    lowpass_sigma: float = Field(0.0, ge=0.0, le=32.0)


class ModelConfig(_Strict):
    """Everything needed to rebuild the four networks; stored in the model package."""

    codec: CodecConfig = CodecConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    privileged: PrivilegedConfig = PrivilegedConfig()
    correction: CorrectionConfig = CorrectionConfig()


class StageTrainConfig(_Strict):
    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    crop: int = Field(128, ge=64)
    lr: float = Field(1e-3, gt=0)
    #: Learning rate: linear warm-up over ``warmup_steps``, then constant or cosine decay to
    #: ``min_lr_ratio``·lr at ``steps`` (a function of the step, so a resumed run continues it exactly).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0
    #: ``batch_size`` is the global batch of one optimisation step: it is split over the data-parallel
    #: workers (``scaling.num_workers``) and, on each, into this many micro-batches whose gradients add up.
    grad_accum: int = Field(1, ge=1)
    #: Autocast dtype of the forward passes: "bf16" (mixed precision; weights, optimiser and loss
    #: reductions stay fp32) or "fp32" (off).
    precision: Literal["fp32", "bf16"] = "fp32"
    #: Metrics stay on the device and are averaged over workers and copied to the host once every this many
    #: steps (and at checkpoints): a host sync per micro-batch would stall a GPU. Every step is still logged.
    metrics_every: int = Field(10, ge=1)

    def micro_batch(self, num_workers: int) -> int:
        """Samples per worker per micro-batch: ``batch_size / (num_workers · grad_accum)``."""
        return self.batch_size // (num_workers * self.grad_accum)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimisation step ``step`` (1-based)."""
        # diffusers' get_cosine_schedule_with_warmup at the same step, plus the min_lr_ratio floor it lacks; kept
        # as a pure function of the step (not a stateful LambdaLR) so that a resumed run continues it exactly.
        import math

        if self.warmup_steps and step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class DiffusionTrainConfig(StageTrainConfig):
    """The diffusion stage's recipe (CDC-style): loss = w_mse · min(SNR, snr_clip)-weighted MSE on the
    predicted clean residual + ρ · LPIPS on the predicted clean image, EMA weights for sampling.

    ``mse_weight = 1, lpips_weight = 0, snr_clip = 0`` is the plain parameterisation loss (MSE on
    whatever ``prediction_type`` outputs), the recipe before this one.
    """

    #: The image-loss fields that a privileged decoder trained with ``loss: diffusion`` reuses
    #: (:class:`PrivilegedTrainConfig`).
    IMAGE_LOSS_FIELDS: ClassVar[tuple[str, ...]] = ("mse_weight", "lpips_weight", "lpips_net", "lpips_crop")

    mse_weight: float = Field(1.0, ge=0)
    #: Weight of the x̂0-MSE at noise level t is min(SNR_t, snr_clip) (Min-SNR); 0 = plain MSE on the
    #: network's own target (ε, v or x0).
    snr_clip: float = Field(0.0, ge=0)
    #: ρ of the LPIPS term on the predicted x̂0 (CDC uses ≈ 0.9), with backbone ``lpips_net``.
    lpips_weight: float = Field(0.0, ge=0)
    lpips_net: Literal["vgg", "alex"] = "vgg"
    #: LPIPS is computed on a random square of this size inside the crop (0 = whole crop): the
    #: backbone dominates the step time on CPUs.
    lpips_crop: int = Field(0, ge=0)
    #: Exponential moving average of the weights (0 = off); the package stores the EMA weights.
    ema_decay: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _some_loss(self) -> "DiffusionTrainConfig":
        if self.mse_weight == 0 and self.lpips_weight == 0:
            raise ValueError("mse_weight and lpips_weight are both 0: nothing to train")
        return self

    def image_loss(self) -> dict[str, Any]:
        """The :data:`IMAGE_LOSS_FIELDS` and their values."""
        return {k: getattr(self, k) for k in self.IMAGE_LOSS_FIELDS}


class PrivilegedTrainConfig(StageTrainConfig):
    """The privileged decoder's recipe. ``loss``: "mse" is D_e as the method uses it (the fidelity anchor
    CorrDiff corrects towards); "diffusion" trains it with the diffusion stage's image loss instead,
    MSE + ``lpips_weight``·LPIPS(``lpips_net``) on an ``lpips_crop``² window, weights taken from the same
    profile's ``train.diffusion``, the MSE weighted as that loss weighs x̂0's pixel error on average over its
    noise levels (``mse_weight``·s²·E[min(SNR, snr_clip)], :func:`pdc.train.diffusion_pixel_mse_weight`):
    the e2e-lpips control (``pdc evaluate --e2e-lpips``), which
    separates what the diffusion decoder adds from what its LPIPS training term alone buys.
    """

    loss: Literal["mse", "diffusion"] = "mse"


class TrainConfig(_Strict):
    codec: StageTrainConfig = StageTrainConfig()
    #: Where the codec stage starts: "shipped" = the codec of the shipped model's package for the same rate
    #: point (pdc/zoo/small) where its architecture matches model.codec (a warm start, recorded in the
    #: package), else from scratch; "scratch" = always a fresh codec.
    codec_init: Literal["shipped", "scratch"] = "scratch"
    #: Where the diffusion and privileged stages start: "shipped" = the trained network of the shipped
    #: package for the same rate point where it holds one of the profile's architecture (a warm start,
    #: recorded in the package), else a fresh one; "scratch" = always a fresh network. (D_e's copy of g_s
    #: starts from this run's codec either way; its refiner is what carries over.)
    decoders_init: Literal["shipped", "scratch"] = "scratch"
    diffusion: DiffusionTrainConfig = DiffusionTrainConfig()
    privileged: PrivilegedTrainConfig = PrivilegedTrainConfig()
    #: Images (crops) the correction stage simulates the encoder on to fit the λ statistics.
    correction_images: int = Field(16, ge=1)
    correction_crop: int = Field(128, ge=64)


class ScalingConfig(_Strict):
    """How each training stage is spread over data-parallel workers (Ray Train, see :mod:`pdc.scale`).

    With ``num_workers: 1`` the CLI and ``dvc repro`` train in their own process (no Ray); more workers
    run the same stage code under Ray Train's ``TorchTrainer`` with DDP (the Prefect flow always does).
    """

    num_workers: int = Field(1, ge=1, le=1024)
    #: GPUs for the workers: "auto" = when the Ray cluster has ``gpus_per_worker`` per worker (asked of
    #: the cluster, not of the machine that launches the run).
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    #: DataLoader processes per worker; each reads its own part of the shards.
    loader_workers: int = Field(0, ge=0, le=64)
    #: Ray Train's run folder (state, logs, every reported checkpoint): a folder or a URL (``s3://…``); null =
    #: ``checkpoints/ray`` under the working directory. A restart or rerun resumes from it on any node; on a
    #: multi-node cluster the data and the model folders must also be on storage every node sees.
    storage_path: str | None = None
    #: Worker-group restarts after a worker or node failure; each restart resumes from the checkpoint.
    max_failures: int = Field(2, ge=0)


class Profile(_Strict):
    """A model size and its training schedule (``profiles.<name>`` in ``params.yaml``)."""

    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    scaling: ScalingConfig = ScalingConfig()

    @model_validator(mode="after")
    def _batches_split_evenly(self) -> "Profile":
        if self.train.codec.precision != "fp32":
            raise ValueError("train.codec.precision must be fp32: the entropy models' likelihoods (the rate term) "
                             "lose too much in bf16")
        n = self.scaling.num_workers
        for name in ("codec", "diffusion", "privileged"):
            cfg: StageTrainConfig = getattr(self.train, name)
            if cfg.batch_size % (n * cfg.grad_accum):
                raise ValueError(
                    f"train.{name}.batch_size={cfg.batch_size} does not split into scaling.num_workers={n} × "
                    f"train.{name}.grad_accum={cfg.grad_accum} equal micro-batches"
                )
        return self


def parse_gammas(text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """``"0.25,0.5"`` or ``[0.25, 0.5]`` → (0.25, 0.5); ``"none"``/``""`` → (); None → None (default sweep)."""
    if text is None:
        return None
    if isinstance(text, str):
        t = text.strip()
        if t.lower() in ("", "none", "off"):
            return ()
        try:
            values = tuple(float(v) for v in t.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"gammas: expected comma-separated numbers in [0, 1], got {text!r}") from None
    else:
        values = tuple(float(v) for v in text)
    bad = [g for g in values if not 0.0 <= g <= 1.0]
    if bad:
        raise ConfigError(f"gammas: γ must lie in [0, 1], got {bad[0]}")
    return values


class EvalConfig(_Strict):
    """What the pipeline's evaluate stage measures (validation for the promotion rule)."""

    #: Test images for the champion rule: a shards folder means its val split (images the model never
    #: trained on); any image folder works too. Training images among them are refused.
    images: str = "data/shards"
    fid_images: str | None = None
    #: Centre crop for quick CPU evaluation; 0 = full images.
    crop: int = Field(256, ge=0)
    limit: int | None = Field(None, ge=1)
    #: Comma-separated correction strengths γ traced on the distortion–perception curve (a string,
    #: because DVC cannot interpolate lists into a command line).
    gammas: str = "0.5,1.0"

    @field_validator("gammas")
    @classmethod
    def _gammas(cls, v: str) -> str:
        try:
            values = parse_gammas(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if not values:
            raise ValueError("needs at least one γ, e.g. '0.5,1.0'")
        return v

    @property
    def gamma_values(self) -> tuple[float, ...]:
        return parse_gammas(self.gammas)


class PromotionConfig(_Strict):
    """The rule that moves the registry's ``champion`` alias (see :mod:`pdc.promotion`)."""

    #: The new version must need fewer bits for the same LPIPS (BD-rate on LPIPS below this, in %).
    max_bd_rate_lpips: float = 0.0
    #: …and may not lose more than this much mean CorrDiff PSNR against the champion.
    max_psnr_drop_db: float = Field(0.5, ge=0)


class PipelineConfig(_Strict):
    data: str = "data/raw"
    shards: str = "data/shards"
    shard_size: int = Field(16, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    experiment: str = "corrdiff"
    registered_model: str = "corrdiff"
    #: Cron schedule of the Prefect retraining deployment (``python -m flows.schedule``).
    retrain_cron: str = "0 3 * * 1"
    evaluate: EvalConfig = EvalConfig()
    promotion: PromotionConfig = PromotionConfig()
    #: Production switch. False (experiments, ``dvc exp run``): the pipeline trains, evaluates and logs to
    #: MLflow, but registers no version and never moves ``champion``. True (``dvc exp run -S
    #: pipeline.promote=true``; ``pdc pipeline promote`` / ``make promote`` do the same for the workspace's
    #: model set): register a version and apply the champion rule.
    promote: bool = False
    #: MLflow tracking store: a URI, or a path to an sqlite file relative to the project root (the folder
    #: holding params.yaml). Precedence: ``$MLFLOW_TRACKING_URI``, ``$PDC_TRACKING_URI``, this, the project's
    #: ``mlflow.db`` (:func:`pdc.tracking.tracking_uri`). Training stages log live to MLflow only when a store
    #: is set here or in either environment variable.
    tracking_uri: str | None = None


class RatePoint(NamedTuple):
    """One operating point of the codec: its name in params.yaml and the λ_rd its codec trains with.

    The same pair travels in every package (``model.json`` → ``rate_point``), model set, evaluation
    label and registry tag, so a rate point has one identity everywhere.
    """

    name: str
    lambda_rd: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lambda_rd": self.lambda_rd}

    @classmethod
    def from_meta(cls, value: Any) -> "RatePoint | None":
        """From package metadata: ``{"name", "lambda_rd"}`` (a bare number from older packages: no name)."""
        if isinstance(value, dict) and "lambda_rd" in value:
            return cls(str(value.get("name") or ""), float(value["lambda_rd"]))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls("", float(value))
        return None


class Params(_Strict):
    """The whole ``params.yaml``."""

    profile: str = "tiny"
    #: Named rate points: one codec per λ_rd (loss R + λ_rd · 255² · MSE), e.g. {r0: 0.0018}.
    rate_points: dict[str, float]
    pipeline: PipelineConfig = PipelineConfig()
    profiles: dict[str, Profile]

    @field_validator("rate_points")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(r <= 0 for r in v.values()):
            raise ValueError("needs at least one positive λ_rd")
        return v

    @property
    def active(self) -> Profile:
        return self.profiles[self.profile]

    def rate_names(self) -> list[str]:
        """Rate point names ordered by λ_rd (low rate first)."""
        return sorted(self.rate_points, key=self.rate_points.__getitem__)

    def rate_point(self, name: str) -> RatePoint:
        if name not in self.rate_points:
            raise ConfigError(f"unknown rate point {name!r} (params.yaml has: {', '.join(self.rate_names())})")
        return RatePoint(name, self.rate_points[name])


def explain_validation(exc: ValidationError, where: str) -> ConfigError:
    """One-line :class:`ConfigError` naming the first offending key (pydantic's "Value error, " dropped)."""
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")


def parse_model_config(data: dict[str, Any], where: str = "model config") -> ModelConfig:
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise explain_validation(exc, where) from None


def parse_profile(data: dict[str, Any], where: str = "profile") -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise explain_validation(exc, where) from None


def load_params(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """Read and validate ``params.yaml``; ``profile`` overrides its ``profile:`` key."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    if profile is not None:
        doc["profile"] = profile
    try:
        params = Params.model_validate(doc)
    except ValidationError as exc:
        raise explain_validation(exc, str(p)) from None
    if params.profile not in params.profiles:
        raise ConfigError(f"{p}: unknown profile {params.profile!r} (have: {', '.join(params.profiles)})")
    return params
