"""The four training stages as plain functions: ``(model, data, config) -> model + metrics``.

Each stage trains one part of a :class:`~pdc.models.package.CorrDiffModel` and leaves the others
frozen, in the order of the design (codec → diffusion → privileged decoder → correction weighting).
They take any iterator of (B, 3, crop, crop) batches in [0, 1] (see :mod:`pdc.data`), so the same
function runs from the CLI, a DVC stage or a Prefect/Ray task.

Resumability: every ``checkpoint_every`` steps the stage writes ``<workdir>/<stage>.ckpt.pt``
atomically (module, optimizer and EMA states, step, loss history, and a fingerprint of the run's
identity: configuration except ``steps``, frozen inputs, and the caller's data and code versions).
Called again with the same workdir and identity it continues from that step (also when ``steps`` was
raised) instead of starting over; a checkpoint of another identity is ignored (training restarts).
A resumed run tells a :mod:`pdc.data.loader` stream its step (``start_at``), so the crops go on from a
fresh segment of the stream instead of replaying those of steps 1…step.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel, compute_snr
from torch import nn

from pdc.config import DiffusionTrainConfig, PrivilegedTrainConfig, StageTrainConfig
from pdc.devices import training_backends
from pdc.distributed import (SINGLE, Dist, average_grads, check_same_step, gather_objects, mean_over_workers,
                             no_sync, step_generator, wrap)
from pdc.fsutil import atomic_torch_save
from pdc.metrics import psnr
from pdc.models.codec import quantized_latent
from pdc.models.diffusion import split_prediction, training_target
from pdc.models.correction import fit_tables
from pdc.models.package import CorrDiffModel
from pdc.models.sampler import correctable_steps, sample
from pdc.progress import progress_bar

#: Optional metric sink ``log(name, value, step)``: MLflow, a progress bar, a test list…
MetricLogger = Callable[[str, float, int], None]


class StageResult(NamedTuple):
    steps: int  # optimisation steps completed in total
    resumed_from: int  # step the run started at (0 = fresh)
    final_loss: float
    metrics: dict[str, float]
    history: list[float]  # loss per step, from step 1 (including steps before a resume)


#: Settings that say how long, how often, how the batch is split or in which precision the forward runs,
#: not what is trained: a run that only changes these continues from its checkpoint.
_NOT_IDENTITY = {"steps", "checkpoint_every", "grad_accum", "precision", "metrics_every"}


def _fingerprint(*parts: object) -> str:
    """Identity of a training run: a checkpoint is resumed only by a run with the same one.

    The parts are the configuration (minus :data:`_NOT_IDENTITY`), the frozen inputs' hashes
    and the caller's ``identity`` (data and code versions, see :func:`pdc.stages.run_stage`).
    """
    import hashlib

    def text(p: object) -> str:
        if isinstance(p, StageTrainConfig):
            return p.model_dump_json(exclude=_NOT_IDENTITY)
        return p.model_dump_json() if hasattr(p, "model_dump_json") else repr(p)

    return hashlib.sha256("|".join(text(p) for p in parts).encode()).hexdigest()[:16]


def _part_hash(module: nn.Module) -> str:
    from pdc.models.package import state_digest

    return state_digest(module.state_dict())[:16]


def ema_of(module: nn.Module, decay: float) -> EMAModel:
    """diffusers' EMA of ``module``'s parameters (the weights used for sampling; our networks have no
    floating-point buffers). The effective decay ramps up as min(decay, (1 + n)/(10 + n)) at update n, so that
    early averages are not dominated by the random initialisation; ``update_after_step=-1`` makes diffusers
    count n from the first update (its default starts one update later)."""
    return EMAModel(module.parameters(), decay=decay, update_after_step=-1)


class StepContext(NamedTuple):
    """Where a micro-batch sits: optimisation ``step`` (1-based), index of its first sample in the
    step's global batch, and that batch's size (``cfg.batch_size``, over all workers)."""

    step: int
    start: int
    global_batch: int

    def sample_slice(self, n: int) -> slice:
        return slice(self.start, self.start + n)


#: A stage's loss on one micro-batch: ``(loss, scalar metrics)``, the metrics as 0-d tensors on the device (no
#: host sync; the loop copies them out every ``metrics_every`` steps); the loop owns backward and the step.
LossFn = Callable[[torch.Tensor, StepContext], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def _under_training_backends(run: Callable[..., StageResult]) -> Callable[..., StageResult]:
    """:func:`_run` under :func:`~pdc.devices.training_backends` of its modules' device: ``cudnn.benchmark``
    on CUDA for the loop, restored afterwards (decoding keeps its deterministic kernels); nothing on the CPU."""

    @functools.wraps(run)
    def wrapped(stage: str, modules: dict[str, nn.Module], *args, **kwargs) -> StageResult:
        with training_backends(next(next(iter(modules.values())).parameters()).device):
            return run(stage, modules, *args, **kwargs)

    return wrapped


def _latest_state(ckpt: Path | None, d: Dist, fingerprint: str) -> dict | None:
    """The checkpoint to resume from: of the workdir's file and the store's latest (``d.store``: Ray Train's
    storage, which a restart on another node still reaches), the furthest one of this run's identity; else
    whichever exists (the caller then says it belongs to another run), else None."""
    files = [p for p in (ckpt, d.store.latest() if d.store is not None else None) if p is not None and p.is_file()]
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in files]
    ours = [st for st in states if st.get("fingerprint") == fingerprint]
    if ours:
        return max(ours, key=lambda st: int(st["step"]))
    return states[0] if states else None


@_under_training_backends
def _run(
    stage: str,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    loss_fn: LossFn,
    batches: Iterator[torch.Tensor],
    cfg: StageTrainConfig,
    workdir: Path | None,
    log: MetricLogger | None,
    fingerprint: str = "",
    ema_decay: float = 0.0,
    *,
    ddp: nn.Module | None = None,  # the DDP wrapper (or the plain module on one worker)
    clip: list[nn.Parameter] | None = None,
    after_step: Callable[[], dict[str, torch.Tensor]] | None = None,
    d: Dist = SINGLE,
) -> StageResult:
    """The shared loop: resume, schedule the learning rate, accumulate, step, average, log, checkpoint.

    One optimisation step = ``cfg.grad_accum`` micro-batches from ``batches`` (this worker's share of
    the global batch), each forward under autocast when ``cfg.precision`` asks for it, gradients kept
    local (DDP ``no_sync``) until the last; then gradient clipping (``clip``, norm 1), the main
    optimiser's step at ``cfg.lr_at(step)`` and ``after_step`` (the codec's aux loss). ``modules`` are
    the plain modules (state, EMA, checkpoint); ``ddp`` is the wrapper their forward goes through on
    several workers. Metrics are averaged over micro-batches on the device and, every ``cfg.metrics_every``
    steps and before a checkpoint, over workers in one collective and copied to the host: one sync per
    window, not per micro-batch; every step is still logged. Only rank 0 logs and writes checkpoints
    (every worker reads them on resume, so they must be on shared storage).
    """
    ckpt = workdir / f"{stage}.ckpt.pt" if workdir is not None else None
    start, history = 0, []
    emas = {name: ema_of(m, ema_decay) for name, m in modules.items()} if ema_decay > 0 else {}
    state = _latest_state(ckpt, d, fingerprint)
    if state is not None and state.get("fingerprint") == fingerprint:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optim"][name])
        for name, ema in emas.items():
            ema.load_state_dict(state["ema"][name])
            ema.to(next(modules[name].parameters()).device)  # the checkpoint was loaded onto the CPU
        start, history = int(state["step"]), list(state["losses"])
    elif state is not None and d.is_main:
        print(f"{ckpt}: checkpoint of another run (configuration, data or code changed): training {stage} from step 0",
              file=sys.stderr, flush=True)
    device = next(next(iter(modules.values())).parameters()).device
    check_same_step(start, d, device, f"{stage}: workers resumed from different checkpoints ({ckpt}); is it on storage "
                              "every worker sees?")
    resumed_from = start
    start_at = getattr(batches, "start_at", None)  # a pdc.data.loader stream: continue, do not replay steps 1…start
    if start and start_at is not None:
        start_at(start)
    torch.manual_seed(cfg.seed + start + 104_729 * d.rank)  # workers draw different model-internal noise
    for m in modules.values():
        m.train()
    bar = progress_bar(cfg.steps, stage, unit="step", initial=start) if d.is_main else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    accum, local_batch = cfg.grad_accum, cfg.batch_size // d.world
    step, last = start, {}
    pending: list[tuple[int, float, dict[str, torch.Tensor]]] = []  # steps whose metrics are still on the device
    t_window, t_first, first_step = time.perf_counter(), None, start  # steps_per_s leaves out the first step

    def flush() -> None:
        """Average the pending steps' metrics over workers (one collective, one copy), then log them."""
        nonlocal last, t_window
        keys = sorted(pending[0][2])
        table = mean_over_workers(torch.stack([torch.stack([m[k].float() for k in keys]) for *_, m in pending]),
                                  d).tolist()
        now = time.perf_counter()
        rate = {"images_per_s": cfg.batch_size * len(pending) / max(now - t_window, 1e-9)}
        if t_first is not None and pending[-1][0] > first_step:
            rate["steps_per_s"] = (pending[-1][0] - first_step) / max(now - t_first, 1e-9)  # mean since the first step
        for (k_step, lr, _), row in zip(pending, table):
            last = {**dict(zip(keys, row)), "lr": lr, **rate}
            history.append(last["loss"])
            if log is not None and d.is_main:
                for k, v in last.items():
                    log(f"{stage}/{k}", v, k_step)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()}, refresh=False)
        pending.clear()
        t_window = now

    for step in range(start + 1, cfg.steps + 1):
        lr = cfg.lr_at(step)
        for group in optimizers["main"].param_groups:
            group["lr"] = lr
        optimizers["main"].zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for m in range(accum):
            x = next(batches).to(device, non_blocking=True)
            ctx = StepContext(step, d.rank * local_batch + m * x.shape[0], cfg.batch_size)
            with no_sync(ddp, m < accum - 1):
                with autocast:
                    loss, metrics = loss_fn(x, ctx)
                (loss.float() / accum).backward()
            for k, v in metrics.items():
                sums[k] = sums[k] + v.detach() / accum if k in sums else v.detach() / accum
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip, 1.0)
        optimizers["main"].step()
        if after_step is not None:
            sums.update({k: v.detach() for k, v in after_step().items()})
        for name, ema in emas.items():
            ema.step(modules[name].parameters())
        pending.append((step, lr, sums))
        if t_first is None:
            t_first, first_step = time.perf_counter(), step
        checkpoint_now = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if checkpoint_now or step % cfg.metrics_every == 0:
            flush()  # on every worker alike: the mean is a collective
        if bar is not None:
            bar.update(1)
        if checkpoint_now and ckpt is not None and d.is_main:
            atomic_torch_save(
                {
                    "step": step,
                    "modules": {n: m.state_dict() for n, m in modules.items()},
                    "optim": {n: o.state_dict() for n, o in optimizers.items()},
                    "losses": history,
                    "fingerprint": fingerprint,
                    **({"ema": {n: e.state_dict() for n, e in emas.items()}} if emas else {}),
                },
                ckpt,
            )
        if checkpoint_now and d.store is not None:  # every worker: Ray Train's report is a barrier
            d.store.persist(ckpt if d.is_main else None, {"step": step, "loss": last["loss"]})
    if bar is not None:
        bar.close()
    for name, ema in emas.items():
        ema.copy_to(modules[name].parameters())
    for m in modules.values():
        m.eval()
    final = float(sum(history[-20:]) / max(1, len(history[-20:]))) if history else math.nan
    return StageResult(cfg.steps, resumed_from, final, {k: float(v) for k, v in last.items()}, history)


# ----------------------------------------------------------------------------------------------------
def train_codec(
    model: CorrDiffModel,
    lmbda: float,
    batches: Iterator[torch.Tensor],
    cfg: StageTrainConfig,
    workdir: Path | None = None,
    log: MetricLogger | None = None,
    identity: str = "",
    d: Dist = SINGLE,
) -> StageResult:
    """Stage 1: the hyperprior codec, loss = bpp + λ_rd · 255² · MSE, plus CompressAI's aux loss.

    On several workers the main parameters go through DDP; the entropy bottleneck's ``quantiles``
    (which only the aux loss reaches) are left out of DDP and their gradients averaged by hand, so
    every worker keeps the same quantiles (and hence the same CDF tables after ``update()``).
    """
    codec = model.codec
    aux_names = [n for n, _ in codec.named_parameters() if n.endswith(".quantiles")]
    main_params = [p for n, p in codec.named_parameters() if n not in aux_names]
    aux_params = [p for n, p in codec.named_parameters() if n in aux_names]
    opt = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    forward = wrap(codec, d, ignore=aux_names)

    def loss_fn(x: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = forward(x)
        n_px = x.shape[0] * x.shape[2] * x.shape[3]
        rate = sum(-torch.log2(lk.float()).sum() for lk in out["likelihoods"].values()) / n_px
        mse = F.mse_loss(out["x_hat"].float(), x)
        loss = rate + lmbda * 255**2 * mse
        return loss, {"loss": loss, "bpp": rate, "psnr": _psnr_of_mse(mse)}

    def aux_step() -> dict[str, torch.Tensor]:
        aux = codec.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        average_grads(aux_params, d)
        aux_opt.step()
        return {"aux_loss": aux}

    fp = _fingerprint(model.config.codec, cfg, lmbda, identity)
    result = _run("codec", {"codec": codec}, {"main": opt, "aux": aux_opt}, loss_fn, batches, cfg, workdir, log, fp,
                  ddp=forward, clip=main_params, after_step=aux_step, d=d)
    result.metrics["aux_loss_trained"] = result.metrics.get("aux_loss", math.nan)
    result.metrics["aux_loss"] = fit_entropy_bottleneck(codec)
    codec.update(force=True)
    model.invalidate_hash()
    return result


def fit_entropy_bottleneck(codec: nn.Module, max_steps: int = 10_000, lr: float = 0.1, min_lr: float = 1e-4,
                           tol: float = 1.0, patience: int = 200) -> float:
    """Fit the entropy bottleneck's quantiles (CompressAI's aux loss) to the learned density of z.

    The quantiles bound the CDF tables ``update()`` builds for z; the aux loss depends on the bottleneck's
    parameters alone (no data), so it is finished here in seconds instead of trailing the main loss at
    lr 1e-3 (measured on a 1000-step codec: 265 → 75 after 3000 steps at 1e-3, < 1 here in 4 s). The
    loss is an L1 of logits, so Adam moves each quantile by ≈ lr per step: far moves at ``lr``, and the
    rate drops tenfold whenever ``patience`` steps fail to cut the loss by a tenth, down to ``min_lr``.
    Deterministic, so every data-parallel worker reaches the same tables. Returns the final aux loss.
    """
    quantiles = [p for n, p in codec.named_parameters() if n.endswith(".quantiles")]
    if not quantiles:
        return math.nan
    opt = torch.optim.Adam(quantiles, lr=lr)
    aux = codec.aux_loss()
    mark = aux.item()
    for k in range(1, max_steps + 1):
        if aux.item() < tol:
            break
        opt.zero_grad(set_to_none=True)
        aux.backward(inputs=quantiles)
        opt.step()
        aux = codec.aux_loss()
        if k % patience == 0:
            if aux.item() > 0.9 * mark:
                lr /= 10
                if lr < min_lr:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr
            mark = aux.item()
    return float(aux.item())


def _psnr_of_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of an MSE of [0, 1] images, as a detached device scalar (the training logs' PSNR)."""
    return -10 * torch.log10(mse.detach().float().clamp_min(1e-10))


def _frozen_latents(model: CorrDiffModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # fp32 even inside a bf16 step: ŷ must round exactly as the entropy coder will at test time.
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        x = x.float()
        y_hat = quantized_latent(model.codec, x)
        return y_hat, model.codec.g_s(y_hat).clamp(0, 1)


#: LPIPS of a reconstruction against its original, on a window drawn from the step's generator ``g``.
PerceptualLoss = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _perceptual_loss(cfg: DiffusionTrainConfig) -> PerceptualLoss | None:
    """The diffusion recipe's LPIPS term (None when ``lpips_weight`` is 0): LPIPS(``lpips_net``) on a random
    ``lpips_crop``² window. The window comes from the step's generator, so every worker cuts the same one and
    the step does not depend on how the batch is split; it is drawn after whatever the caller drew from it."""
    if cfg.lpips_weight <= 0:
        return None
    from pdc.metrics.perceptual import lpips_model

    net = lpips_model(cfg.lpips_net)

    def term(x_hat: torch.Tensor, x_ref: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if cfg.lpips_crop and cfg.lpips_crop < min(x_ref.shape[-2:]):
            c = cfg.lpips_crop
            # the window's corner stays on the device: index tensors instead of Python slices (no host sync)
            i, j = torch.randint(0, min(x_ref.shape[-2:]) - c + 1, (2,), generator=g, device=x_ref.device)
            span = torch.arange(c, device=x_ref.device)
            rows, cols = i + span, j + span
            x_hat = x_hat.index_select(-2, rows).index_select(-1, cols)
            x_ref = x_ref.index_select(-2, rows).index_select(-1, cols)
        return net.to(x_ref.device)(x_hat * 2 - 1, x_ref * 2 - 1, normalize=False).float().mean()

    return term


def train_diffusion(
    model: CorrDiffModel,
    batches: Iterator[torch.Tensor],
    cfg: DiffusionTrainConfig,
    workdir: Path | None = None,
    log: MetricLogger | None = None,
    identity: str = "",
    d: Dist = SINGLE,
) -> StageResult:
    """Stage 2: denoising on the residual r0 = s·(x − g_s(ŷ)), codec frozen.

    Loss (see :class:`~pdc.config.DiffusionTrainConfig`)::

        r_t = √ᾱ r0 + √(1−ᾱ) ε,   (r̂0, ε̂) = split_prediction(net(r_t, t, ŷ, x_b))
        mse   = mean(min(SNR_t, snr_clip) · (r̂0 − r0)²)      or, with snr_clip = 0, MSE on the net's target
        lpips = LPIPS(x_b + r̂0/s, x)                          on a random lpips_crop² window
        loss  = mse_weight · mse + lpips_weight · lpips

    With ``ema_decay`` the package receives the EMA of the weights.
    """
    cfg = cfg if isinstance(cfg, DiffusionTrainConfig) else DiffusionTrainConfig(**cfg.model_dump())
    model.codec.eval().requires_grad_(False)
    net = model.diffusion
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    ac = model.scheduler.alphas_cumprod
    dcfg = model.config.diffusion
    s, n_t, kind = dcfg.residual_scale, dcfg.train_timesteps, dcfg.prediction_type
    perceptual = _perceptual_loss(cfg)
    forward = wrap(net, d)

    def loss_fn(x: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y_hat, x_base = _frozen_latents(model, x)
        r0 = (x - x_base) * s
        # t, noise and the LPIPS window are drawn for the whole global batch from the step's stream, and
        # each worker keeps its samples' share: the step does not depend on how the batch is split.
        g, mine = step_generator(cfg.seed, ctx.step, x.device), ctx.sample_slice(x.shape[0])
        t = torch.randint(0, n_t, (ctx.global_batch,), generator=g, device=x.device)[mine]
        noise = torch.randn((ctx.global_batch, *r0.shape[1:]), generator=g, device=x.device, dtype=r0.dtype)[mine]
        a = ac.to(x.device)[t].view(-1, 1, 1, 1).to(x.dtype)
        r_t = a.sqrt() * r0 + (1 - a).sqrt() * noise
        out = forward(r_t, t, y_hat, x_base).float()
        r0_hat = split_prediction(kind, out, r_t, a)[0]
        if cfg.snr_clip > 0:
            weight = compute_snr(model.scheduler, t).clamp(max=cfg.snr_clip).view(-1, 1, 1, 1)
            mse = (weight * (r0_hat - r0) ** 2).mean()
        else:
            mse = F.mse_loss(out, training_target(kind, r0, noise, a))
        metrics = {"mse": mse}
        loss = cfg.mse_weight * mse
        if perceptual is not None:
            p = perceptual((x_base + r0_hat / s).clamp(0, 1), x, g)
            loss = loss + cfg.lpips_weight * p
            metrics["lpips"] = p
        return loss, {"loss": loss, **metrics}

    fp = _fingerprint(model.config.diffusion, cfg, _part_hash(model.codec), identity)
    result = _run("diffusion", {"diffusion": net}, {"main": opt}, loss_fn, batches, cfg, workdir, log, fp,
                  ema_decay=cfg.ema_decay, ddp=forward, clip=list(net.parameters()), d=d)
    model.codec.requires_grad_(True)
    model.invalidate_hash()
    return result


def diffusion_pixel_mse_weight(model: CorrDiffModel, cfg: DiffusionTrainConfig) -> float:
    """The weight the diffusion stage's loss puts on the pixel MSE of its x̂0, averaged over its training noise
    levels (t uniform): ``mse_weight · s² · E_t[w_t]``, s the residual scale, w_t = min(SNR_t, snr_clip) with
    Min-SNR, else what the MSE on the network's own target costs per unit x̂0 error (1 for x0, SNR_t for ε,
    SNR_t + 1 for v). The e2e-lpips control trains D_e with this weight beside the same LPIPS term, so both
    decoders strike the same balance of distortion and perception (0.1 · 8² · 2.0 ≈ 12.8 for the CPU
    profiles, not the nominal 0.1, which would leave that control LPIPS-only)."""
    dcfg = model.config.diffusion
    snr = compute_snr(model.scheduler, torch.arange(dcfg.train_timesteps)).double()
    if cfg.snr_clip > 0:
        w = snr.clamp(max=cfg.snr_clip)
    else:
        w = {"sample": torch.ones_like(snr), "epsilon": snr, "v_prediction": snr + 1}[dcfg.prediction_type]
    return cfg.mse_weight * dcfg.residual_scale**2 * float(w.mean())


def train_privileged_decoder(
    model: CorrDiffModel,
    batches: Iterator[torch.Tensor],
    cfg: PrivilegedTrainConfig | StageTrainConfig,
    workdir: Path | None = None,
    log: MetricLogger | None = None,
    identity: str = "",
    d: Dist = SINGLE,
    *,
    loss_weights: DiffusionTrainConfig | None = None,
) -> StageResult:
    """Stage 3: D_e on frozen ŷ, starting from the trained g_s (a fresh run copies it in).

    Loss ``cfg.loss``: "mse", or "diffusion": ``loss_weights``' image loss (the diffusion stage's
    config, :data:`~pdc.config.DiffusionTrainConfig.IMAGE_LOSS_FIELDS`), its MSE weight as the diffusion's
    loss puts it on pixels (:func:`diffusion_pixel_mse_weight`)::

        loss = w_px · MSE(D_e(ŷ), x) + lpips_weight · LPIPS(D_e(ŷ), x)   on a random lpips_crop² window
    """
    cfg = cfg if isinstance(cfg, PrivilegedTrainConfig) else PrivilegedTrainConfig(**cfg.model_dump())
    if cfg.loss == "diffusion" and loss_weights is None:
        raise ValueError("privileged loss 'diffusion' needs loss_weights (the diffusion stage's train config)")
    weights = loss_weights if cfg.loss == "diffusion" else None
    model.codec.eval().requires_grad_(False)
    de = model.privileged
    de.g_s.load_state_dict(model.codec.g_s.state_dict())  # a resumed run then loads its own state
    opt = torch.optim.Adam(de.parameters(), lr=cfg.lr)
    perceptual = _perceptual_loss(weights) if weights is not None else None
    w_px = diffusion_pixel_mse_weight(model, weights) if weights is not None else 1.0
    forward = wrap(de, d)

    def loss_fn(x: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y_hat, _ = _frozen_latents(model, x)
        x_hat = forward(y_hat).float()
        mse = F.mse_loss(x_hat, x)
        metrics = {"psnr": _psnr_of_mse(mse)}
        if weights is None:
            return mse, {"loss": mse, **metrics}
        loss = w_px * mse
        metrics["mse"] = mse
        if perceptual is not None:
            p = perceptual(x_hat, x, step_generator(cfg.seed, ctx.step, x.device))
            loss = loss + weights.lpips_weight * p
            metrics["lpips"] = p
        return loss, {"loss": loss, **metrics}

    # cfg carries ``loss``; with "diffusion" its weights are part of the run's identity too.
    fp = _fingerprint(model.config.privileged, cfg, _part_hash(model.codec), identity,
                      *([weights.image_loss(), model.config.diffusion, w_px] if weights is not None else []))
    result = _run("privileged", {"privileged": de}, {"main": opt}, loss_fn, batches, cfg, workdir, log, fp,
                  ddp=forward, d=d)
    if weights is not None:
        result.metrics["pixel_mse_weight"] = w_px
    model.codec.requires_grad_(True)
    model.invalidate_hash()
    return result


class CorrectionFit(NamedTuple):
    tables: torch.Tensor  # (K, L) per-step pmfs
    eps_mode: str  # the chosen ε̃ variant (see fit_correction)
    report: dict[str, float]  # PSNR/LPIPS per variant, mean λ* per step, bits, gain per bit


#: ε̃ choice: the variant with the lower LPIPS wins if it keeps at least this share of the other
#: variant's PSNR gain over plain diffusion (the method must stay faithful, not only look good).
EPS_MODE_MIN_GAIN_SHARE = 0.5


def fit_correction(
    model: CorrDiffModel,
    images: list[torch.Tensor],
    *,
    seed: int = 0,
    log: MetricLogger | None = None,
    d: Dist = SINGLE,
) -> CorrectionFit:
    """Stage 4: simulate the encoder on ``images``, fit the λ tables, choose ε̃ by measured quality.

    For each ε̃ variant ("network", "rederive") the encoder simulation runs on every image and the λ
    levels it picks are counted per step into rANS tables. Both variants cost the same few bits, so the
    choice is on quality: the lower mean LPIPS wins if its PSNR gain over plain diffusion is at least
    ``EPS_MODE_MIN_GAIN_SHARE`` of the other variant's (else the other wins). The report gives PSNR and
    LPIPS of each variant, of plain diffusion (λ ≡ 0) and of x_e, the λ bits per image under the
    fitted tables, the PSNR gain per λ bit and the mean λ* per corrected step.

    On several workers each simulates ``images[rank::world]`` (image i keeps seed ``seed + i``) and the
    per-image records are gathered, so every worker fits the same tables as one worker would.
    """
    from pdc.metrics.perceptual import lpips
    from pdc.models.correction import encode_levels

    dcfg, ccfg = model.config.diffusion, model.config.correction
    k = dcfg.steps
    coded = correctable_steps(ccfg, k)
    modes = ("network", "rederive")
    common = dict(steps=k, residual_scale=dcfg.residual_scale)
    device = next(model.parameters()).device
    records: list[dict] = []  # one per image: scores per system, levels and λ* per mode

    with torch.no_grad():
        for i in range(d.rank, len(images), d.world):
            x = images[i]
            x = (x if x.dim() == 4 else x.unsqueeze(0)).to(device)
            y, xb = _frozen_latents(model, x)
            xe = model.privileged(y)
            rec: dict = {"i": i}

            def score(name: str, out: torch.Tensor) -> None:
                rec[f"psnr_{name}"], rec[f"lpips_{name}"] = psnr(out, x), lpips(out, x)

            score("diffusion", sample(model.diffusion, model.scheduler, y, xb, seed=seed + i, correction=ccfg,
                                      **common).image)
            score("e2e", xe)
            for mode in modes:
                cc = ccfg.model_copy(update={"eps_mode": mode})
                res = sample(model.diffusion, model.scheduler, y, xb, seed=seed + i, correction=cc, x_e=xe, target=x,
                             **common)
                score(f"corrdiff_{mode}", res.image)
                rec[f"levels_{mode}"] = [int(res.levels[step_k]) for step_k in coded]
                rec[f"stars_{mode}"] = [float(res.lambda_star[j]) for j in range(len(coded))]
            records.append(rec)
    records = sorted(gather_objects(records, d), key=lambda r: r["i"])

    def mean(key: str) -> float:
        return sum(r[key] for r in records) / len(records)

    report = {f"{m}_{name}": mean(f"{m}_{name}") for name in ("diffusion", "e2e", *(f"corrdiff_{x}" for x in modes))
              for m in ("psnr", "lpips")}
    a, b = sorted(modes, key=lambda m: report[f"lpips_corrdiff_{m}"])
    gain = {m: report[f"psnr_corrdiff_{m}"] - report["psnr_diffusion"] for m in (a, b)}
    best = a if gain[a] >= EPS_MODE_MIN_GAIN_SHARE * gain[b] else b
    per_step = [[r[f"levels_{best}"][j] for r in records] for j in range(len(coded))]
    coded_tables = fit_tables(per_step, ccfg.levels)
    tables = torch.full((k, ccfg.levels), 1.0 / ccfg.levels)
    tables[coded] = coded_tables
    bits = [8 * len(encode_levels(r[f"levels_{best}"], coded_tables)) for r in records]
    report["lambda_bits_per_image"] = sum(bits) / len(bits)
    report["psnr_gain_per_lambda_bit"] = (report[f"psnr_corrdiff_{best}"] - report["psnr_diffusion"]) / max(
        report["lambda_bits_per_image"], 1)
    for j, step_k in enumerate(coded):
        report[f"lambda_star_mean_step{step_k}"] = sum(r[f"stars_{best}"][j] for r in records) / len(records)
    if log is not None and d.is_main:
        for name, value in report.items():
            log(f"correction/{name}", value, 0)
    return CorrectionFit(tables, best, report)


def apply_correction_fit(model: CorrDiffModel, fit: CorrectionFit) -> CorrDiffModel:
    """A new model with the fitted tables and ε̃ variant (the config change changes the hash)."""
    return model.with_decode_settings(fit.tables, correction={"eps_mode": fit.eps_mode})
