"""The shipped codec (pdc/zoo/small, `codec` mode) against JPEG, WebP and AVIF on Kodak: the table of
pdc/zoo/small/MODEL_CARD.md and docs/results.md, and its BD-rates.

Every point is a real file (decoded from disk); bpp counts every byte. BD-rate on PSNR and LPIPS-alex
(negative = fewer bits for the same quality) of the codec against each classic codec, fitted on all
rate points (pdc/rd/bd.py)::

    .venv/bin/python benchmarks/zoo_codec_kodak.py --images ../shared/data/kodak --training-data data/raw \
        --json outputs/zoo_kodak.json

``--training-data`` (the folder the shipped codec was trained on) refuses any test image found in it by pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pdc.rd import evaluate_model_set
from pdc.rd.bd import bd_rate
from pdc.rd.classic import classic_codecs
from pdc.zoo import SHIPPED


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=SHIPPED)
    ap.add_argument("--images", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--out", type=Path, default=Path("outputs/zoo-kodak"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-lpips", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--training-data", type=Path, default=None,
                    help="The codec's training images: a test image equal to one of them is refused.")
    args = ap.parse_args()

    summary = evaluate_model_set(args.model, args.images, args.out, limit=args.limit, systems=["codec"],
                                 classic=classic_codecs(), with_lpips=not args.no_lpips,
                                 gammas=(), progress=True, training_data=args.training_data)
    curves = {key: [(p["bpp"], p) for p in s["points"]] for key, s in summary["systems"].items()}
    print(f"{'system':<8} {'point':<6} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8} {'LPIPS-alex':>11}")
    for key, pts in curves.items():
        for bpp, p in sorted(pts, key=lambda t: t[0]):
            print(f"{key:<8} {p['label']:<6} {bpp:7.4f} {p['psnr']:7.2f} {p['ms_ssim']:8.4f} "
                  f"{p.get('lpips', float('nan')):11.4f}")
    bd = {}
    for anchor in [k for k in ("jpeg", "webp", "avif") if k in curves]:
        for metric, higher in (("psnr", True), ("lpips", False)):
            if metric == "lpips" and args.no_lpips:
                continue
            res = bd_rate([(b, p[metric]) for b, p in curves[anchor]], [(b, p[metric]) for b, p in curves["codec"]],
                          higher_is_better=higher)
            bd[f"codec_vs_{anchor}_{metric}"] = res["value"]
            shown = f"{res['value']:+.1f} %" if res["value"] is not None else f"n/a ({res['reason']})"
            print(f"BD-rate codec vs {anchor} on {metric}: {shown}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": str(args.images), "model": str(args.model), "bd_rate": bd,
                                         "points": {k: [p for _, p in v] for k, v in curves.items()}},
                                        indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
