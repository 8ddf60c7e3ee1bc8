"""Ablation of the correction on one trained model: which part of CorrDiff's gain needs the encoder's bits?

Every row decodes the same ŷ with the same seed per image (full-size held-out images, one model):

* diffusion only (λ ≡ 0) and the privileged e2e decoder x_e: the two parents;
* for each low-pass σ in ``--sigmas`` (σ = 0: the paper's whole-image correction):
  - **CorrDiff**: the encoder's least-squares λ* per coded step (γ = 1), as ``pdc compress`` sends it;
  - **no bits**: λ = 1 on every coded step, a fixed fusion the decoder could apply without the encoder's
    advice — if it scores like CorrDiff, the gain comes from the fusion, not from the bits;
  - **e2e + matched noise**: x_e plus Gaussian noise whose σ brings it to CorrDiff's PSNR, per image —
    if it scores like CorrDiff, the perceptual gain is noise.

    python benchmarks/ablate_correction.py --model runs/small2/r0/privileged \\
        --images ../shared/data/bsds500/val --limit 16 --sigmas 0,1,2 --out runs/ablate_correction.json

Prints a Markdown table (PSNR, LPIPS-alex, LPIPS-VGG, mean λ per coded step); ``--out`` keeps the rows.
The λ tables are not needed here: rate is the same for every row up to the few λ bytes.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm import tqdm

from pdc.codec import code_latent
from pdc.imageio import image_files, read_image, uint8_to_tensor
from pdc.metrics import psnr
from pdc.metrics.perceptual import lpips
from pdc.models.package import CorrDiffModel, load_package
from pdc.models.sampler import correctable_steps, sample
from pdc.rd.control import match_noise, noise_seed

from _held_out import parser, save_rows  # benchmarks/_held_out.py (the script's folder is on sys.path)


def _rows_for_image(model: CorrDiffModel, x: torch.Tensor, sigmas: list[float], seed: int) -> dict[str, dict]:
    h, w = x.shape[-2:]
    coded = code_latent(model, x)
    y_hat, xp = coded.y_hat, coded.padded
    x_base = model.codec.g_s(y_hat).clamp(0, 1)
    x_e = model.privileged(y_hat)
    dcfg = model.config.diffusion
    steps = dcfg.steps
    run = dict(steps=steps, seed=seed, residual_scale=dcfg.residual_scale)
    top = model.config.correction.levels - 1
    allowed = set(correctable_steps(model.config.correction, steps))
    forced = [top if k in allowed else 0 for k in range(steps)]

    out: dict[str, dict] = {}

    def score(name: str, image: torch.Tensor, **extra) -> None:
        image = image[..., :h, :w].clamp(0, 1)
        out[name] = {"psnr": psnr(image, x), "lpips": lpips(image, x), "lpips_vgg": lpips(image, x, net="vgg"),
                     **extra}

    with torch.no_grad():
        score("diffusion only (λ ≡ 0)", sample(model.diffusion, model.scheduler, y_hat, x_base,
                                                correction=model.config.correction, **run).image)
        score("e2e decoder", x_e)
        for sigma in sigmas:
            cfg = model.config.correction.model_copy(update={"lowpass_sigma": sigma})
            enc = sample(model.diffusion, model.scheduler, y_hat, x_base, correction=cfg, x_e=x_e, target=xp,
                         gamma=1.0, **run)
            tag = f"σ = {sigma:g}"
            score(f"{tag}: CorrDiff (encoder's λ*)", enc.image, lambda_star=enc.lambda_star)
            score(f"{tag}: no bits (λ = 1 on coded steps)",
                  sample(model.diffusion, model.scheduler, y_hat, x_base, correction=cfg, x_e=x_e, levels=forced,
                         **run).image)
            target = out[f"{tag}: CorrDiff (encoder's λ*)"]["psnr"]
            score(f"{tag}: e2e + matched noise", match_noise(x_e[..., :h, :w], x, target, seed=noise_seed(seed, 0)).image)
    return out


def main() -> None:
    ap = parser(__doc__, "a package with trained diffusion and D_e", limit=16)
    ap.add_argument("--sigmas", default="0,1,2", help="low-pass σ values (pixels), comma-separated")
    args = ap.parse_args()

    model = load_package(args.model).eval()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    files = image_files(args.images)[: args.limit]
    per_row: dict[str, list[dict]] = defaultdict(list)
    for i, path in enumerate(tqdm(files, desc="images")):
        x = uint8_to_tensor(read_image(path))
        for name, row in _rows_for_image(model, x, sigmas, args.seed + i).items():
            per_row[name].append(row)

    table = []
    for name, rows in per_row.items():
        mean = {m: sum(r[m] for r in rows) / len(rows) for m in ("psnr", "lpips", "lpips_vgg")}
        if "lambda_star" in rows[0]:
            mean["lambda_star"] = [sum(r["lambda_star"][j] for r in rows) / len(rows)
                                   for j in range(len(rows[0]["lambda_star"]))]
        table.append({"row": name, **mean})
    print(f"\n{len(files)} images from {args.images}, model {args.model}\n")
    print("| row | PSNR (dB) | LPIPS-alex | LPIPS-VGG | mean λ* per coded step |\n|---|---|---|---|---|")
    for r in table:
        stars = " ".join(f"{v:.2f}" for v in r.get("lambda_star", []))
        print(f"| {r['row']} | {r['psnr']:.2f} | {r['lpips']:.4f} | {r['lpips_vgg']:.4f} | {stars} |")
    save_rows(args.out, args, table)


if __name__ == "__main__":
    main()
