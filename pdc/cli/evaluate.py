"""``pdc evaluate``: rate–distortion–perception curves of a model set against its baselines.

Registered by :mod:`pdc.cli.main` as ``app.command("evaluate")(evaluate_cli.evaluate)``; the work is
:func:`pdc.rd.evaluate_model_set`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pdc.errors import PdcError

DEFAULT_IMAGES = Path("data/raw/kodak")
DEFAULT_FID_IMAGES = Path("data/raw/bsds500/test")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


HEADERS = {"ms_ssim": "MS-SSIM", "psnr": "PSNR", "lpips": "LPIPS-alex", "lpips_vgg": "LPIPS-VGG", "fid": "FID",
           "kid": "KID", "lambda_share": "λ/file", "encode_s": "enc s", "decode_s": "dec s"}


def print_table(summary: dict[str, Any], console=None) -> None:
    """All systems × metrics, one section per rate point, then the classic codecs."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 125))
    rows = summary["rows"]
    fid = summary.get("fid_images") is not None
    cols = [("bpp", 4), ("psnr", 2), ("ms_ssim", 4), ("lpips", 4), ("lpips_vgg", 4)] + (
        [("fid", 2), ("kid", 4)] if fid else []) + [("lambda_share", 3), ("encode_s", 2), ("decode_s", 2)]
    table = Table(title=f"pdc evaluate — {summary['images']['count']} image(s) from {summary['images']['folder']}"
                        + (f", crop {summary['images']['crop']}" if summary["images"]["crop"] else ""))
    table.add_column("point")
    table.add_column("system")
    for c, _ in cols:
        table.add_column(HEADERS.get(c, c), justify="right")
    last = None
    for r in sorted(rows, key=lambda r: (r["kind"] != "learned", r["point"] if r["kind"] == "learned" else r["system"],
                                          r["quality"] or 0)):
        group = r["point"] if r["kind"] == "learned" else r["system"]
        if last is not None and group != last:
            table.add_section()
        last = group
        table.add_row(r["point"], r["system"], *[_fmt(r.get(c), d) for c, d in cols])
    console.print(table)
    dp = summary.get("bd_rate", {}).get("distortion_perception", {})
    for label, entries in dp.items():
        parts = []
        for e in entries:
            gain = e.get("psnr_gain_over_chord_db")
            extra = f", {gain:+.2f} dB vs chord" if gain is not None else ""
            parts.append(f"{e['tag']} ({_fmt(e['psnr'], 2)} dB, LPIPS {_fmt(e['lpips'], 3)}{extra})")
        console.print(f"D–P curve {label}: " + " → ".join(parts))
    for key, system in summary.get("systems", {}).items():
        for p in system["points"]:
            if p.get("mean_lambda_per_step") is not None:
                lam = " ".join(f"{v:.2f}" for v in p["mean_lambda_per_step"])
                console.print(f"mean λ per step {key} {p['label']}: {lam}")
            if p.get("noise_sigma") is not None:
                console.print(f"{system['name']} {p['label']}: mean σ = {p['noise_sigma'] * 255:.2f}/255 "
                              "(PSNR matched to CorrDiff per image)")
    bd = summary.get("bd_rate", {}).get("comparisons", {})
    for name, res in bd.items():
        value = f"{res['value']:+.1f} % ({res['method']})" if res.get("value") is not None else f"n/a: {res['reason']}"
        console.print(f"BD-rate {name}: {value}")


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _classic(text: str) -> list:
    """``"jpeg,avif"`` → those Pillow baselines; ``"none"`` → none."""
    from pdc.rd.classic import classic_codecs

    wanted = set(_names(text) or []) - {"none"}
    available = classic_codecs()
    unknown = wanted - {c.key for c in available}
    if unknown:
        raise PdcError(f"--classic: unknown or unavailable codec(s) {sorted(unknown)} "
                       f"(have: {', '.join(c.key for c in available)})")
    return [c for c in available if c.key in wanted]


def evaluate(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model set or package directory, or an MLflow URI (models:/corrdiff@champion).")
    ],
    images: Annotated[Path, typer.Option(help="Test images: a folder (Kodak: `pdc data fetch kodak`) or a shards "
                                              "folder (its val split).")] = DEFAULT_IMAGES,
    fid_images: Annotated[
        Path | None,
        typer.Option(help=f"Larger set for FID/KID on 256×256 patches (default: {DEFAULT_FID_IMAGES} if it exists)."),
    ] = None,
    no_fid: Annotated[bool, typer.Option("--no-fid", help="Skip FID/KID.")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (replaced as a whole).")] = Path("eval"),
    limit: Annotated[int | None, typer.Option(help="Only the first N test images.", min=1)] = None,
    fid_limit: Annotated[int | None, typer.Option(help="Only the first N FID images.", min=2)] = None,
    crop: Annotated[int | None, typer.Option(help="Centre-crop test images to this size (quick runs; 0 = full).", min=0)] = None,
    steps: Annotated[int | None, typer.Option(help="DDIM steps K (default: each model's).", min=1, max=64)] = None,
    gammas: Annotated[
        str | None,
        typer.Option(help="Extra CorrDiff strengths γ, comma-separated, or 'none' "
                          "(default: 0.25,0.5,0.75 when the set has < 4 rate points)."),
    ] = None,
    no_lpips: Annotated[bool, typer.Option("--no-lpips", help="Skip LPIPS (alex and VGG).")] = False,
    seed: Annotated[int, typer.Option(help="Diffusion noise seed (stored in every stream).", min=0)] = 0,
    systems: Annotated[
        str | None,
        typer.Option(help="Only these learned systems, comma-separated (corrdiff, diffusion, e2e, codec, "
                          "corrdiff-g<γ>; the e2e-noise control runs when corrdiff and e2e do). Default: all of those. "
                          "Opt-in: corrdiff-pick (the encoder's perceptual λ pick, ≈ 9 samplings per image)."),
    ] = None,
    classic: Annotated[
        str | None,
        typer.Option(help="Classic baselines, comma-separated (jpeg, webp, avif) or 'none'. Default: all available."),
    ] = None,
    training_data: Annotated[
        Path | None,
        typer.Option(help="What the model trained on (shards or image folder): test images equal to one of its "
                          "training images are refused."),
    ] = None,
    no_decode: Annotated[
        bool, typer.Option("--no-decode", help="Score the encoder's simulation instead of decoding each written "
                                              "stream (identical by construction, half the sampling time).")
    ] = False,
    device: Annotated[str, typer.Option(help="Device of the learned codecs: auto (CUDA when present), cpu or cuda. "
                                             "Metrics are computed on the CPU.")] = "auto",
) -> None:
    """RD(P) curves of every rate point vs diffusion-only, e2e, g_s, JPEG/WebP/AVIF; JSON, CSV, plots, BD-rate."""
    from pdc.cli.codec import model_path
    from pdc.rd import evaluate_model_set
    from pdc.config import parse_gammas

    t0 = time.perf_counter()
    gamma_values = parse_gammas(gammas)
    fid_dir = None
    if not no_fid:
        if fid_images is not None:
            fid_dir = fid_images
        elif DEFAULT_FID_IMAGES.is_dir():
            fid_dir = DEFAULT_FID_IMAGES
        else:
            typer.echo(f"note: {DEFAULT_FID_IMAGES} not found and no --fid-images given: FID/KID skipped", err=True)
    if crop is not None and 0 < crop < 16:
        raise PdcError(f"--crop {crop} is too small (use 0 for full images, or ≥ 16)")
    summary = evaluate_model_set(
        model_path(model), images, out, fid_images=fid_dir, limit=limit, crop=crop, steps=steps, gammas=gamma_values,
        progress=True, with_lpips=not no_lpips, fid_limit=fid_limit, seed=seed, decode=not no_decode,
        systems=_names(systems), classic=None if classic is None else _classic(classic), training_data=training_data,
        device=device,
    )
    print_table(summary)
    typer.echo(f"wrote {len(summary['files'])} files to {summary['out']} (streams in {summary['streams_dir']})")
    typer.echo(f"elapsed {time.perf_counter() - t0:.1f} s")
