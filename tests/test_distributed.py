"""Data-parallel training math (pdc.distributed + pdc.train) on real gloo process groups.

The claim: an optimisation step does not depend on how its global batch is split — 2 workers × B/2,
1 worker × B and 1 worker × 2 micro-batches of B/2 give the same parameters. The processes are started
with ``torch.multiprocessing`` (what Ray Train does in :mod:`pdc.scale` is tested in test_scale.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

B, CROP = 4, 64


def _data() -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1).float().div(255)
    return torch.stack([img[:, 40 * k : 40 * k + CROP, 60 * k : 60 * k + CROP] for k in range(B)])


def _train(stage: str, rank: int, world: int, accum: int, out: Path, workdir: Path | None = None) -> None:
    """One stage, ``steps`` optimisation steps on the fixed global batch, this rank's share of it."""
    from pdc.config import DiffusionTrainConfig, StageTrainConfig
    from pdc.distributed import Dist
    from pdc.models.package import init_model
    from pdc.train import train_codec, train_diffusion, train_privileged_decoder
    from tests.models.conftest import micro_config

    torch.set_num_threads(1)
    d = Dist(rank, world)
    x = _data()
    share = B // world
    mine = x[rank * share : (rank + 1) * share]
    micro = list(mine.split(share // accum))
    steps = 2

    def batches():
        while True:
            yield from micro

    model = init_model(micro_config(), seed=0)
    common = dict(steps=steps, batch_size=B, crop=CROP, lr=1e-3, grad_accum=accum)
    if stage == "codec":
        res = train_codec(model, 0.01, batches(), StageTrainConfig(**common), d=d)
        part = model.codec
    elif stage == "diffusion":
        res = train_diffusion(model, batches(), DiffusionTrainConfig(**common, snr_clip=5.0), d=d)
        part = model.diffusion
    else:
        res = train_privileged_decoder(model, batches(), StageTrainConfig(**common), workdir, d=d)
        part = model.privileged
    torch.save({"state": part.state_dict(), "history": res.history}, out / f"{stage}-w{world}-a{accum}-r{rank}.pt")


def _worker(rank: int, world: int, init_file: str, stage: str, accum: int, out: str, workdirs=None) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _train(stage, rank, world, accum, Path(out), Path(workdirs[rank]) if workdirs else None)
    except Exception as exc:  # reported to the test through a file: mp.spawn only says "process failed"
        (Path(out) / f"error-r{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, stage: str, world: int, accum: int = 1) -> dict:
    if world == 1:
        _train(stage, 0, 1, accum, tmp_path)
    else:
        init = tmp_path / f"init-{stage}-{world}-{accum}"
        mp.spawn(_worker, args=(world, str(init), stage, accum, str(tmp_path)), nprocs=world, join=True)
    return {r: torch.load(tmp_path / f"{stage}-w{world}-a{accum}-r{r}.pt", weights_only=True) for r in range(world)}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point() and a[k].numel())


@pytest.mark.parametrize("stage", ["diffusion", "privileged"])
def test_two_workers_with_half_batches_take_the_step_of_one_worker(tmp_path, stage):
    one = _run(tmp_path, stage, world=1)[0]
    two = _run(tmp_path, stage, world=2)
    accumulated = _run(tmp_path, stage, world=1, accum=2)[0]
    # Both workers hold the same weights, and they are the single worker's (float tolerance: the
    # gradient sums run in another order).
    assert _max_diff(two[0]["state"], two[1]["state"]) == 0.0
    assert _max_diff(one["state"], two[0]["state"]) < 1e-5
    assert _max_diff(one["state"], accumulated["state"]) < 1e-5
    assert one["history"] == pytest.approx(two[0]["history"], rel=1e-4)
    # …and the step really moved them (a test that cannot fail proves nothing).
    from pdc.models.package import init_model
    from tests.models.conftest import micro_config

    start = getattr(init_model(micro_config(), seed=0), stage).state_dict()
    assert _max_diff(start, one["state"]) > 1e-4


def test_codec_workers_stay_in_sync_including_the_aux_quantiles(tmp_path):
    """CompressAI's quantiles are outside DDP (only the aux loss reaches them): their gradients are
    averaged by hand, so both workers end with the same quantiles and hence the same CDF tables."""
    two = _run(tmp_path, "codec", world=2)
    a, b = two[0]["state"], two[1]["state"]
    quantiles = [k for k in a if k.endswith("quantiles")]
    assert quantiles
    assert _max_diff(a, b) == 0.0
    for k in ("_quantized_cdf", "_cdf_length", "_offset"):
        key = next(n for n in a if n.endswith(k))
        assert torch.equal(a[key], b[key])
    # the codec learned on the whole batch: its loss is the mean over both workers' samples
    assert two[0]["history"] == two[1]["history"]


def test_workers_that_find_different_checkpoints_stop_instead_of_training_apart(tmp_path):
    """Storage that is not shared: rank 0 sees a checkpoint at step 2, rank 1 none. Both must stop with
    the same error (a rank that raised alone would leave the other waiting in a collective)."""
    _train("privileged", 0, 1, 1, tmp_path, tmp_path / "a")  # 2 steps, checkpoint at step 2 in a/
    init = tmp_path / "init-mismatch"
    mp.spawn(_worker, args=(2, str(init), "privileged", 1, str(tmp_path), [str(tmp_path / "a"), str(tmp_path / "b")]),
             nprocs=2, join=True)
    for rank in (0, 1):
        err = (tmp_path / f"error-r{rank}.txt").read_text()
        assert "PdcError" in err and "workers resumed from different checkpoints" in err, err


def test_a_batch_that_does_not_split_over_the_workers_is_refused():
    from pdc.config import parse_profile
    from pdc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.codec.batch_size=6 does not split into scaling.num_workers=4"):
        parse_profile({"scaling": {"num_workers": 4}, "train": {"codec": {"batch_size": 6}}})
    with pytest.raises(ConfigError, match="grad_accum"):
        parse_profile({"train": {"diffusion": {"batch_size": 4, "grad_accum": 3}}})
    with pytest.raises(ConfigError, match="codec.precision must be fp32"):
        parse_profile({"train": {"codec": {"precision": "bf16"}}})


def test_a_bf16_step_keeps_the_frozen_latent_exact():
    """Under bf16 autocast the UNet runs in bf16, but ŷ is the fp32 latent the entropy coder will send."""
    from pdc.config import DiffusionTrainConfig
    from pdc.models.codec import quantized_latent
    from pdc.models.package import init_model
    from pdc.train import _frozen_latents, train_diffusion
    from tests.models.conftest import micro_config

    model = init_model(micro_config(), seed=0)
    x = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_hat, x_base = _frozen_latents(model, x)
    with torch.no_grad():
        assert y_hat.dtype == torch.float32 and torch.equal(y_hat, quantized_latent(model.codec, x))
    cfg = DiffusionTrainConfig(steps=2, batch_size=B, crop=CROP, precision="bf16")
    res = train_diffusion(model, iter([x, x]), cfg)
    assert all(torch.isfinite(torch.tensor(res.history)))


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PDC_NO_PROGRESS", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")


def test_ddp_options_follow_what_the_installed_torch_accepts(tmp_path, monkeypatch):
    """torch < 2.13 has no ``forward_sync_buffers``: :func:`wrap` must build DDP there with the older
    ``broadcast_buffers`` (exercised with a DDP class shaped like torch 2.11's, in a real gloo group)."""
    import torch.nn.parallel
    from torch import nn

    from pdc.distributed import Dist, no_forward_buffer_sync, wrap

    real = torch.nn.parallel.DistributedDataParallel
    seen: dict[str, object] = {}

    class OldDDP(real):  # torch 2.11's signature: no forward_sync_buffers
        def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True,
                     process_group=None, bucket_cap_mb=None, find_unused_parameters=False):
            seen["broadcast_buffers"] = broadcast_buffers
            super().__init__(module, device_ids=device_ids, process_group=process_group)

    assert no_forward_buffer_sync(OldDDP) == {"broadcast_buffers": False}
    if "forward_sync_buffers" in __import__("inspect").signature(real.__init__).parameters:
        assert no_forward_buffer_sync(real) == {"forward_sync_buffers": False}
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", OldDDP)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        wrapped = wrap(net, Dist(0, 2))  # "2 workers" decides wrapping; the group itself has one process
        assert isinstance(wrapped, OldDDP) and seen == {"broadcast_buffers": False}
        wrapped(torch.randn(3, 4)).sum().backward()
        assert net[0].weight.grad is not None
    finally:
        dist.destroy_process_group()
