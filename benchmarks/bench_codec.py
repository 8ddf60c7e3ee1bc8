"""Codec and training speed, measured side by side in one run and printed as ratios.

* encode / decode seconds per megapixel for every mode (codec = g_s only, e2e, diffusion, corrdiff)
  and every step count K (diffusion-based modes);
* the encoder's correction overhead: CorrDiff encode time ÷ a plain diffusion decode at the same K
  (the encoder simulates the decoder and adds λ* and the e2e decode) — and CorrDiff decode ÷ diffusion
  decode (what the λ corrections cost the receiver);
* λ bits as a share of the file at each K;
* training-step throughput (steps/s, crops/s) of the three network stages on random crops.

Repetitions interleave every configuration (K = 2, 4, …, modes, then again) so that drift on a shared
machine hits all of them alike; the table shows medians. Timing does not depend on training, so the
default model is freshly initialised from a ``params.yaml`` profile (``tiny``).

    .venv/bin/python benchmarks/bench_codec.py                         # tiny profile, Kodak kodim01 or astronaut
    .venv/bin/python benchmarks/bench_codec.py --model models/set --steps 2,4,6,8,16 --json bench.json
    .venv/bin/python benchmarks/bench_codec.py --device cuda --profile paper
    .venv/bin/python benchmarks/bench_codec.py --model models/set --steps 3 --pick --train-steps 0   # λ pick cost
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from pdc.bitstream import Mode
from pdc.config import StageTrainConfig, load_params
from pdc.imageio import read_image, uint8_to_tensor

REPO = Path(__file__).resolve().parents[1]
KODIM01 = (REPO / "data/test/kodak/kodim01.png", REPO.parent / "shared/data/kodak/kodim01.png")


def default_image() -> tuple[str, np.ndarray]:
    for p in KODIM01:
        if p.is_file():
            return str(p), read_image(p)
    from skimage import data

    return "skimage astronaut (512×512)", np.ascontiguousarray(data.astronaut())


def build_model(model_dir: Path | None, params: Path, profile: str | None, rate: int):
    from pdc.models.package import init_model, load_rate_point

    if model_dir is not None:
        return f"{model_dir} (rate point {rate})", load_rate_point(model_dir, rate)
    p = load_params(params, profile)
    return f"fresh init, profile {p.profile!r} of {params}", init_model(p.active.model, seed=0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def bench_modes(model, x: torch.Tensor, steps: list[int], repeats: int, device: torch.device,
                pick: bool = False) -> dict:
    """Medians of encode/decode seconds per configuration, interleaved over ``repeats`` rounds.

    ``pick``: add a "pick" row per K, CorrDiff encoded with the default :class:`pdc.codec.LambdaPick`
    (same decoder, so its decode time is CorrDiff's; its encode time is the search's cost)."""
    from pdc.codec import LambdaPick, compress, decompress

    diffusion_based = [("diffusion", Mode.DIFFUSION), ("corrdiff", Mode.CORRDIFF)]
    if pick:
        diffusion_based.append(("pick", Mode.CORRDIFF))
    configs = [("codec", Mode.CODEC, 0), ("e2e", Mode.E2E, 0)] + [(n, m, k) for k in steps for n, m in diffusion_based]
    samples: dict[tuple[str, Mode, int], dict[str, list[float]]] = {c: {"enc": [], "dec": []} for c in configs}
    info: dict[tuple[str, Mode, int], dict] = {}
    # Warm-up (allocator, oneDNN/cuDNN kernel selection) on the smallest K: not timed.
    for mode in (Mode.CODEC, Mode.CORRDIFF):
        decompress(model, compress(model, x, mode=mode, steps=min(steps)).data)
    for _ in range(repeats):
        for name, mode, k in configs:
            chooser = LambdaPick() if name == "pick" else None
            t_enc, enc = timed(lambda: compress(model, x, mode=mode, steps=k or None, pick=chooser), device)
            t_dec, rec = timed(lambda: decompress(model, enc.data), device)
            samples[(name, mode, k)]["enc"].append(t_enc)
            samples[(name, mode, k)]["dec"].append(t_dec)
            info[(name, mode, k)] = {
                "bytes": len(enc.data),
                "lambda_bytes": enc.lambda_bytes,
                "max_abs_diff": float((rec - enc.reconstruction).abs().max()),
            }
    mp = x.shape[-1] * x.shape[-2] / 1e6
    out = {}
    for (name, mode, k), s in samples.items():
        enc, dec = statistics.median(s["enc"]), statistics.median(s["dec"])
        out[f"{name}@{k}"] = {"mode": name, "steps": k, "encode_s": enc, "decode_s": dec,
                              "encode_s_per_mp": enc / mp, "decode_s_per_mp": dec / mp, **info[(name, mode, k)]}
    return out


def random_crops(image: torch.Tensor, crop: int, batch: int, seed: int = 0) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    _, _, h, w = image.shape
    crop = min(crop, h, w)
    while True:
        tops = torch.randint(0, h - crop + 1, (batch,), generator=g).tolist()
        lefts = torch.randint(0, w - crop + 1, (batch,), generator=g).tolist()
        yield torch.cat([image[..., t : t + crop, l : l + crop] for t, l in zip(tops, lefts)])


def bench_training(model, image: torch.Tensor, n_steps: int, batch: int, crop: int, device: torch.device,
                   configs: dict[str, StageTrainConfig] | None = None,
                   stages: tuple[str, ...] = ("codec", "diffusion", "privileged")) -> dict:
    """Steps/s of each network stage in ``stages``; the first step (warm-up) is excluded via the per-step
    log hook.

    ``configs`` (stage → its training config, e.g. a profile's, with ``precision``) replaces the common
    ``batch``/``crop`` config; only their ``steps`` is set here (``n_steps`` + 1). On CUDA the peak
    memory of each stage is reported too.
    """
    from pdc.train import train_codec, train_diffusion, train_privileged_decoder

    os.environ.setdefault("PDC_NO_PROGRESS", "1")
    # metrics_every 1: every step is logged as it ends (the loop otherwise logs a window of steps at once,
    # which would make the per-step stamps below meaningless)
    common = StageTrainConfig(steps=n_steps + 1, batch_size=batch, crop=max(64, crop), lr=1e-4,
                              checkpoint_every=10**9)
    cfgs = {name: (configs or {}).get(name, common).model_copy(update={"steps": n_steps + 1,
                                                                        "checkpoint_every": 10**9,
                                                                        "metrics_every": 1})
            for name in stages}
    runs = {
        "codec": lambda b, log: train_codec(model, 0.0067, b, cfgs["codec"], None, log),
        "diffusion": lambda b, log: train_diffusion(model, b, cfgs["diffusion"], None, log),
        "privileged": lambda b, log: train_privileged_decoder(model, b, cfgs["privileged"], None, log),
    }
    out = {}
    for name in stages:
        run, cfg = runs[name], cfgs[name]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stamps: dict[int, float] = {}

        def log(_metric: str, _value: float, step: int) -> None:
            if step not in stamps:
                _sync(device)
                stamps[step] = time.perf_counter()

        run(random_crops(image, cfg.crop, cfg.batch_size), log)
        steps = sorted(stamps)
        dt = stamps[steps[-1]] - stamps[steps[0]]
        rate = (len(steps) - 1) / dt if dt > 0 else float("nan")
        out[name] = {"steps_per_s": rate, "crops_per_s": rate * cfg.batch_size, "batch": cfg.batch_size,
                     "crop": cfg.crop, "precision": cfg.precision, "timed_steps": len(steps) - 1}
        if device.type == "cuda":
            out[name]["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    model.eval()
    return out


def report(res: dict) -> str:
    lines = [f"model: {res['model']}", f"image: {res['image']} ({res['width']}×{res['height']}, "
             f"{res['megapixels']:.3f} MP), device {res['device']}, torch threads {res['threads']}, "
             f"median of {res['repeats']} interleaved rounds", ""]
    m = res["modes"]
    lines.append(f"{'mode':<10} {'K':>3} {'enc s/MP':>9} {'dec s/MP':>9} {'bytes':>7} {'λ bytes':>8} {'λ share':>8}"
                 f" {'Δ vs diff':>9} {'enc÷diff-dec':>13} {'dec÷diff-dec':>13}")
    for key, r in m.items():
        base = m.get(f"diffusion@{r['steps']}")
        ratio_e = f"{r['encode_s'] / base['decode_s']:.2f}" if base and r["steps"] else "–"
        ratio_d = f"{r['decode_s'] / base['decode_s']:.2f}" if base and r["steps"] else "–"
        share = r["lambda_bytes"] / r["bytes"]
        delta = f"{r['bytes'] - base['bytes']:+d} B" if base and r["steps"] else "–"
        lines.append(f"{r['mode']:<10} {r['steps']:>3} {r['encode_s_per_mp']:>9.3f} {r['decode_s_per_mp']:>9.3f} "
                     f"{r['bytes']:>7} {r['lambda_bytes']:>8} {share:>8.2%} {delta:>9} {ratio_e:>13} {ratio_d:>13}")
    lines.append("")
    lines.append("λ share: λ section payload ÷ file; Δ vs diff: whole-file difference to the diffusion-only stream "
                 "(payload + the 5-byte section header).")
    lines.append("enc÷diff-dec: CorrDiff encode = the correction overhead the encoder pays relative to one plain "
                 "diffusion decode at the same K (≈ 1 + simulation extras); dec÷diff-dec: what the λ corrections "
                 "cost the decoder.")
    if res.get("training"):
        lines.append("")
        base = res["training"].get("codec", {}).get("steps_per_s")
        lines.append(f"{'stage':<11} {'steps/s':>8} {'crops/s':>8} {'÷ codec':>8}  (batch × crop)")
        for name, t in res["training"].items():
            rel = t["steps_per_s"] / base if base else float("nan")
            lines.append(f"{name:<11} {t['steps_per_s']:>8.3f} {t['crops_per_s']:>8.2f} {rel:>8.2f}  "
                         f"({t['batch']} × {t['crop']}², {t['timed_steps']} timed steps)")
    lines.append("")
    lines.append(f"total wall time {res['wall_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="package or model set (default: fresh tiny model)")
    ap.add_argument("--rate", type=int, default=0, help="rate point of a model set")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--profile", default="tiny", help="profile of --params for the fresh model")
    ap.add_argument("--image", type=Path, default=None, help="test image (default: Kodak kodim01 or astronaut)")
    ap.add_argument("--crop", type=int, default=None, help="centre-crop the image (quick runs)")
    ap.add_argument("--steps", default="2,4,6,8", help="comma-separated step counts K")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (entropy coding stays on the CPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's). On a shared machine use 1: with more OpenMP "
                         "threads than idle cores every small op can stall for a scheduler quantum")
    ap.add_argument("--train-steps", type=int, default=4, help="timed steps per training stage (0: skip)")
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-crop", type=int, default=128)
    ap.add_argument("--pick", action="store_true",
                    help="add CorrDiff encoded with the perceptual λ pick (pdc compress --pick) at every K")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_codec: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    steps = sorted({int(k) for k in args.steps.split(",") if k.strip()})
    if not steps or min(steps) < 2:
        # One corrected step = one rANS symbol, which CompressAI's encoder cannot code (see pdc/rd/runner.py).
        print("bench_codec: --steps values must be ≥ 2", file=sys.stderr)
        return 2
    if args.image is not None:
        image_name, img = str(args.image), read_image(args.image)
    else:
        image_name, img = default_image()
    if args.crop:
        h, w = img.shape[:2]
        c_h, c_w = min(args.crop, h), min(args.crop, w)
        img = np.ascontiguousarray(img[(h - c_h) // 2 : (h - c_h) // 2 + c_h, (w - c_w) // 2 : (w - c_w) // 2 + c_w])
    model_name, model = build_model(args.model, args.params, args.profile, args.rate)
    model = model.to(device).eval()
    x = uint8_to_tensor(img).to(device)

    res = {
        "model": model_name, "image": image_name, "width": img.shape[1], "height": img.shape[0],
        "megapixels": img.shape[0] * img.shape[1] / 1e6, "device": str(device), "threads": torch.get_num_threads(),
        "repeats": args.repeats, "steps": steps,
    }
    res["modes"] = bench_modes(model, x, steps, args.repeats, device, pick=args.pick)
    if args.train_steps > 0:
        res["training"] = bench_training(model, x, args.train_steps, args.train_batch, args.train_crop, device)
    res["wall_s"] = time.perf_counter() - t_start
    print(report(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
