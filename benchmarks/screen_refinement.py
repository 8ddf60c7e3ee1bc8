"""Screen the encoder's latent refinement (steps, step size) on held-out photos, per rate point.

For each setting and rate point of a model set: the e2e stream with the one-pass latent and with the
refined one, on the same photos; mean change of the real file's bpp, of the decoded PSNR and of the
rate–distortion cost the refinement minimises (bpp + λ_rd·255²·MSE, from the written file), and the
encode time. Chooses ``LatentRefinement``'s defaults on BSDS500 val, never on the test sets:

    python benchmarks/screen_refinement.py --model pdc/zoo/small --images ../shared/data/bsds500/val \\
        --limit 6 --configs 60:0.001,60:0.002,60:0.005,20:0.002,120:0.002

``--configs``: comma-separated ``steps:lr``. Prints a Markdown table.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from pdc.bitstream import Mode
from pdc.codec import compress
from pdc.imageio import image_files, read_image, uint8_to_tensor
from pdc.metrics import bpp, psnr
from pdc.models.package import load_package, rate_packages
from pdc.models.refine import LatentRefinement

from _held_out import parser, save_rows  # benchmarks/_held_out.py (the script's folder is on sys.path)


def main() -> None:
    ap = parser(__doc__, "a model set or package with a trained D_e and a rate point (its λ_rd)", limit=6)
    ap.add_argument("--configs", default="60:0.001,60:0.002,60:0.005,20:0.002,120:0.002", help="steps:lr, comma-separated")
    args = ap.parse_args()

    settings = [LatentRefinement(steps=int(s), lr=float(lr)) for s, lr in (c.split(":") for c in args.configs.split(","))]
    files = image_files(args.images)[: args.limit]
    images = [uint8_to_tensor(read_image(p)) for p in files]
    rows = []
    for member in rate_packages(args.model):
        model = load_package(member)
        lam = model.rate_point.lambda_rd

        def measure(x: torch.Tensor, refine: LatentRefinement | None) -> tuple[float, float, float, float]:
            t0 = time.perf_counter()
            enc = compress(model, x, mode=Mode.E2E, refine=refine)
            seconds = time.perf_counter() - t0
            h, w = x.shape[-2:]
            rate, mse = bpp(len(enc.data), h, w), float(torch.mean((enc.reconstruction - x) ** 2))
            return rate, psnr(enc.reconstruction, x), rate + lam * 255**2 * mse, seconds

        plain = [measure(x, None) for x in images]
        for s in tqdm(settings, desc=f"{member.name}: settings"):
            refined = [measure(x, s) for x in images]
            n = len(images)
            rows.append({
                "point": member.name, "steps": s.steps, "lr": s.lr,
                "bpp_change_pct": 100 * sum(r[0] / p[0] - 1 for r, p in zip(refined, plain)) / n,
                "psnr_change_db": sum(r[1] - p[1] for r, p in zip(refined, plain)) / n,
                "cost_change_pct": 100 * sum(r[2] / p[2] - 1 for r, p in zip(refined, plain)) / n,
                "encode_s": sum(r[3] for r in refined) / n, "encode_s_one_pass": sum(p[3] for p in plain) / n,
            })
    print(f"\n{len(images)} photos of {args.images}; e2e mode; changes are refined − one-pass, means over photos\n")
    print("| point | steps | lr | Δbpp | ΔPSNR (dB) | Δ(bpp + λ·255²·MSE) | encode s (one pass) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['point']} | {r['steps']} | {r['lr']:g} | {r['bpp_change_pct']:+.2f} % | {r['psnr_change_db']:+.3f} "
              f"| {r['cost_change_pct']:+.2f} % | {r['encode_s']:.1f} ({r['encode_s_one_pass']:.2f}) |")
    save_rows(args.out, args, rows)


if __name__ == "__main__":
    main()
