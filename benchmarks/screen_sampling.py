"""Screen the diffusion's sampling knobs (K steps, t_min, ρ) on one trained model, without retraining.

For each configuration: diffusion only (λ ≡ 0), CorrDiff (least-squares λ on every step but the last,
γ = 1, quantized as the codec does) and "no bits" (λ = 1 on the same steps), on held-out photos with one seed per image.
The sampling knobs are decode-time settings (``DiffusionConfig.SAMPLING_FIELDS``): the chosen values go
into params.yaml and the correction stage re-fits the λ tables for them.

    python benchmarks/screen_sampling.py --model models/corrdiff/r0 \\
        --images ../shared/data/bsds500/val --limit 16 --configs 6:20:2,4:5:2,3:5:2,3:20:2

``--configs``: comma-separated ``K:t_min:ρ`` (power spacing). Prints a Markdown table.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from pdc.codec import code_latent
from pdc.imageio import image_files, read_image, uint8_to_tensor
from pdc.metrics import psnr
from pdc.metrics.perceptual import lpips
from pdc.models.package import load_package
from pdc.models.sampler import sample

from _held_out import parser, save_rows  # benchmarks/_held_out.py (the script's folder is on sys.path)

ROWS = ("diffusion only", "CorrDiff (least squares)", "no bits (λ = 1)")


def main() -> None:
    ap = parser(__doc__, "a fitted package (its σ and levels are kept; K, t_min, ρ and coded steps are set here)",
                limit=16)
    ap.add_argument("--configs", default="6:20:2,4:5:2,3:5:2,3:20:2", help="K:t_min:ρ, comma-separated")
    args = ap.parse_args()

    base = load_package(args.model).eval()
    configs = []
    for spec in args.configs.split(","):
        k, t_min, rho = spec.split(":")
        configs.append({"steps": int(k), "t_min": int(t_min), "spacing_power": float(rho),
                        "timestep_spacing": "power"})
    files = image_files(args.images)[: args.limit]
    images = [uint8_to_tensor(read_image(p)) for p in files]
    table = []
    with torch.no_grad():
        coded = [code_latent(base, x) for x in images]
        anchors = [(base.codec.g_s(c.y_hat).clamp(0, 1), base.privileged(c.y_hat)) for c in coded]
        for cfg in tqdm(configs, desc="configs"):
            model = base.with_decode_settings(sampling=cfg, correction={"correct_steps": list(range(cfg["steps"] - 1))})
            dcfg, top = model.config.diffusion, model.config.correction.levels - 1
            scores: dict[str, list[tuple[float, float, float]]] = {r: [] for r in ROWS}
            for i, (x, c, (x_base, x_e)) in enumerate(zip(images, coded, anchors)):
                run = dict(steps=dcfg.steps, seed=args.seed + i, correction=model.config.correction,
                           residual_scale=dcfg.residual_scale, x_e=x_e)
                outs = {
                    ROWS[0]: sample(model.diffusion, model.scheduler, c.y_hat, x_base, **run),
                    ROWS[1]: sample(model.diffusion, model.scheduler, c.y_hat, x_base, target=c.padded, gamma=1.0,
                                    **run),
                    ROWS[2]: sample(model.diffusion, model.scheduler, c.y_hat, x_base,
                                    levels=[top] * (dcfg.steps - 1) + [0], **run),
                }
                h, w = x.shape[-2:]
                for name, res in outs.items():
                    img = res.image[..., :h, :w]
                    scores[name].append((psnr(img, x), lpips(img, x), lpips(img, x, net="vgg")))
            for name, vals in scores.items():
                mean = [sum(v[j] for v in vals) / len(vals) for j in range(3)]
                table.append({"K": cfg["steps"], "t_min": cfg["t_min"], "rho": cfg["spacing_power"], "row": name,
                              "psnr": mean[0], "lpips": mean[1], "lpips_vgg": mean[2]})
    print(f"\n{len(files)} images from {args.images}, model {args.model}\n")
    print("| K | t_min | ρ | row | PSNR (dB) | LPIPS-alex | LPIPS-VGG |\n|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['K']} | {r['t_min']} | {r['rho']:g} | {r['row']} | {r['psnr']:.2f} | {r['lpips']:.4f} | "
              f"{r['lpips_vgg']:.4f} |")
    save_rows(args.out, args, table)


if __name__ == "__main__":
    main()
