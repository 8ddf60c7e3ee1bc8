"""Training stages as functions: they learn, and the correction fit produces usable tables."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pdc.config import StageTrainConfig
from pdc.models.package import init_model
from pdc.train import apply_correction_fit, fit_correction, train_codec, train_diffusion

from tests.models.conftest import micro_config


def _batches(seed: int = 0, n: int = 4):
    """A fixed pool of natural crops (so the loss can go down), cycled forever."""
    from skimage import data

    img = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1).float().div(255)
    g = torch.Generator().manual_seed(seed)
    crops = []
    for _ in range(n):
        i, j = (int(v) for v in torch.randint(0, 512 - 64, (2,), generator=g))
        crops.append(img[:, i : i + 64, j : j + 64])
    pool = [torch.stack(crops[k : k + 2]) for k in range(0, n, 2)]
    return itertools.cycle(pool)


def test_codec_training_lowers_the_rd_loss():
    model = init_model(micro_config(), seed=0)
    res = train_codec(model, 0.01, _batches(), StageTrainConfig(steps=40, batch_size=2, crop=64, lr=3e-3))
    assert res.steps == 40 and len(res.history) == 40
    assert sum(res.history[-5:]) / 5 < 0.8 * sum(res.history[:5]) / 5


def test_diffusion_training_lowers_the_denoising_loss():
    model = init_model(micro_config(), seed=0)
    res = train_diffusion(model, _batches(), StageTrainConfig(steps=40, batch_size=2, crop=64, lr=3e-3))
    assert sum(res.history[-10:]) / 10 < sum(res.history[:10]) / 10


def test_fit_correction_produces_tables_and_a_choice():
    model = init_model(micro_config(correct_steps=[0, 1]), seed=0)
    images = [b[:1] for b in itertools.islice(_batches(1), 2)]
    fit = fit_correction(model, images)
    k, levels = model.config.diffusion.steps, model.config.correction.levels
    assert fit.tables.shape == (k, levels)
    torch.testing.assert_close(fit.tables.sum(1), torch.ones(k))
    assert fit.eps_mode in ("network", "rederive")
    assert {"psnr_diffusion", "lpips_e2e", "lambda_bits_per_image", "lambda_star_mean_step1"} <= set(fit.report)
    assert "lambda_star_mean_step2" not in fit.report  # step 2 carries no λ
    fitted = apply_correction_fit(model, fit)
    assert fitted.config.correction.eps_mode == fit.eps_mode
    assert fitted.content_hash() != model.content_hash() or fit.eps_mode == model.config.correction.eps_mode
    torch.testing.assert_close(fitted.tables, fit.tables)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_parameterisations_invert_the_forward_process(kind):
    from pdc.models.diffusion import split_prediction, training_target

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    a = torch.tensor(0.3)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    x0_hat, eps_hat = split_prediction(kind, training_target(kind, x0, noise, a), x_t, a)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, noise, atol=1e-5, rtol=1e-5)


def test_learning_rate_warms_up_then_follows_a_cosine_to_its_floor():
    cfg = StageTrainConfig(steps=110, lr=1.0, lr_schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert cfg.lr_at(1) == pytest.approx(0.1) and cfg.lr_at(10) == pytest.approx(1.0)
    assert cfg.lr_at(60) == pytest.approx(0.55)  # half way through the decay: (1 + 0.1) / 2
    assert cfg.lr_at(110) == pytest.approx(0.1)
    assert StageTrainConfig(lr=0.5).lr_at(77) == 0.5  # the default stays constant


def test_ema_tracks_a_moving_average_and_is_copied_into_the_module():
    from pdc.train import ema_of

    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = ema_of(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.step(net.parameters())  # effective decay min(0.5, 2/11) = 2/11
    torch.testing.assert_close(ema.shadow_params[0], torch.full((1, 2), 9 / 11))
    restored = ema_of(net, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    restored.copy_to(net.parameters())
    torch.testing.assert_close(net.weight, torch.full((1, 2), 9 / 11))


def test_diffusion_recipe_with_lpips_and_ema_trains_and_stores_the_average(tmp_path):
    from pdc.config import DiffusionTrainConfig

    cfg = DiffusionTrainConfig(steps=6, batch_size=2, crop=64, lr=3e-3, mse_weight=0.1, snr_clip=5.0,
                               lpips_weight=0.9, lpips_crop=48, ema_decay=0.9, checkpoint_every=3)
    model = init_model(micro_config(), seed=0)
    raw_after = {}
    res = train_diffusion(model, _batches(), cfg, workdir=tmp_path)
    assert len(res.history) == 6 and all(math.isfinite(v) for v in res.history)
    assert {"mse", "lpips", "lr"} <= set(res.metrics)
    state = torch.load(tmp_path / "diffusion.ckpt.pt", weights_only=True)
    raw_after = state["modules"]["diffusion"]
    names = [k for k, _ in model.diffusion.named_parameters()]
    shadow = dict(zip(names, state["ema"]["diffusion"]["shadow_params"], strict=True))
    stored = model.diffusion.state_dict()
    key = "unet.conv_out.weight"
    torch.testing.assert_close(stored[key], shadow[key])  # the package gets the EMA …
    assert not torch.equal(stored[key], raw_after[key])  # … not the last raw weights


def test_entropy_bottleneck_quantiles_are_fitted():
    """The aux loss (quantile fit of z's density) is finished after training, not left where the main
    loop's schedule stopped it: from a fresh bottleneck it falls below the tolerance."""
    from pdc.models.codec import build_codec
    from pdc.config import CodecConfig
    from pdc.train import fit_entropy_bottleneck

    torch.manual_seed(0)
    codec = build_codec(CodecConfig(N=16, M=24))
    before = float(codec.aux_loss())
    after = fit_entropy_bottleneck(codec, tol=1.0)
    assert before > 10 and after < 1.0
    q = codec.entropy_bottleneck.quantiles.detach()
    assert bool((q[..., 0] < q[..., 1]).all() and (q[..., 1] < q[..., 2]).all())


def test_privileged_decoder_with_the_diffusions_loss_logs_lpips_and_is_another_run(tmp_path):
    """loss "diffusion" (the e2e-lpips control): D_e learns from MSE + LPIPS with the diffusion's weights, so
    from the same seed it ends elsewhere than the MSE run and logs its LPIPS; a checkpoint of the MSE run (or of
    other weights) is not continued, the same run is."""
    from pdc.config import DiffusionTrainConfig, PrivilegedTrainConfig
    from pdc.train import diffusion_pixel_mse_weight, train_privileged_decoder

    weights = DiffusionTrainConfig(mse_weight=0.1, snr_clip=5.0, lpips_weight=0.9, lpips_crop=48)

    def run(loss: str, w: DiffusionTrainConfig = weights):
        model = init_model(micro_config(), seed=0)
        logged: list[str] = []
        res = train_privileged_decoder(model, _batches(), PrivilegedTrainConfig(steps=3, batch_size=2, crop=64,
                                                                                lr=3e-3, loss=loss),
                                       tmp_path / "ck", lambda name, value, step: logged.append(name),
                                       loss_weights=w)
        return res, model.privileged.state_dict(), logged

    mse, mse_state, mse_logged = run("mse")
    assert "lpips" not in mse.metrics and "privileged/lpips" not in mse_logged
    dif, dif_state, dif_logged = run("diffusion")
    assert dif.resumed_from == 0  # the MSE run's checkpoint has another fingerprint
    assert "privileged/lpips" in dif_logged and math.isfinite(dif.metrics["lpips"])
    w_px = dif.metrics["pixel_mse_weight"]  # the diffusion's MSE as its loss weighs x̂0's pixels: 0.1·s²·E[min(SNR, clip)]
    assert w_px == pytest.approx(diffusion_pixel_mse_weight(init_model(micro_config(), seed=0), weights))
    assert dif.metrics["loss"] == pytest.approx(w_px * dif.metrics["mse"] + 0.9 * dif.metrics["lpips"], rel=1e-5)
    assert any(not torch.equal(mse_state[k], dif_state[k]) for k in mse_state)
    assert run("diffusion")[0].resumed_from == 3  # the same run continues
    assert run("diffusion", weights.model_copy(update={"lpips_weight": 0.5}))[0].resumed_from == 0
    with pytest.raises(ValueError, match="loss_weights"):
        train_privileged_decoder(init_model(micro_config(), seed=0), _batches(),
                                 PrivilegedTrainConfig(steps=1, batch_size=2, crop=64, loss="diffusion"))


class _Stream:
    """A loader stream stand-in: endless (1, 2) batches; records what ``start_at`` was told."""

    def __init__(self) -> None:
        self.started_at: list[int] = []

    def start_at(self, step: int) -> None:
        self.started_at.append(step)

    def __next__(self) -> torch.Tensor:
        return torch.ones(1, 2)


def _tiny_run(workdir, steps: int, stream: _Stream):
    from pdc.train import _run

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    cfg = StageTrainConfig(steps=steps, batch_size=1, crop=64, checkpoint_every=1)

    def loss_fn(x, ctx):
        loss = net(x).pow(2).mean()
        return loss, {"loss": loss.detach()}

    return _run("tiny", {"net": net}, {"main": torch.optim.SGD(net.parameters(), lr=0.1)}, loss_fn, stream, cfg,
                workdir, None, "same-run")


def test_a_resumed_run_tells_the_loader_its_step(tmp_path):
    """A fresh run leaves the stream as it is (its batches unchanged); a run resumed at step 2 tells the stream,
    so a pdc.data.loader stream continues with fresh crops rather than replaying those of steps 1 and 2."""
    fresh, resumed = _Stream(), _Stream()
    assert _tiny_run(tmp_path, 2, fresh).resumed_from == 0
    assert fresh.started_at == []
    assert _tiny_run(tmp_path, 3, resumed).resumed_from == 2
    assert resumed.started_at == [2]


def test_training_runs_under_cudnn_benchmark_on_cuda_only(tmp_path, monkeypatch):
    """The loop runs inside devices.training_backends(its device): on CUDA cudnn.benchmark for the loop, put
    back afterwards (decoding keeps deterministic kernels); on the CPU nothing changes."""
    import pdc.train as T
    from pdc.devices import training_backends

    seen = []
    real = T.training_backends
    monkeypatch.setattr(T, "training_backends", lambda device: (seen.append(str(device)), real(device))[1])
    _tiny_run(None, 1, _Stream())
    assert seen == ["cpu"]
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with training_backends("cpu"):
            assert torch.backends.cudnn.benchmark is False
        for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
            with training_backends(device):
                assert torch.backends.cudnn.benchmark is True
            assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def _count_host_copies(monkeypatch) -> list[str]:
    """Record every tensor → Python number/list copy (the calls that make a GPU wait for its queue), except
    torch.optim's: its step counter is a CPU tensor even on CUDA (``capturable=False``), read without a wait."""
    import sys

    seen: list[str] = []

    def wrap(name: str, real):
        def copy(self, *a, **k):
            if "torch/optim/" not in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                seen.append(name)
            return real(self, *a, **k)
        return copy

    for name in ("item", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    return seen


def test_training_copies_metrics_to_the_host_once_per_window_and_still_logs_every_step(monkeypatch):
    """Metrics stay on the device between windows of ``metrics_every`` steps: the diffusion recipe (LPIPS window,
    Min-SNR weights, EMA) copies to the host once per window, not per micro-batch; and every step is logged with
    the same values as with a window of one step."""
    from pdc.config import DiffusionTrainConfig

    def run(steps: int, every: int, copies: list[str] | None = None):
        cfg = DiffusionTrainConfig(steps=steps, batch_size=4, crop=64, lr=3e-3, mse_weight=0.1, snr_clip=5.0,
                                   lpips_weight=0.9, lpips_crop=48, ema_decay=0.9, grad_accum=2,
                                   metrics_every=every, checkpoint_every=100)
        model = init_model(micro_config(), seed=0)
        logged: list[tuple[str, int, float]] = []
        start = len(copies) if copies is not None else 0
        train_diffusion(model, _batches(), cfg, log=lambda name, value, step: logged.append((name, step, value)))
        return logged, (len(copies) - start if copies is not None else None)

    per_step, _ = run(6, 1)
    copies = _count_host_copies(monkeypatch)
    windowed, n6 = run(6, 3, copies)
    _, n12 = run(12, 3, copies)
    assert n12 - n6 == 2  # six more steps = two more windows = two more copies, whatever the loop does besides
    strip = lambda rows: [(n, s, v) for n, s, v in rows if not n.endswith(("_per_s",))]  # noqa: E731
    assert [(n, s) for n, s, _ in strip(windowed)] == [(n, s) for n, s, _ in strip(per_step)]
    assert [v for *_, v in strip(windowed)] == pytest.approx([v for *_, v in strip(per_step)], rel=1e-6)
    assert {s for n, s, _ in windowed if n == "diffusion/loss"} == set(range(1, 7))


def test_the_diffusions_pixel_mse_weight_follows_its_parameterisation():
    """E_t of what the diffusion's MSE costs per unit x̂0 pixel error, times mse_weight · s²: Min-SNR clips SNR;
    without it, x0-prediction weighs 1, ε SNR_t, v SNR_t + 1 (the chain rule through x_t = √ᾱ x0 + √(1−ᾱ) ε)."""
    from diffusers.training_utils import compute_snr

    from pdc.config import DiffusionTrainConfig
    from pdc.train import diffusion_pixel_mse_weight

    for kind in ("sample", "epsilon", "v_prediction"):
        cfg = micro_config()
        model = init_model(cfg.model_copy(update={"diffusion": cfg.diffusion.model_copy(update={"prediction_type": kind})}),
                           seed=0)
        s = model.config.diffusion.residual_scale
        snr = compute_snr(model.scheduler, torch.arange(model.config.diffusion.train_timesteps)).double()
        plain = {"sample": 1.0, "epsilon": float(snr.mean()), "v_prediction": float(snr.mean()) + 1}[kind]
        assert diffusion_pixel_mse_weight(model, DiffusionTrainConfig(mse_weight=0.5)) == pytest.approx(0.5 * s * s * plain)
        clipped = diffusion_pixel_mse_weight(model, DiffusionTrainConfig(mse_weight=0.5, snr_clip=5.0))
        assert clipped == pytest.approx(0.5 * s * s * float(snr.clamp(max=5).mean())) and clipped < 0.5 * s * s * 5
