"""Data-parallel scaling on CPU: one stage on Ray Train with 1 and 2 workers, side by side.

Each configuration trains the same stage of the `tiny` profile for the same number of steps with the
same global batch (``batch_size`` is per optimisation step, split over the workers), through the path
the pipeline uses (:func:`pdc.scale.run_stage_scaled`). Throughput is the stage's own ``steps_per_s``
(from the end of its first step to its last, so Ray start-up and warm-up are left out). Rounds
interleave the configurations so drift on a shared machine hits all alike; the table shows medians
and the range over rounds (5 by default: two rounds cannot tell a difference from drift).

    1 worker  × 1 CPU   the baseline
    1 worker  × 2 CPUs  the same cores as threads inside one process (what 2 cores give without DDP)
    2 workers × 1 CPU   DDP over gloo

scaling efficiency = steps/s(2 workers × 1 CPU) ÷ (2 × steps/s(1 worker × 1 CPU)).

    .venv/bin/python benchmarks/bench_scaling.py                       # codec stage, 30 steps, batch 8
    .venv/bin/python benchmarks/bench_scaling.py --stage diffusion --steps 20 --json scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"1 worker × 1 CPU": (1, 1), "1 worker × 2 CPUs": (1, 2), "2 workers × 1 CPU": (2, 1)}


def _params(root: Path, profile: str, stage: str, steps: int, batch: int, workers: int, cpus: int, tag: str) -> Path:
    """The profile with this configuration's scaling, and Ray Train storage of its own: runs of one stage and
    rate point share a run identity, so with shared storage every run after the first would resume from the
    previous one's final checkpoint and train no step."""
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc["profile"] = profile
    prof = doc["profiles"][profile]
    prof["train"][stage].update(steps=steps, batch_size=batch, checkpoint_every=10**6)
    prof["scaling"] = {**prof.get("scaling", {}), "num_workers": workers, "cpus_per_worker": cpus, "use_gpu": False,
                       "storage_path": str(root / "ray" / tag)}
    path = root / f"params-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", default="codec", choices=["codec", "diffusion", "privileged"])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8, help="global batch per step (even)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("PDC_NO_PROGRESS", "1")

    import ray

    from pdc.data.corpus import init_default_corpus
    from pdc.data.shards import build_shards
    from pdc.models.package import init_model, save_package
    from pdc.config import load_params
    from pdc.scale import run_stage_scaled

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pdc-scaling-") as tmp:
        root = Path(tmp)
        os.chdir(root)  # Ray Train's storage (checkpoints/ray) goes here
        init_default_corpus(root / "raw" / "default")
        shards = root / "shards"
        build_shards(root / "raw", shards, shard_size=2, val_fraction=0.2)
        init = None
        if args.stage != "codec":  # the later stages start from a package: an untrained one times the same
            init = root / "init"
            p = load_params(REPO / "params.yaml", args.profile)
            save_package(init_model(p.active.model, seed=0), init)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for r in range(args.rounds):
            for name, (workers, cpus) in CONFIGS.items():
                tag = f"{workers}x{cpus}-{r}"
                params = _params(root, args.profile, args.stage, args.steps, args.batch, workers, cpus, tag)
                m = run_stage_scaled(args.stage, params, None, "r0", data=shards, out=root / "pkg" / tag, init=init,
                                     workdir=root / "ck" / tag, metrics=root / "m" / f"{tag}.json")
                rates[name].append(m["steps_per_s"])
                print(f"round {r + 1}: {name:<18} {m['steps_per_s']:.3f} steps/s", flush=True)
        ray.shutdown()
    med = {name: statistics.median(v) for name, v in rates.items()}
    base = med["1 worker × 1 CPU"]
    print(f"\n{args.stage} stage of {args.profile!r}, global batch {args.batch}, {args.steps} steps, "
          f"median of {args.rounds} round(s)")
    print(f"{'configuration':<20} {'steps/s':>8} {'range':>13} {'images/s':>9} {'÷ 1×1':>7}")
    for name, v in med.items():
        spread = f"{min(rates[name]):.3f}–{max(rates[name]):.3f}"
        print(f"{name:<20} {v:>8.3f} {spread:>13} {v * args.batch:>9.2f} {v / base:>7.2f}")
    efficiency = med["2 workers × 1 CPU"] / (2 * base)
    vs_threads = med["2 workers × 1 CPU"] / med["1 worker × 2 CPUs"]
    print(f"scaling efficiency (2 workers) = {efficiency:.0%}; 2 workers ÷ 1 worker with 2 threads = {vs_threads:.2f}")
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"stage": args.stage, "profile": args.profile, "batch": args.batch,
                                         "steps": args.steps, "rounds": rates, "median_steps_per_s": med,
                                         "scaling_efficiency": efficiency, "ddp_vs_threads": vs_threads}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
