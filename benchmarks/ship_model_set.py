"""Turn a trained model set into the shipped one: float16 decoders if that costs ≤ 0.05 dB, checked here.

Reads a model set (``models/corrdiff`` after ``make small``), rewrites every rate point with the diffusion
decoder and D_e stored in float16 (the codec stays float32: its weights make the entropy coder's tables),
and measures what that does to the decoded images: each check image is compressed and decompressed with
the float32 and the float16 package in every mode both decode, and the PSNR difference printed per mode
and rate point. If every |ΔPSNR| (mean over the images) is within ``--tolerance-db`` the float16 set is
written to ``--out``; otherwise the float32 set is, and the script says why. Written atomically::

    python benchmarks/ship_model_set.py --set models/corrdiff --out pdc/zoo/small \\
        --images ../shared/data/kodak --limit 4
    PYTHONPATH=. python -m tests.golden          # then the golden streams of the new weights

Then update ``pdc/zoo/small/MODEL_CARD.md`` (data, command, commit, metrics).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pdc.codec import compress, decodable_modes, decompress
from pdc.imageio import image_files, read_image
from pdc.metrics import psnr
from pdc.models.package import HALF_PARTS, load_package, rate_packages, read_metadata, save_package, write_model_set
from pdc.rd.runner import center_crop

#: Keys save_package writes itself; the rest of model.json (rate point, stage, warm start …) is carried over.
_OWN_KEYS = {"format", "hash", "config", "parts", "float16", "versions"}


def coded_psnr(model, image: np.ndarray, mode) -> float:
    """PSNR of what the decoder outputs for ``image`` compressed in ``mode`` (the file really decoded)."""
    enc = compress(model, image, mode=mode)
    out = decompress(model, enc.data)
    ref = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return float(psnr(out.clamp(0, 1), ref))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", type=Path, required=True, help="The trained model set (a folder with index.json).")
    ap.add_argument("--out", type=Path, required=True, help="Where the shipped set goes (replaced atomically).")
    ap.add_argument("--images", type=Path, required=True, help="Check images (a folder), e.g. Kodak.")
    ap.add_argument("--limit", type=int, default=4, help="How many check images (sorted by name).")
    ap.add_argument("--crop", type=int, default=256, help="Centre crop of each check image (px).")
    ap.add_argument("--tolerance-db", type=float, default=0.05)
    ap.add_argument("--json", type=Path, default=None, help="Also write the measured differences here.")
    args = ap.parse_args()

    images = [center_crop(read_image(p), args.crop) for p in image_files(args.images)[:args.limit]]
    if not images:
        print(f"{args.images}: no images", file=sys.stderr)
        return 2
    members = rate_packages(args.set)
    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        half_dirs = []
        for member in members:
            meta = read_metadata(member)
            full = load_package(member)
            half = copy.deepcopy(full)
            dest = Path(tmp) / member.name
            save_package(half, dest, extra={k: v for k, v in meta.items() if k not in _OWN_KEYS}, half=HALF_PARTS)
            half = load_package(dest)
            half_dirs.append(dest)
            for mode in decodable_modes(full.trained):
                d = [coded_psnr(half, im, mode) - coded_psnr(full, im, mode) for im in images]
                report.setdefault(member.name, {})[mode.name.lower()] = float(np.mean(d))
                print(f"{member.name} {mode.name.lower():16s} ΔPSNR float16 − float32: {np.mean(d):+.4f} dB "
                      f"(per image {', '.join(f'{x:+.3f}' for x in d)})", flush=True)
        worst = max(abs(v) for modes in report.values() for v in modes.values())
        use_half = worst <= args.tolerance_db
        write_model_set(args.out, half_dirs if use_half else members)
    sizes = {p.name: (p / "weights.pt").stat().st_size for p in rate_packages(args.out)}
    verdict = (f"float16 decoders: largest |ΔPSNR| {worst:.4f} dB ≤ {args.tolerance_db} dB" if use_half else
               f"float32 kept: float16 moves PSNR by {worst:.4f} dB > {args.tolerance_db} dB")
    print(f"{verdict}; wrote {args.out} ({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in sizes.items())})")
    if args.json:
        args.json.write_text(json.dumps({"delta_psnr_db": report, "float16": use_half, "worst_db": worst,
                                         "images": args.limit, "crop": args.crop, "bytes": sizes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
