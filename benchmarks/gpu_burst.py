"""Training burst: a shipped profile's codec at every rate point, trained for minutes on one GPU, then
scored on Kodak with real entropy coding (run by benchmarks/gpu_burst.sh; ≤ 9 min on one H100).

* what is trained: ``model.codec`` and ``train.codec`` of the profile (default `small`, the shipped CPU
  model) at each of params.yaml's ``rate_points``, with the batch and crop a GPU affords; the step count
  is the measured steps/s × the time budget (or ``--steps``). The photos stay on the GPU (random crops,
  flips); `pdc.train.train_codec` is the pipeline's own codec stage (its aux-loss fit included).
* what is scored: per rate point, Kodak mean bpp of the real streams (`pdc.codec.compress`, mode `codec`)
  and mean PSNR of what `pdc.codec.decompress` returns, which must equal the encoder's reconstruction.
* what comes back (``--out``): ``packages/<rate>/`` (pdc packages holding the trained codec, ≤ 16 MiB a
  file: ``pdc train diffusion --init`` takes them) and ``gpu_burst.json`` with the figures.

    benchmarks/gpu_burst.sh                                            # on the GPU machine
    .venv/bin/python benchmarks/gpu_burst.py --device cpu --steps 2 --batch 2 --crop 64 --kodak-images 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bundle import REPO, photo_dir  # noqa: E402

from pdc.bitstream import Mode  # noqa: E402
from pdc.codec import compress, decompress  # noqa: E402
from pdc.config import load_params  # noqa: E402
from pdc.devices import codec_device, resolve_device  # noqa: E402
from pdc.imageio import read_image, uint8_to_tensor  # noqa: E402
from pdc.metrics import psnr  # noqa: E402
from pdc.models.package import init_model, save_package  # noqa: E402
from pdc.train import train_codec  # noqa: E402

FILE_LIMIT = 16 * 2**20  # what comes back from the GPU machine, per file


def photos_on(folder: Path, pattern: str, device: str, crop: int) -> list[torch.Tensor]:
    """Every photo of ``folder`` as a uint8 (3, H, W) tensor on ``device``; each must hold a ``crop``."""
    out = [torch.from_numpy(read_image(p)).permute(2, 0, 1).contiguous().to(device)
           for p in sorted(folder.glob(pattern))]
    if small := [tuple(t.shape[1:]) for t in out if min(t.shape[1:]) < crop]:
        raise SystemExit(f"{folder}: photos smaller than the {crop}-px crop: {small[:3]}")
    return out


def random_crops(photos: list[torch.Tensor], batch: int, crop: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless batches of random crops (with random horizontal flips) in [0, 1], on the photos' device."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda n: int(torch.randint(n, (1,), generator=g))  # noqa: E731
    while True:
        parts = []
        for _ in range(batch):
            img = photos[draw(len(photos))]
            top, left = draw(img.shape[1] - crop + 1), draw(img.shape[2] - crop + 1)
            c = img[:, top:top + crop, left:left + crop]
            parts.append(c.flip(-1) if draw(2) else c)
        yield torch.stack(parts).float().div_(255)


def score_kodak(model, files: list[Path], device: str) -> dict:
    """Mean bpp (bytes of the real stream) and PSNR (of the decoded image) over ``files``."""
    model = model.to(codec_device(device)).eval()
    rows = []
    for f in files:
        img = read_image(f)
        enc = compress(model, img, mode=Mode.CODEC)
        dec = decompress(model, enc.data)
        rows.append({"image": f.name, "bytes": len(enc.data), "bpp": 8 * len(enc.data) / (img.shape[0] * img.shape[1]),
                     "psnr": psnr(dec, uint8_to_tensor(img)),
                     "decode_equals_encoder": torch.equal(dec, enc.reconstruction)})
    return {"images": len(rows), "bpp": statistics.fmean(r["bpp"] for r in rows),
            "psnr": statistics.fmean(r["psnr"] for r in rows),
            "decode_equals_encoder": all(r["decode_equals_encoder"] for r in rows), "per_image": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--profile", default="small", help="whose model.codec and train.codec are trained")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=6.0, help="training time for all rate points together")
    ap.add_argument("--steps", type=int, default=int(os.environ.get("PDC_BURST_STEPS", 0)),
                    help="steps per rate point instead of the time budget (PDC_BURST_STEPS)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--train", type=Path, help="training photos (default: gpu_bundle/train, else BSDS500 train)")
    ap.add_argument("--kodak", type=Path, help="Kodak folder (default: gpu_bundle/kodak, else ../shared/data/kodak)")
    ap.add_argument("--kodak-images", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    device = resolve_device(args.device)
    params = load_params(args.params, args.profile)
    prof = params.active
    kodak = sorted(photo_dir(args.kodak, "kodak").glob("kodim*.png"))[:args.kodak_images]
    photos = photos_on(photo_dir(args.train, "train"), "*.jpg", device, args.crop)
    base = prof.train.codec
    cfg = type(base).model_validate({**base.model_dump(), "batch_size": args.batch, "crop": args.crop})
    torch.backends.cudnn.benchmark = device.startswith("cuda")  # training only: score_kodak pins it off again
    rates = [params.rate_point(name) for name in params.rate_names()]
    res: dict = {"profile": params.profile, "codec": prof.model.codec.model_dump(), "device":
                 torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu", "torch": torch.__version__,
                 "cuda": torch.version.cuda, "train_photos": len(photos), "batch": args.batch, "crop": args.crop,
                 "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "rates": {}}

    steps = args.steps
    if not steps:  # the time budget: steps/s measured on a throw-away model
        stamps: list[float] = []
        probe = init_model(prof.model, seed=1).to(device)
        train_codec(probe, rates[0].lambda_rd, random_crops(photos, args.batch, args.crop, seed=1),
                    cfg.model_copy(update={"steps": 30, "warmup_steps": 0, "metrics_every": 1}),  # a stamp per step
                    log=lambda name, _v, _s: stamps.append(time.perf_counter()) if name == "codec/loss" else None)
        res["steps_per_s"] = (len(stamps) - 11) / (stamps[-1] - stamps[10])
        steps = max(1, int(res["steps_per_s"] * 60 * args.minutes / len(rates)))
        print(f"{res['steps_per_s']:.1f} steps/s: {steps} steps per rate point", flush=True)
    for rp in rates:
        t_rate = time.perf_counter()
        run_cfg = cfg.model_copy(update={"steps": steps, "warmup_steps": min(cfg.warmup_steps, steps // 10),
                                         "checkpoint_every": steps})
        model = init_model(prof.model, seed=cfg.seed).to(device)
        model.trained = ("codec",)
        trained = train_codec(model, rp.lambda_rd, random_crops(photos, args.batch, args.crop, seed=cfg.seed), run_cfg)
        train_s = time.perf_counter() - t_rate
        score = score_kodak(model, kodak, args.device)
        row = {"lambda_rd": rp.lambda_rd, "steps": steps, "train_s": train_s,
               "train_last": {k: v for k, v in trained.metrics.items() if k in ("loss", "bpp", "psnr") or "aux" in k},
               "kodak": score}
        pkg = args.out / "packages" / rp.name
        row["package"] = {"path": str(pkg), "hash": save_package(model.to("cpu"), pkg, extra={
            "stage": "codec", "rate_point": rp.as_dict(), "profile": params.profile,
            "trained_by": "benchmarks/gpu_burst.py", "burst": {k: v for k, v in row.items() if k != "kodak"}})}
        sizes = {p.name: p.stat().st_size for p in pkg.iterdir()}
        row["package"]["bytes"] = sum(sizes.values())
        if max(sizes.values()) > FILE_LIMIT:
            raise SystemExit(f"{pkg}: a file exceeds 16 MiB ({sizes})")
        res["rates"][rp.name] = row
        res["wall_s"] = time.perf_counter() - t0
        (args.out / "gpu_burst.json").write_text(json.dumps(res, indent=2) + "\n")  # also if a later rate times out
        print(f"{rp.name} λ={rp.lambda_rd}: {steps} steps in {train_s:.0f} s; Kodak "
              f"{score['bpp']:.3f} bpp {score['psnr']:.2f} dB ({score['images']} images)", flush=True)
    res["decode_equals_encoder"] = all(r["kodak"]["decode_equals_encoder"] for r in res["rates"].values())
    (args.out / "gpu_burst.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out / 'gpu_burst.json'} in {res['wall_s']:.0f} s")
    return 0 if res["decode_equals_encoder"] else 1


if __name__ == "__main__":
    sys.exit(main())
