"""Ablation of the diffusion recipe at equal budget: one row per change, same codec, same data, same steps.

Every variant trains the diffusion decoder from the same initialisation on the same frozen codec (a
codec-stage package), for the same number of optimisation steps and batch size, then decodes held-out
images diffusion-only (λ ≡ 0) and reports PSNR, LPIPS-alex and LPIPS-VGG beside the codec's own g_s.
Sampling-only knobs (step placement, initial-noise temperature) reuse the full recipe's weights.

    python benchmarks/ablate_diffusion.py --codec runs/small/r0/codec --data ../shared/data/bsds500/train \\
        --images ../shared/data/kodak --limit 8 --crop 256 --steps 400 --out runs/ablation.json

Prints a Markdown table; ``--out`` keeps the rows as JSON. Note: LPIPS-VGG is also the training loss of
the variants that use it, so LPIPS-alex and PSNR are the fairer columns for those rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdc.bitstream import Mode
from pdc.codec import compress
from pdc.config import DiffusionTrainConfig, load_params
from pdc.imageio import image_files, read_image, uint8_to_tensor
from pdc.metrics import psnr
from pdc.metrics.perceptual import lpips
from pdc.models.package import CorrDiffModel, load_package
from pdc.stages import _batches
from pdc.train import train_diffusion

#: (row name, diffusion model overrides, training overrides); each row changes one thing from the row
#: above it, so the table reads as a path from the previous recipe to the current one. (model_copy does
#: not validate: the first row rebuilds the refused bottlenecked UNet on purpose.)
TRAINED = [
    ("previous recipe on the bottlenecked UNet (32, 64, 64): the defect",
     {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "block_channels": (32, 64, 64)},
     {"mse_weight": 1.0, "snr_clip": 0.0, "lpips_weight": 0.0, "ema_decay": 0.0, "lr_schedule": "constant",
      "warmup_steps": 0}),
    ("previous recipe: v-pred, v-MSE, constant LR, no EMA, trailing",
     {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
     {"mse_weight": 1.0, "snr_clip": 0.0, "lpips_weight": 0.0, "ema_decay": 0.0, "lr_schedule": "constant",
      "warmup_steps": 0}),
    ("+ power step placement ending at t_min",
     {"prediction_type": "v_prediction"},
     {"mse_weight": 1.0, "snr_clip": 0.0, "lpips_weight": 0.0, "ema_decay": 0.0, "lr_schedule": "constant",
      "warmup_steps": 0}),
    ("+ x0-prediction (x0-MSE)", {},
     {"mse_weight": 1.0, "snr_clip": 0.0, "lpips_weight": 0.0, "ema_decay": 0.0, "lr_schedule": "constant",
      "warmup_steps": 0}),
    ("+ Min-SNR x̂0-MSE + ρ·LPIPS-VGG", {},
     {"ema_decay": 0.0, "lr_schedule": "constant", "warmup_steps": 0}),
    ("+ warm-up + cosine LR", {}, {"ema_decay": 0.0}),
    ("+ EMA (= current recipe)", {}, {}),
]


def _crop(img: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return img
    h, w = img.shape[:2]
    t, l = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[t : t + size, l : l + size])


def _score(model: CorrDiffModel, images: list[np.ndarray], mode: Mode) -> dict[str, float]:
    rows = []
    for i, img in enumerate(images):
        ref = uint8_to_tensor(img)
        rec = compress(model, img, mode=mode, seed=i).reconstruction
        rows.append((psnr(rec, ref), lpips(rec, ref), lpips(rec, ref, net="vgg")))
    a = np.array(rows)
    return {"psnr": float(a[:, 0].mean()), "lpips_alex": float(a[:, 1].mean()), "lpips_vgg": float(a[:, 2].mean())}


def _variant(codec_pkg: Path, model_over: dict[str, Any]) -> CorrDiffModel:
    base = load_package(codec_pkg)
    cfg = base.config.model_copy(update={"diffusion": base.config.diffusion.model_copy(update=model_over)})
    model = CorrDiffModel(cfg)
    model.codec.load_state_dict(base.codec.state_dict())
    model.privileged.load_state_dict(base.privileged.state_dict())
    torch.manual_seed(0)  # the same diffusion initialisation for every variant
    model.diffusion = type(model.diffusion)(cfg.diffusion, cfg.codec.M)
    model.codec.update(force=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec", type=Path, required=True, help="codec-stage package (frozen codec)")
    ap.add_argument("--data", type=Path, required=True, help="training images or shards")
    ap.add_argument("--images", type=Path, required=True, help="held-out evaluation images")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--profile", default="small")
    ap.add_argument("--steps", type=int, default=400, help="optimisation steps per variant (equal budget)")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--temperatures", default="0.8,0.9")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    recipe = load_params(args.params, args.profile).active.train.diffusion
    images = [_crop(read_image(p), args.crop) for p in image_files(args.images)[: args.limit]]
    rows: list[dict[str, Any]] = []
    ref = _variant(args.codec, {})
    rows.append({"variant": "codec g_s (reference, no diffusion)", **_score(ref, images, Mode.CODEC)})
    model = ref
    for name, model_over, train_over in TRAINED:
        model = _variant(args.codec, model_over)
        cfg = DiffusionTrainConfig(**{**recipe.model_dump(), "steps": args.steps,
                                      "warmup_steps": min(recipe.warmup_steps, args.steps // 10), **train_over})
        t0 = time.perf_counter()
        res = train_diffusion(model, _batches(args.data, cfg), cfg)
        rows.append({"variant": name, "train_s": time.perf_counter() - t0, "final_loss": res.final_loss,
                     **_score(model, images, Mode.DIFFUSION)})
        print(rows[-1], flush=True)
    full = model  # the last row is the whole recipe: sampling-only knobs reuse its weights
    d = full.config.diffusion
    for name, over in [("  sampling: trailing placement instead of power", {"timestep_spacing": "trailing"})] + [
        (f"  sampling: noise temperature {t}", {"noise_temperature": float(t)}) for t in args.temperatures.split(",")
    ]:
        cfg = full.config.model_copy(update={"diffusion": d.model_copy(update=over)})
        m = CorrDiffModel(cfg)
        for part in ("codec", "diffusion", "privileged"):  # per part: CompressAI resizes its CDF buffers
            getattr(m, part).load_state_dict(getattr(full, part).state_dict())
        m.codec.update(force=True)
        rows.append({"variant": name, **_score(m.eval(), images, Mode.DIFFUSION)})
        print(rows[-1], flush=True)

    print(f"\nDiffusion-only (λ ≡ 0) on {len(images)} image(s) of {args.images.name}"
          f"{f', centre {args.crop}px' if args.crop else ''}; {args.steps} steps × batch {recipe.batch_size} each\n")
    print("| variant | PSNR (dB) | LPIPS-alex | LPIPS-VGG | train s |\n|---|---|---|---|---|")
    for r in rows:
        ts = f"{r['train_s']:.0f}" if "train_s" in r else ""
        print(f"| {r['variant']} | {r['psnr']:.2f} | {r['lpips_alex']:.4f} | {r['lpips_vgg']:.4f} | {ts} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
