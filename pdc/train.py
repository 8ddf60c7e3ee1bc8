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
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pdc.config import DiffusionTrainConfig, StageTrainConfig
from pdc.fsutil import atomic_torch_save
from pdc.metrics import psnr
from pdc.models.codec import quantized_latent
from pdc.models.diffusion import split_prediction, training_target
from pdc.models.correction import fit_tables
from pdc.models.package import CorrDiffModel
from pdc.models.sampler import correctable_steps, sample

#: Optional metric sink ``log(name, value, step)``: MLflow, a progress bar, a test list…
MetricLogger = Callable[[str, float, int], None]


class StageResult(NamedTuple):
    steps: int  # optimisation steps completed in total
    resumed_from: int  # step the run started at (0 = fresh)
    final_loss: float
    metrics: dict[str, float]
    history: list[float]  # loss per step, from step 1 (including steps before a resume)


def _progress(total: int, start: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="step", disable=os.environ.get("PDC_NO_PROGRESS") == "1")


#: Settings that say how long or how often, not what is trained: a run that only raises ``steps``
#: continues from its checkpoint.
_NOT_IDENTITY = {"steps", "checkpoint_every"}


def _fingerprint(*parts: object) -> str:
    """Identity of a training run: a checkpoint is resumed only by a run with the same one.

    The parts are the configuration (minus ``steps``/``checkpoint_every``), the frozen inputs' hashes
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


class EMA:
    """Exponential moving average of a module's floating-point state (weights used for sampling).

    The effective decay ramps up as min(decay, (1 + n)/(10 + n)) so that early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1 - d)

    def state_dict(self) -> dict[str, object]:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.updates = int(state["updates"])  # type: ignore[arg-type]
        for k, v in state["shadow"].items():  # type: ignore[union-attr]
            self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict({**module.state_dict(), **self.shadow})


def _run(
    stage: str,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    step_fn: Callable[[torch.Tensor], dict[str, float]],
    batches: Iterator[torch.Tensor],
    cfg: StageTrainConfig,
    workdir: Path | None,
    log: MetricLogger | None,
    fingerprint: str = "",
    ema_decay: float = 0.0,
) -> StageResult:
    """The shared loop: resume, schedule the learning rate, step, average, log, checkpoint.

    ``optimizers["main"]`` follows ``cfg.lr_at(step)``; others keep their own rate. With ``ema_decay``
    the modules' EMA is kept beside them (and checkpointed) and copied into them at the end.
    """
    ckpt = workdir / f"{stage}.ckpt.pt" if workdir is not None else None
    start, history = 0, []
    emas = {name: EMA(m, ema_decay) for name, m in modules.items()} if ema_decay > 0 else {}
    state = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt is not None and ckpt.is_file() else None
    if state is not None and state.get("fingerprint") == fingerprint:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optim"][name])
        for name, ema in emas.items():
            ema.load_state_dict(state["ema"][name])
        start, history = int(state["step"]), list(state["losses"])
    resumed_from = start
    torch.manual_seed(cfg.seed + start)
    for m in modules.values():
        m.train()
    bar = _progress(cfg.steps, start, stage)
    device = next(next(iter(modules.values())).parameters()).device
    step, last = start, {}
    for step in range(start + 1, cfg.steps + 1):
        lr = cfg.lr_at(step)
        for group in optimizers["main"].param_groups:
            group["lr"] = lr
        t_step = time.perf_counter()
        last = step_fn(next(batches).to(device, non_blocking=True))
        for name, ema in emas.items():
            ema.update(modules[name])
        last["lr"] = lr
        last["images_per_s"] = cfg.batch_size / max(time.perf_counter() - t_step, 1e-9)
        history.append(last["loss"])
        if log is not None:
            for k, v in last.items():
                log(f"{stage}/{k}", v, step)
        bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()}, refresh=False)
        bar.update(1)
        if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
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
    bar.close()
    for name, ema in emas.items():
        ema.copy_to(modules[name])
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
) -> StageResult:
    """Stage 1: the hyperprior codec, loss = bpp + λ_rd · 255² · MSE, plus CompressAI's aux loss."""
    codec = model.codec
    main_params = [p for n, p in codec.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in codec.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)

    def step(x: torch.Tensor) -> dict[str, float]:
        out = codec(x)
        n_px = x.shape[0] * x.shape[2] * x.shape[3]
        rate = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values()) / n_px
        mse = F.mse_loss(out["x_hat"], x)
        loss = rate + lmbda * 255**2 * mse
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux = codec.aux_loss()
        aux_opt.zero_grad()
        aux.backward()
        aux_opt.step()
        return {"loss": loss.item(), "bpp": rate.item(), "psnr": 10 * math.log10(1 / max(mse.item(), 1e-10))}

    fp = _fingerprint(model.config.codec, cfg, lmbda, identity)
    result = _run("codec", {"codec": codec}, {"main": opt, "aux": aux_opt}, step, batches, cfg, workdir, log, fp)
    codec.update(force=True)
    model.invalidate_hash()
    return result


def _frozen_latents(model: CorrDiffModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        y_hat = quantized_latent(model.codec, x)
        return y_hat, model.codec.g_s(y_hat).clamp(0, 1)


def train_diffusion(
    model: CorrDiffModel,
    batches: Iterator[torch.Tensor],
    cfg: DiffusionTrainConfig,
    workdir: Path | None = None,
    log: MetricLogger | None = None,
    identity: str = "",
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
    perceptual = None
    if cfg.lpips_weight > 0:
        from pdc.metrics.perceptual import lpips_model

        perceptual = lpips_model(cfg.lpips_net)

    def step(x: torch.Tensor) -> dict[str, float]:
        y_hat, x_base = _frozen_latents(model, x)
        r0 = (x - x_base) * s
        t = torch.randint(0, n_t, (x.shape[0],), device=x.device)
        a = ac.to(x.device)[t].view(-1, 1, 1, 1).to(x.dtype)
        noise = torch.randn_like(r0)
        r_t = a.sqrt() * r0 + (1 - a).sqrt() * noise
        out = net(r_t, t, y_hat, x_base)
        r0_hat = split_prediction(kind, out, r_t, a)[0]
        if cfg.snr_clip > 0:
            weight = (a / (1 - a)).clamp(max=cfg.snr_clip)
            mse = (weight * (r0_hat - r0) ** 2).mean()
        else:
            mse = F.mse_loss(out, training_target(kind, r0, noise, a))
        metrics = {"mse": mse.item()}
        loss = cfg.mse_weight * mse
        if perceptual is not None:
            x_hat = (x_base + r0_hat / s).clamp(0, 1)
            x_ref = x
            if cfg.lpips_crop and cfg.lpips_crop < min(x.shape[-2:]):
                c = cfg.lpips_crop
                i, j = (int(v) for v in torch.randint(0, min(x.shape[-2:]) - c + 1, (2,)))
                x_hat, x_ref = x_hat[..., i : i + c, j : j + c], x_ref[..., i : i + c, j : j + c]
            p = perceptual.to(x.device)(x_hat * 2 - 1, x_ref * 2 - 1, normalize=False).mean()
            loss = loss + cfg.lpips_weight * p
            metrics["lpips"] = p.item()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), **metrics}

    fp = _fingerprint(model.config.diffusion, cfg, _part_hash(model.codec), identity)
    result = _run("diffusion", {"diffusion": net}, {"main": opt}, step, batches, cfg, workdir, log, fp,
                  ema_decay=cfg.ema_decay)
    model.codec.requires_grad_(True)
    model.invalidate_hash()
    return result


def train_privileged_decoder(
    model: CorrDiffModel,
    batches: Iterator[torch.Tensor],
    cfg: StageTrainConfig,
    workdir: Path | None = None,
    log: MetricLogger | None = None,
    identity: str = "",
) -> StageResult:
    """Stage 3: D_e on frozen ŷ for MSE, starting from the trained g_s (a fresh run copies it in)."""
    model.codec.eval().requires_grad_(False)
    de = model.privileged
    de.g_s.load_state_dict(model.codec.g_s.state_dict())  # a resumed run then loads its own state
    opt = torch.optim.Adam(de.parameters(), lr=cfg.lr)

    def step(x: torch.Tensor) -> dict[str, float]:
        y_hat, _ = _frozen_latents(model, x)
        mse = F.mse_loss(de(y_hat), x)
        opt.zero_grad()
        mse.backward()
        opt.step()
        return {"loss": mse.item(), "psnr": 10 * math.log10(1 / max(mse.item(), 1e-10))}

    fp = _fingerprint(model.config.privileged, cfg, _part_hash(model.codec), identity)
    result = _run("privileged", {"privileged": de}, {"main": opt}, step, batches, cfg, workdir, log, fp)
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
) -> CorrectionFit:
    """Stage 4: simulate the encoder on ``images``, fit the λ tables, choose ε̃ by measured quality.

    For each ε̃ variant ("network", "rederive") the encoder simulation runs on every image and the λ
    levels it picks are counted per step into rANS tables. Both variants cost the same few bits, so the
    choice is on quality: the lower mean LPIPS wins if its PSNR gain over plain diffusion is at least
    ``EPS_MODE_MIN_GAIN_SHARE`` of the other variant's (else the other wins). The report gives PSNR and
    LPIPS of each variant, of plain diffusion (λ ≡ 0) and of x_e, the λ bits per image under the
    fitted tables, the PSNR gain per λ bit and the mean λ* per corrected step.
    """
    from pdc.metrics.perceptual import lpips
    from pdc.models.correction import encode_levels

    dcfg, ccfg = model.config.diffusion, model.config.correction
    k = dcfg.steps
    coded = correctable_steps(ccfg, k)
    report: dict[str, float] = {}
    fits: dict[str, tuple[list[list[int]], list[list[float]]]] = {}

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    with torch.no_grad():
        device = next(model.parameters()).device
        prepared = []
        for x in images:
            x = (x if x.dim() == 4 else x.unsqueeze(0)).to(device)
            y_hat, x_base = _frozen_latents(model, x)
            prepared.append((x, y_hat, x_base, model.privileged(y_hat)))

        def score(name: str, outputs: list[torch.Tensor]) -> None:
            report[f"psnr_{name}"] = mean([psnr(o, p[0]) for o, p in zip(outputs, prepared)])
            report[f"lpips_{name}"] = mean([lpips(o, p[0]) for o, p in zip(outputs, prepared)])

        common = dict(steps=k, residual_scale=dcfg.residual_scale)
        score("diffusion", [sample(model.diffusion, model.scheduler, y, xb, seed=seed + i, correction=ccfg, **common).image
                            for i, (x, y, xb, _) in enumerate(prepared)])
        score("e2e", [xe for *_, xe in prepared])
        for mode in ("network", "rederive"):
            cc = ccfg.model_copy(update={"eps_mode": mode})
            per_step: list[list[int]] = [[] for _ in coded]
            stars: list[list[float]] = [[] for _ in coded]
            outputs = []
            for i, (x, y, xb, xe) in enumerate(prepared):
                res = sample(model.diffusion, model.scheduler, y, xb, seed=seed + i, correction=cc, x_e=xe, target=x,
                             **common)
                outputs.append(res.image)
                for j, step_k in enumerate(coded):
                    per_step[j].append(res.levels[step_k])
                    stars[j].append(res.lambda_star[j])
            fits[mode] = (per_step, stars)
            score(f"corrdiff_{mode}", outputs)
    a, b = sorted(("network", "rederive"), key=lambda m: report[f"lpips_corrdiff_{m}"])
    gain = {m: report[f"psnr_corrdiff_{m}"] - report["psnr_diffusion"] for m in (a, b)}
    best = a if gain[a] >= EPS_MODE_MIN_GAIN_SHARE * gain[b] else b
    per_step, stars = fits[best]
    coded_tables = fit_tables(per_step, ccfg.levels)
    tables = torch.full((k, ccfg.levels), 1.0 / ccfg.levels)
    tables[coded] = coded_tables
    bits = [8 * len(encode_levels([per_step[j][i] for j in range(len(coded))], coded_tables)) for i in range(len(images))]
    report["lambda_bits_per_image"] = mean(bits)
    report["psnr_gain_per_lambda_bit"] = (report[f"psnr_corrdiff_{best}"] - report["psnr_diffusion"]) / max(mean(bits), 1)
    for j, step_k in enumerate(coded):
        report[f"lambda_star_mean_step{step_k}"] = mean(stars[j])
    if log is not None:
        for name, value in report.items():
            log(f"correction/{name}", value, 0)
    return CorrectionFit(tables, best, report)


def apply_correction_fit(model: CorrDiffModel, fit: CorrectionFit) -> CorrDiffModel:
    """A new model with the fitted tables and ε̃ variant (the config change changes the hash)."""
    cfg = model.config.model_copy(
        update={"correction": model.config.correction.model_copy(update={"eps_mode": fit.eps_mode})}
    )
    new = CorrDiffModel(cfg, tables=fit.tables)
    for part in ("codec", "diffusion", "privileged"):
        getattr(new, part).load_state_dict(getattr(model, part).state_dict())
    new.codec.update(force=True)
    return new.eval()
