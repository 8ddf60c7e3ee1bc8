"""GPU check: what the `paper` profile costs on one GPU, as JSON (run by benchmarks/gpu_check.sh).

* training throughput of each network stage with the profile's batch and crop, AMP (bf16 autocast)
  off and on, side by side (steps/s, images/s, peak GPU memory, bf16 ÷ fp32);
* Kodak decode time at K = 20 (diffusion and CorrDiff modes; also encode) and its peak memory, with
  the check that the decoded image equals what the encoder simulated;
* the device, torch/CUDA versions and the wall time.

Timing does not depend on training, so the model is freshly initialised from the profile.

    .venv/bin/python benchmarks/gpu_check.py --json gpu_check.json                  # on a GPU machine
    .venv/bin/python benchmarks/gpu_check.py --device cpu --profile tiny --train-steps 1 --steps 2 --crop 128  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codec import REPO, bench_modes, bench_training  # noqa: E402
from gpu_bundle import photo_dir  # noqa: E402

from pdc.config import load_params  # noqa: E402
from pdc.imageio import read_image, uint8_to_tensor  # noqa: E402
from pdc.models.package import init_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--train-steps", type=int, default=20, help="timed steps per stage and precision")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps K of the decode timing")
    ap.add_argument("--repeats", type=int, default=3, help="decode repetitions (median)")
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--kodak", type=Path, help="Kodak folder (default: gpu_bundle/kodak, else ../shared/data/kodak)")
    ap.add_argument("--image", default="kodim01.png", help="the Kodak photo of the decode timing")
    ap.add_argument("--crop", type=int, default=0, help="centre crop of that photo (smoke runs); 0 = all of it")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    params = load_params(args.params, args.profile)
    prof = params.active
    image_path = photo_dir(args.kodak, "kodak") / args.image
    img = read_image(image_path)
    if args.crop:
        top, left = (img.shape[0] - args.crop) // 2, (img.shape[1] - args.crop) // 2
        img = img[top:top + args.crop, left:left + args.crop]
    x = uint8_to_tensor(img).to(device)
    res: dict = {
        "profile": params.profile, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "image": image_path.name,
        "width": img.shape[1], "height": img.shape[0], "training": {},
    }
    # The diffusion trains with an LPIPS-VGG term: its weights come from a package index, which a bare GPU
    # machine may not reach; then the row is timed without the term, and says so.
    diffusion_cfg = prof.train.diffusion
    res["diffusion_lpips"] = f"{diffusion_cfg.lpips_net} × {diffusion_cfg.lpips_weight:g}"
    if diffusion_cfg.lpips_weight > 0:
        from pdc.errors import WeightsError
        from pdc.weights import lpips_backbone

        try:
            lpips_backbone(diffusion_cfg.lpips_net)
        except WeightsError as exc:
            diffusion_cfg = diffusion_cfg.model_copy(update={"lpips_weight": 0.0})
            res["diffusion_lpips"] = f"off: {diffusion_cfg.lpips_net} weights unavailable here ({exc})"
    for precision in ("fp32", "bf16"):
        model = init_model(prof.model, seed=0).to(device)
        # The codec trains in fp32 only (the config refuses bf16 there): it has an fp32 row and no bf16 row.
        names = ("codec", "diffusion", "privileged") if precision == "fp32" else ("diffusion", "privileged")
        configs = {name: (diffusion_cfg if name == "diffusion" else getattr(prof.train, name)).model_copy(
            update={"precision": precision}) for name in names}
        res["training"][precision] = bench_training(model, x, args.train_steps, 1, 64, device, configs, stages=names)
        print(precision, json.dumps(res["training"][precision]), flush=True)
    res["training"]["bf16_speedup"] = {
        s: res["training"]["bf16"][s]["steps_per_s"] / res["training"]["fp32"][s]["steps_per_s"]
        for s in res["training"]["bf16"]}
    from pdc.devices import codec_device

    model = init_model(prof.model, seed=0).to(codec_device(str(device))).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res["decode"] = bench_modes(model, x, [args.steps], args.repeats, device)
    if device.type == "cuda":
        res["decode_peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    res["decode_matches_encoder"] = all(r["max_abs_diff"] == 0 for r in res["decode"].values())
    res["wall_s"] = time.perf_counter() - t0
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "decode"}, indent=2))
    for key, r in res["decode"].items():
        print(f"{key:<14} encode {r['encode_s']:.3f} s  decode {r['decode_s']:.3f} s  ({r['bytes']} bytes)")
    print(f"wrote {args.json} in {res['wall_s']:.0f} s")
    return 0 if res["decode_matches_encoder"] else 1


if __name__ == "__main__":
    sys.exit(main())
