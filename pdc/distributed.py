"""Data-parallel training helpers on plain ``torch.distributed`` (no launcher imports here).

Whoever starts the processes (Ray Train in :mod:`pdc.scale`, ``torchrun``, a test's ``mp.spawn``)
initialises the process group and passes each process its :class:`Dist`; everything below is a no-op
for a single process. The rules the stages follow::

    global batch B  = cfg.batch_size            (one optimisation step, whatever the worker count)
    worker r         = samples [r·B/W, (r+1)·B/W) of it, in grad_accum micro-batches
    gradients        = DDP all-reduce (mean over workers) of the per-worker mean loss
                     = the gradient of the mean loss over B, as with one worker
    per-sample noise = drawn from (seed, step) for all B samples, each worker keeping its slice,
                       so on the same samples 2 workers × B/2 take the same step as 1 worker × B
                       (diffusion, D_e; the codec's quantization noise is CompressAI's, per worker)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
import torch.distributed as dist
from torch import nn


class CheckpointStore(Protocol):
    """Where a run's checkpoints persist besides the stage's workdir (Ray Train's ``storage_path``, in
    :mod:`pdc.scale`): the training loop offers it every checkpoint and asks it for the latest on start."""

    def latest(self) -> Path | None:
        """A local copy of the newest checkpoint file the store holds for this run, or None."""

    def persist(self, path: Path | None, metrics: dict[str, float]) -> None:
        """Called by every worker at every checkpoint step (a barrier); ``path`` is the file, on rank 0 only."""


class Dist(NamedTuple):
    """Where this process sits in the data-parallel group, and where its checkpoints persist."""

    rank: int = 0
    world: int = 1
    store: CheckpointStore | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()  # one process, no group


def wrap(module: nn.Module, d: Dist, ignore: Iterable[str] = ()) -> nn.Module:
    """``module`` in DistributedDataParallel when ``d`` has several workers (else ``module`` itself).

    ``ignore`` names parameters DDP must leave alone because the main loss never reaches them
    (CompressAI's entropy-bottleneck ``quantiles``, trained by the aux loss: see :func:`average_grads`).
    Buffers are synced once at construction (identical on every worker here) but not on every forward:
    these models have no running statistics, and CompressAI's CDF buffers change size on ``update()``.
    """
    if not d.active:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    names = list(ignore)
    if names:
        DDP._set_params_and_buffers_to_ignore_for_model(module, names)
    device = next(module.parameters()).device
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None, **no_forward_buffer_sync(DDP))


def no_forward_buffer_sync(ddp_class: type) -> dict[str, bool]:
    """DDP's keyword that turns off the per-forward buffer broadcast, by what ``ddp_class`` accepts:
    ``forward_sync_buffers`` (torch ≥ 2.13, where ``broadcast_buffers`` is its older spelling) or
    ``broadcast_buffers`` (every earlier torch)."""
    import inspect

    names = inspect.signature(ddp_class.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in names else {"broadcast_buffers": False}


def no_sync(module: nn.Module | None, skip: bool):
    """DDP's ``no_sync`` (keep gradients local) for all but the last micro-batch of a step."""
    return module.no_sync() if skip and hasattr(module, "no_sync") else contextlib.nullcontext()


def check_same_step(step: int, d: Dist, device: torch.device, message: str) -> None:
    """Raise (on every worker alike, so none waits forever) unless all workers hold the same ``step``."""
    if not d.active:
        return
    lo = torch.tensor([step], dtype=torch.int64, device=device)  # NCCL reduces only CUDA tensors
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if int(lo) != int(hi):
        from pdc.errors import PdcError

        raise PdcError(f"{message} (steps {int(lo)}…{int(hi)})")


def average_grads(params: Iterable[nn.Parameter], d: Dist) -> None:
    """Mean of each parameter's gradient over the workers (for parameters DDP does not manage)."""
    if not d.active:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(d.world)


def mean_over_workers(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """The workers' mean of ``t`` (same shape on every worker), in float64: one collective for a whole
    table of metrics (steps × names)."""
    t = t.to(torch.float64)
    if d.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / d.world
    return t


def gather_objects(items: list, d: Dist) -> list:
    """Every worker's list, concatenated in rank order, on every worker."""
    if not d.active:
        return items
    out: list[list | None] = [None] * d.world
    dist.all_gather_object(out, items)
    return [x for part in out for x in (part or [])]


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The random stream of optimisation step ``step``: the same on every worker."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return g
