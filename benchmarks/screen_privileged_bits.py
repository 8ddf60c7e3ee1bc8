"""What else could the encoder's privileged bits carry? A screen beside CorrDiff's least-squares λ.

Least-squares λ* per step sits at ≈ 1 (docs/method.md explains why), so the decoder could apply λ = 1
without the encoder's advice. Each row below lets the encoder, which sees the original, choose something
else; each comes with the no-bits row it must beat. Same model, ŷ and seed per image (held-out photos);
values are unquantized up to the stated grids and the bits are an ideal-entropy estimate over this run,
not a coded stream (a screen, not a codec):

* **CorrDiff** — least-squares λ* per coded step (γ = 1), as ``pdc compress`` chooses it; **no bits** —
  λ = 1 on every coded step.
* **per-tile λ** — least squares per T×T tile along the same coarse-band direction, λ ∈ [0, 1.5] in
  steps of 0.1, interpolated bilinearly between tiles (no seams).
* **texture gain** — one scalar per image at the last step: the diffusion's fine band (above L_σ) is
  scaled so that its energy matches the original's (which only the encoder knows), g ∈ [0, 4] in
  quarter steps; **fixed gain** — the mean g of this run for every image (no bits; optimistic, it is
  fitted on the very images it is scored on).
* **perceptual pick** (``--grid``, ≤ 3 coded steps) — λ per coded step from {0, 0.6, 1, 1.4}, the
  combination with the lowest LPIPS-VGG whose PSNR is at most 0.1 dB below the no-bits row. VGG is
  what this encoder optimises (and part of the diffusion's training loss): read LPIPS-alex as the
  held-out score.

    python benchmarks/screen_privileged_bits.py --model runs/k3/set/r0 \\
        --images ../shared/data/bsds500/val --limit 10 --grid --out runs/screen_bits.json
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pdc.codec import code_latent
from pdc.imageio import image_files, read_image, uint8_to_tensor
from pdc.metrics import psnr
from pdc.metrics.perceptual import LpipsTo
from pdc.models.correction import correction_direction, lowpass
from pdc.models.package import CorrDiffModel, load_package
from pdc.models.sampler import SampleResult, correctable_steps, sample

from _held_out import parser, save_rows  # benchmarks/_held_out.py (the script's folder is on sys.path)

GRID = (0.0, 0.6, 1.0, 1.4)
NO_BITS = "no bits (λ = 1 on coded steps)"
TILE_LEVELS = 15  # per-tile λ ∈ {0, 0.1, …, 1.5}
GAIN_STEP, GAIN_MAX = 0.25, 4.0


def _tile_lambdas(r0: torch.Tensor, r_hat: torch.Tensor, d: torch.Tensor, tile: int) -> torch.Tensor:
    """Least-squares λ per tile (1, 1, ⌈H/T⌉, ⌈W/T⌉), quantized to 0.1 in [0, 1.5]."""
    num = F.avg_pool2d(((r0 - r_hat) * d).sum(1, keepdim=True), tile, ceil_mode=True)
    den = F.avg_pool2d((d * d).sum(1, keepdim=True), tile, ceil_mode=True).clamp_min(1e-12)
    return torch.round((num / den).clamp(0, TILE_LEVELS / 10) * 10) / 10


def _fine(r: torch.Tensor, sigma: float) -> torch.Tensor:
    return r - lowpass(r, sigma)


class _Image:
    """One held-out image coded once; every row samples from its ŷ with the same seed."""

    def __init__(self, model: CorrDiffModel, x: torch.Tensor, seed: int) -> None:
        self.model, self.x, self.seed = model, x, seed
        coded = code_latent(model, x)
        self.y_hat, self.padded = coded.y_hat, coded.padded
        self.x_base = model.codec.g_s(self.y_hat).clamp(0, 1)
        self.x_e = model.privileged(self.y_hat)
        s = model.config.diffusion.residual_scale
        self.r_e, self.r0 = (self.x_e - self.x_base) * s, (self.padded - self.x_base) * s
        self.coded = correctable_steps(model.config.correction, model.config.diffusion.steps)
        # Every row scores against this one original: its LPIPS features once, not once per candidate.
        self.alex, self.vgg = LpipsTo(x, "alex"), LpipsTo(x, "vgg")

    def run(self, **kw) -> SampleResult:
        m, dcfg = self.model, self.model.config.diffusion
        return sample(m.diffusion, m.scheduler, self.y_hat, self.x_base, steps=dcfg.steps, seed=self.seed,
                      correction=m.config.correction, residual_scale=dcfg.residual_scale, x_e=self.x_e, **kw)

    def no_bits_levels(self) -> list[int]:
        top = self.model.config.correction.levels - 1
        return [top if k in self.coded else 0 for k in range(self.model.config.diffusion.steps)]

    def lambdas(self, values: dict[int, float | torch.Tensor]):
        """An adjust hook applying λ_k (a scalar or a per-pixel map) along the coarse-band direction."""
        sigma = self.model.config.correction.lowpass_sigma

        def adjust(k: int, r_hat: torch.Tensor, r_tilde: torch.Tensor) -> torch.Tensor:
            if k not in values:
                return r_tilde
            return r_hat + values[k] * correction_direction(r_hat, self.r_e, sigma)
        return adjust

    def score(self, image: torch.Tensor) -> dict[str, float]:
        h, w = self.x.shape[-2:]
        image = image[..., :h, :w].clamp(0, 1)
        return {"psnr": psnr(image, self.x), "lpips": self.alex(image), "lpips_vgg": self.vgg(image)}


def _screen(img: _Image, tiles: list[int], grid: bool) -> tuple[dict[str, dict], float]:
    """Rows for one image, and the encoder's texture gain (for the fixed-gain row)."""
    model = img.model
    sigma = model.config.correction.lowpass_sigma
    steps = model.config.diffusion.steps
    rows: dict[str, dict] = {}

    enc = img.run(target=img.padded, gamma=1.0)
    rows["CorrDiff (least-squares λ per step)"] = {
        **img.score(enc.image), "value": enc.lambda_star, "symbols": [enc.levels[k] for k in img.coded]}
    nobits = img.run(levels=img.no_bits_levels()).image
    rows[NO_BITS] = {**img.score(nobits), "value": [1.0] * len(img.coded), "symbols": []}

    for tile in tiles:
        means, symbols = [], []

        def per_tile(k: int, r_hat: torch.Tensor, r_tilde: torch.Tensor, tile: int = tile) -> torch.Tensor:
            if k not in img.coded:
                return r_tilde
            d = correction_direction(r_hat, img.r_e, sigma)
            lam = _tile_lambdas(img.r0, r_hat, d, tile)
            means.append(float(lam.mean()))
            symbols.extend(int(v) for v in torch.round(lam * 10).flatten().tolist())
            lam_map = F.interpolate(lam, scale_factor=tile, mode="bilinear", align_corners=False)
            return r_hat + lam_map[..., : d.shape[-2], : d.shape[-1]] * d
        rows[f"per-tile λ ({tile} px tiles)"] = {**img.score(img.run(adjust=per_tile).image), "value": means,
                                                 "symbols": symbols}

    gains: list[float] = []
    target = float(_fine(img.r0, sigma).pow(2).sum())

    def texture(k: int, r_hat: torch.Tensor, r_tilde: torch.Tensor) -> torch.Tensor:
        if k != steps - 1:
            return r_tilde
        fine = _fine(r_tilde, sigma)
        g = math.sqrt(target / max(float(fine.pow(2).sum()), 1e-12))
        g = round(min(g, GAIN_MAX) / GAIN_STEP) * GAIN_STEP
        gains.append(g)
        return r_tilde + (g - 1.0) * fine
    with_gain = img.run(target=img.padded, gamma=1.0, adjust=texture)
    rows["texture gain (energy-matched, last step)"] = {**img.score(with_gain.image), "value": [gains[-1]],
                                                        "symbols": [int(gains[-1] / GAIN_STEP)]}

    if grid:
        floor = rows[NO_BITS]["psnr"] - 0.1
        best = None
        for combo in itertools.product(GRID, repeat=len(img.coded)):
            scored = img.score(img.run(adjust=img.lambdas(dict(zip(img.coded, combo)))).image)
            ok = scored["psnr"] >= floor
            key = (not ok, scored["lpips_vgg"])
            if best is None or key < best[0]:
                best = (key, combo, scored)
        _, combo, scored = best
        rows["perceptual pick (min VGG at ≤ 0.1 dB loss)"] = {
            **scored, "value": list(combo), "symbols": [int(sum(GRID.index(v) * len(GRID) ** j
                                                                for j, v in enumerate(combo)))]}
    return rows, gains[-1]


def _ideal_bits(symbols: list[list[int]]) -> float:
    """Bits per image of an ideal entropy coder fitted on the symbols of all images of this run."""
    counts = Counter(s for per_image in symbols for s in per_image)
    total = sum(counts.values())
    if not total:
        return 0.0
    h = -sum(c / total * math.log2(c / total) for c in counts.values())
    return abs(h) * total / len(symbols)  # abs: a single symbol gives -0.0


def main() -> None:
    ap = parser(__doc__, "a fitted package (correction stage)", limit=10)
    ap.add_argument("--tiles", default="64,32", help="tile sizes (pixels) for the per-tile λ rows")
    ap.add_argument("--grid", action="store_true", help=f"add the perceptual-pick row ({len(GRID)}^steps samples)")
    args = ap.parse_args()

    model = load_package(args.model).eval()
    n_coded = len(correctable_steps(model.config.correction, model.config.diffusion.steps))
    if args.grid and n_coded > 3:
        ap.error(f"--grid needs ≤ 3 coded steps; {args.model} codes {n_coded}")
    tiles = [int(t) for t in args.tiles.split(",") if t]
    files = image_files(args.images)[: args.limit]
    per_row: dict[str, list[dict]] = defaultdict(list)
    images, gains = [], []
    with torch.no_grad():
        for i, path in enumerate(tqdm(files, desc="images")):
            img = _Image(model, uint8_to_tensor(read_image(path)), args.seed + i)
            rows, gain = _screen(img, tiles, args.grid)
            for name, row in rows.items():
                per_row[name].append(row)
            images.append(img)
            gains.append(gain)
        fixed = sum(gains) / len(gains)
        sigma = model.config.correction.lowpass_sigma
        steps = model.config.diffusion.steps
        for img in tqdm(images, desc="fixed gain"):
            def fixed_gain(k: int, r_hat: torch.Tensor, r_tilde: torch.Tensor) -> torch.Tensor:
                return r_tilde + (fixed - 1.0) * _fine(r_tilde, sigma) if k == steps - 1 else r_tilde
            per_row[f"fixed gain {fixed:.2f} (no bits, λ = 1)"].append(
                {**img.score(img.run(levels=img.no_bits_levels(), adjust=fixed_gain).image), "value": [fixed],
                 "symbols": []})

    table = []
    for name, rows in per_row.items():
        mean = {m: sum(r[m] for r in rows) / len(rows) for m in ("psnr", "lpips", "lpips_vgg")}
        n = min(len(r["value"]) for r in rows)
        mean["value"] = [sum(r["value"][j] for r in rows) / len(rows) for j in range(n)]
        mean["bits_per_image"] = _ideal_bits([r["symbols"] for r in rows])
        table.append({"row": name, **mean})
    print(f"\n{len(files)} images from {args.images}, model {args.model} (K = {steps}, σ = {sigma:g})\n")
    print("| row | PSNR (dB) | LPIPS-alex | LPIPS-VGG | mean λ per coded step / gain | ≈ bits/image |\n"
          "|---|---|---|---|---|---|")
    for r in table:
        values = " ".join(f"{v:.2f}" for v in r["value"])
        print(f"| {r['row']} | {r['psnr']:.2f} | {r['lpips']:.4f} | {r['lpips_vgg']:.4f} | {values} | "
              f"{r['bits_per_image']:.0f} |")
    save_rows(args.out, args, table)


if __name__ == "__main__":
    main()
