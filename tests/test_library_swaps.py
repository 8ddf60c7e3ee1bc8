"""Hand-written code replaced by the libraries we already depend on (issue 20 item 6): each swap gives the
old numbers on the same inputs. The old values come from copies of the replaced code (``_old_*`` below,
verbatim in substance) or from DVC itself, never from the new code."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from pdc.config import DiffusionConfig, StageTrainConfig

ROOT = Path(__file__).resolve().parents[1]


# -- MS-SSIM: pytorch-msssim instead of pdc's own --------------------------------------------------------
def _old_ms_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """pdc.metrics.ms_ssim before the swap (float64, separable 11-tap Gaussian σ=1.5)."""
    weights = torch.tensor((0.0448, 0.2856, 0.3001, 0.2363, 0.1333), dtype=torch.float64)
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    win = (g / g.sum()).repeat(3, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, win, groups=3), win.transpose(2, 3), groups=3)

    x, y = x.double(), y.double()
    levels = []
    for level in range(5):
        mu_x, mu_y = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
        cs_map = (2 * sxy + 0.03**2) / (sxx + syy + 0.03**2)
        ssim_map = ((2 * mu_x * mu_y + 0.01**2) / (mu_x**2 + mu_y**2 + 0.01**2)) * cs_map
        ssim, cs = ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)
        if level < 4:
            levels.append(torch.relu(cs))
            pad = (x.shape[2] % 2, x.shape[3] % 2)
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    levels.append(torch.relu(ssim))
    return float(torch.prod(torch.stack(levels) ** weights.view(-1, 1, 1), dim=0).mean())


@pytest.mark.parametrize("shape,noise", [((1, 3, 161, 161), 0.05), ((2, 3, 200, 301), 0.2), ((1, 3, 256, 192), 0.01)])
def test_ms_ssim_gives_the_old_numbers(shape, noise):
    from pdc.metrics import ms_ssim

    g = torch.Generator().manual_seed(0)
    x = F.avg_pool2d(torch.rand(shape, generator=g), 3, 1, 1)  # some spatial structure
    y = (x + noise * torch.randn(shape, generator=g)).clamp(0, 1)
    # pytorch-msssim builds its Gaussian window in float32 (ours was float64): |Δ| ≈ 1e-6
    assert ms_ssim(x, y) == pytest.approx(_old_ms_ssim(x, y), abs=5e-6)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)


# -- DVC's directory hash: dvc-data instead of our re-implementation --------------------------------------
def _old_dvc_dir_md5(folder: Path) -> str:
    entries = sorted(({"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(folder).as_posix()}
                      for f in Path(folder).rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "project" / "data"
    for rel, data in {"a.png": b"\x89PNG", "sub/b.txt": b"b\r\n", "sub/deeper/c": b"", "é ü/d.jpg": b"\xff\xd8",
                      "Z.txt": b"upper before lower"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_dvc_dir_md5_is_what_dvc_add_records_and_the_old_value(tree, monkeypatch):
    dvc_repo = pytest.importorskip("dvc.repo")
    from pdc.pipeline import dvc_dir_md5

    project = tree.parent
    monkeypatch.chdir(project)
    repo = dvc_repo.Repo.init(str(project), no_scm=True)
    dvc_hash = _old_dvc_dir_md5(tree)  # taken before `dvc add` (it adds .gitignore files)
    repo.add("data")
    recorded = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(".dir")
    assert dvc_hash == recorded
    assert dvc_dir_md5(tree) == recorded


def test_dvc_dir_md5_without_dvc_falls_back_to_the_same_value(tree, monkeypatch):
    from pdc.pipeline import dvc_dir_md5

    with_dvc = dvc_dir_md5(tree)
    monkeypatch.setitem(sys.modules, "dvc_data.hashfile.build", None)  # import raises ImportError
    assert dvc_dir_md5(tree) == with_dvc == _old_dvc_dir_md5(tree)


# -- EMA: diffusers' EMAModel instead of our EMA class ----------------------------------------------------
class _OldEMA:
    """pdc.train.EMA before the swap: lerp towards the weights with decay min(decay, (1 + n)/(10 + n))."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1 - d)


def test_ema_gives_the_old_numbers_and_resumes_from_its_checkpoint(tmp_path):
    from pdc.train import ema_of

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8), torch.nn.Conv2d(8, 3, 1))
    old, new = _OldEMA(net, 0.95), ema_of(net, 0.95)
    resumed = None
    for step in range(1, 221):  # past the ramp: (1 + n)/(10 + n) reaches the 0.95 cap at n = 170
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        old.update(net)
        new.step(net.parameters())
        if resumed is not None:
            resumed.step(net.parameters())
        if step == 40:  # a checkpoint written and read back as _run does (weights_only)
            torch.save({"ema": new.state_dict()}, tmp_path / "ckpt.pt")
            resumed = ema_of(net, 0.95)
            resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["ema"])
    names = [k for k, _ in net.named_parameters()]
    for k, a, b in zip(names, new.shadow_params, resumed.shadow_params, strict=True):
        torch.testing.assert_close(a, old.shadow[k], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert set(old.shadow) == set(names)  # the old EMA averaged no buffers either


# -- min-SNR weighting: diffusers' compute_snr instead of ᾱ/(1−ᾱ) -----------------------------------------
@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
def test_min_snr_weight_gives_the_old_numbers(schedule):
    from diffusers.training_utils import compute_snr

    from pdc.models.diffusion import build_scheduler

    sched = build_scheduler(DiffusionConfig(beta_schedule=schedule))
    t = torch.arange(sched.config.num_train_timesteps)
    a = sched.alphas_cumprod[t]
    old = (a / (1 - a)).clamp(max=5.0)
    new = compute_snr(sched, t).clamp(max=5.0)
    torch.testing.assert_close(new, old, rtol=2e-6, atol=0)


# -- learning rate: ours stays (diffusers' schedule has no floor and is a stateful LambdaLR) ----------------
def test_lr_schedule_is_diffusers_cosine_with_warmup_plus_a_floor():
    from diffusers.optimization import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = get_cosine_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=110).lr_lambdas[0]
    ours = StageTrainConfig(steps=110, lr=1.0, lr_schedule="cosine", warmup_steps=10, min_lr_ratio=0.0)
    assert all(math.isclose(ours.lr_at(s), factor(s), abs_tol=1e-12) for s in range(1, 111))
    floored = ours.model_copy(update={"min_lr_ratio": 0.1})
    assert all(math.isclose(floored.lr_at(s), 0.1 + 0.9 * factor(s), abs_tol=1e-12) for s in range(10, 111))


# -- progress bars: one library ---------------------------------------------------------------------------
def test_progress_bars_come_from_one_library():
    """tqdm through pdc.progress only; rich stays for tables, not for progress."""
    offenders = []
    for f in sorted((ROOT / "pdc").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for m in mods:
                if m.startswith("rich.progress") or (m.startswith("tqdm") and f.name != "progress.py"):
                    offenders.append(f"{f.relative_to(ROOT)}: {m}")
    assert not offenders, offenders
