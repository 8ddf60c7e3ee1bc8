"""What ``pdc evaluate`` writes: CompressAI-schema JSON, CSV for DVC, RD plots, a crop grid, BD-rates.

All writers take the evaluation's :class:`~pdc.rd.systems.Point` records and a destination folder; the
caller (:func:`pdc.rd.runner.evaluate_model_set`) writes into a staging folder and renames it, so these
functions write plain files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pdc.rd.bd import LOWER_IS_BETTER, bd_rate, pareto_front
from pdc.rd.systems import E2E_LPIPS_KEY, Point, System

#: CompressAI ``eval_model`` result keys for our metric names (``compressai.utils.plot`` reads these).
COMPRESSAI_KEYS = {
    "bpp": "bpp",
    "psnr": "psnr-rgb",
    "ms_ssim": "ms-ssim-rgb",
    "lpips": "lpips",
    "lpips_vgg": "lpips-vgg",
    "fid": "fid",
    "kid": "kid",
    "kid_std": "kid_std",
    "fid_bpp": "fid_bpp",
    "encode_s": "encoding_time",
    "decode_s": "decoding_time",
}

#: The aggregated quality metrics of a point: ``metrics.json``, the DVC plot files, the RD plots.
QUALITY_METRICS = ("bpp", "psnr", "ms_ssim", "lpips", "lpips_vgg", "fid", "kid")
#: FID and KID score the FID images, whose bits are not the test images': they plot and fit against these.
FID_METRICS = ("fid", "kid")
CSV_COLUMNS = (
    "system", "name", "kind", "point", "rate_index", "quality", "gamma", "steps", *QUALITY_METRICS, "fid_bpp",
    "bytes",
    "lambda_bytes", "lambda_share", "encode_s", "decode_s", "images", "fid_patches", "kid_std", "kid_subset_size",
    "decode_max_abs_diff", "noise_sigma",
)
#: Columns of the per-system DVC plot files (``plots/<system>.csv``).
PLOT_COLUMNS = ("point", *QUALITY_METRICS, "fid_bpp")


def clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, tuples → lists, Paths → str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return clean(obj.item())
    return obj


def dump_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(clean(obj), indent=2, ensure_ascii=False) + "\n")


def by_system(points: Sequence[Point]) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.system.key, []).append(p)
    return out


# -- CompressAI JSON -------------------------------------------------------------------------------
def compressai_json(system: System, points: Sequence[Point], *, description: str = "") -> dict[str, Any]:
    """``{"name", "description", "results": {metric: [one value per point]}}`` — CompressAI's schema.

    Missing values (FID with ``--no-fid``, MS-SSIM on crops under 161 px) are ``null`` so every list
    keeps one entry per point.
    """
    metrics = [p.metrics() for p in points]
    results: dict[str, list[Any]] = {key: [m[ours] for m in metrics] for ours, key in COMPRESSAI_KEYS.items()}
    results["lambda_bytes"] = [m["lambda_bytes"] for m in metrics]
    results["point"] = [p.label for p in points]
    if system.kind == "classic":
        results["quality"] = [p.quality for p in points]
    return {"name": system.name, "description": f"{system.description}. {description}".strip(), "results": results}


def write_compressai_json(out: Path, points: Sequence[Point], description: str = "") -> list[Path]:
    """``systems/<key>.json``, one file per system (``python -m compressai.utils.plot -f systems/*.json``)."""
    folder = out / "systems"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for key, pts in by_system(points).items():
        path = folder / f"{key}.json"
        dump_json(path, compressai_json(pts[0].system, pts, description=description))
        files.append(path)
    return files


# -- CSV ---------------------------------------------------------------------------------------------
def _csv_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: _csv_value(r.get(c)) for c in columns})


def write_plot_data(out: Path, points: Sequence[Point]) -> list[Path]:
    """``plots/<system>.csv`` sorted by bpp: one file per system, so ``dvc plots`` draws one line each."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for key, pts in by_system(points).items():
        rows = sorted((p.row() for p in pts), key=lambda r: r["bpp"])
        path = folder / f"{key}.csv"
        write_csv(path, rows, PLOT_COLUMNS)
        files.append(path)
    return files


# -- plots -------------------------------------------------------------------------------------------
METRIC_LABELS = {
    "psnr": "PSNR (dB) ↑",
    "ms_ssim": "MS-SSIM ↑",
    "lpips": "LPIPS-alex ↓",
    "lpips_vgg": "LPIPS-VGG ↓",
    "fid": "FID (256² patches) ↓",
    "kid": "KID ↓",
}


def _style(system: System) -> dict[str, Any]:
    if system.kind == "classic":
        return {"linestyle": "--", "marker": "s", "markersize": 4, "linewidth": 1.0}
    if system.is_control:
        return {"linestyle": "-.", "marker": "x", "markersize": 5, "linewidth": 1.2}
    if system.gamma is not None:
        return {"linestyle": ":", "marker": ".", "markersize": 5, "linewidth": 1.0, "alpha": 0.8}
    if system.refine:  # the same decoder as its one-pass twin, a better encoder
        return {"linestyle": "-", "marker": "^", "markersize": 5, "linewidth": 1.6}
    return {"linestyle": "-", "marker": "o", "markersize": 5, "linewidth": 1.6}


def _figure(**kw):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.subplots(**kw)


def rate_key(metric: str) -> str:
    """The bit-rate a quality metric is plotted and BD-fitted against: the FID images' for FID/KID."""
    return "fid_bpp" if metric in FID_METRICS else "bpp"


def rd_plot(path: Path, points: Sequence[Point], metric: str, title: str) -> bool:
    """bpp vs ``metric``, one line per system; returns False (no file) when no system has the metric."""
    plt, (fig, ax) = _figure(figsize=(8, 5.5))
    drawn = 0
    rate = rate_key(metric)
    try:
        for pts in by_system(points).values():
            xy = sorted((p.metrics()[rate], p.metrics()[metric]) for p in pts)
            xy = [(x, y) for x, y in xy if math.isfinite(x) and y is not None and math.isfinite(y)]
            if not xy:
                continue
            ax.plot([x for x, _ in xy], [y for _, y in xy], label=pts[0].system.name, **_style(pts[0].system))
            drawn += 1
        if not drawn:
            return False
        ax.set_xlabel("bit-rate of the FID images (bpp)" if rate == "fid_bpp" else "bit-rate (bpp)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return True
    finally:
        plt.close(fig)


def dp_plot(path: Path, dp: dict[str, list[dict[str, Any]]], title: str) -> bool:
    """Distortion–perception plane (LPIPS vs PSNR) per rate point: diffusion → CorrDiff(γ) → e2e."""
    series = {label: [e for e in entries if e.get("lpips") is not None and e.get("psnr") is not None]
              for label, entries in dp.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    plt, (fig, ax) = _figure(figsize=(7, 5))
    try:
        for label, entries in series.items():
            line = ax.plot([e["lpips"] for e in entries], [e["psnr"] for e in entries], marker="o", label=label)
            for e in entries:
                ax.annotate(e["tag"], (e["lpips"], e["psnr"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points", color=line[0].get_color())
        ax.set_xlabel(METRIC_LABELS["lpips"])
        ax.set_ylabel(METRIC_LABELS["psnr"])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return True
    finally:
        plt.close(fig)


def crop_grid(path: Path, panels: Sequence[tuple[str, np.ndarray]], title: str, size: int = 256) -> None:
    """Original + reconstructions, all cut at the same centre crop, side by side with their labels."""
    h, w = panels[0][1].shape[:2]
    s_h, s_w = min(size, h), min(size, w)
    top, left = (h - s_h) // 2, (w - s_w) // 2
    n = len(panels)
    cols = min(4, n)
    rows = -(-n // cols)
    plt, (fig, axes) = _figure(nrows=rows, ncols=cols, figsize=(3.2 * cols, 3.7 * rows + 0.4), squeeze=False)
    try:
        for ax in axes.flat:
            ax.axis("off")
        for ax, (label, img) in zip(axes.flat, panels):
            ax.imshow(img[top : top + s_h, left : left + s_w], interpolation="nearest")
            ax.set_title(label, fontsize=9)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=1.5)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


# -- BD-rate and the distortion–perception curve ---------------------------------------------------------
def _curve(points: Sequence[Point], metric: str) -> list[tuple[float, float]]:
    return [(p.metrics()[rate_key(metric)], p.metrics()[metric]) for p in points]


def _front(points: Sequence[Point], metric: str, higher_is_better: bool) -> list[tuple[float, float]]:
    sign = 1.0 if higher_is_better else -1.0
    return [(r, sign * q) for r, q in pareto_front([(r, sign * q) for r, q in _curve(points, metric)])]


def bd_report(points: Sequence[Point]) -> dict[str, Any]:
    """BD-rates of CorrDiff vs its own baselines, JPEG and the matched-noise control, and the γ
    distortion–perception curve per rate point.

    ``corrdiff_vs_jpeg_lpips`` is the figure for users (bits saved over the ubiquitous codec at equal
    LPIPS); ``corrdiff_vs_e2e_noise_lpips*`` says whether CorrDiff's perceptual gain is more than the
    noise-texture gain of the control at the same PSNR and bit-rate; ``diffusion_vs_e2e_lpips_*`` whether
    the diffusion decoder beats a one-pass decoder trained with its own loss (the premise: on FID/KID).
    """
    sys = by_system(points)
    corr_all = [p for p in points if p.system.kind == "learned" and p.system.mode is not None
                and p.system.mode.name == "CORRDIFF"]
    comparisons: dict[str, Any] = {}

    def compare(name: str, test: list[tuple[float, float]], test_label: str, anchor_key: str, metric: str) -> None:
        hib = metric not in LOWER_IS_BETTER
        anchor = _curve(sys.get(anchor_key, []), metric)
        res = bd_rate(anchor, test, higher_is_better=hib)
        comparisons[name] = {"test": test_label, "anchor": anchor_key, "metric": metric, "rate": rate_key(metric), **res,
                             "curves": {"anchor": anchor, "test": test}}

    def measured(metric: str, *keys: str) -> bool:
        """Every point of the systems ``keys`` has ``metric`` (FID/KID: only where an FID set was given)."""
        return all(k in sys for k in keys) and not any(math.isnan(p.metrics()[metric]) for k in keys for p in sys[k])

    corr = sys.get("corrdiff", [])
    if corr:
        compare("corrdiff_vs_diffusion_psnr", _curve(corr, "psnr"), "corrdiff", "diffusion", "psnr")
        compare("corrdiff_vs_e2e_lpips", _curve(corr, "lpips"), "corrdiff", "e2e", "lpips")
        compare("corrdiff_vs_jpeg_lpips", _curve(corr, "lpips"), "corrdiff", "jpeg", "lpips")
        # VGG beside alex: alex is the headline, but the two backbones rank JPEG's low-rate blocks very
        # differently, and VGG is part of the diffusion's training loss: neither alone settles it.
        compare("corrdiff_vs_jpeg_lpips_vgg", _curve(corr, "lpips_vgg"), "corrdiff", "jpeg", "lpips_vgg")
        # FID/KID: metrics no model here is trained on, at the FID images' own bits.
        for metric in FID_METRICS:
            if measured(metric, "corrdiff", "jpeg"):
                compare(f"corrdiff_vs_jpeg_{metric}", _curve(corr, metric), "corrdiff", "jpeg", metric)
    # The MSE decoders against the classic codecs on PSNR: the fidelity the perceptual systems build on.
    for mse in ("e2e", "codec", "e2e-refine"):
        for classic in ("jpeg", "webp"):
            if mse in sys and classic in sys:
                compare(f"{mse}_vs_{classic}_psnr".replace("-", "_"), _curve(sys[mse], "psnr"), mse, classic, "psnr")
    # What the encoder's latent refinement buys the same decoder: bits at equal PSNR, and (CorrDiff) at equal LPIPS.
    for refined, plain, metrics in (("e2e-refine", "e2e", ("psnr",)), ("corrdiff-refine", "corrdiff", ("psnr", "lpips"))):
        if refined in sys and plain in sys:
            for metric in metrics:
                compare(f"{refined}_vs_{plain}_{metric}".replace("-", "_"), _curve(sys[refined], metric), refined,
                        plain, metric)

    def perceptual(test: str, anchor: str) -> None:
        """``test`` against ``anchor`` on every perceptual metric measured (FID/KID only where an FID set was given)."""
        for metric in ("lpips", "lpips_vgg", *FID_METRICS):
            if metric not in FID_METRICS or measured(metric, test, anchor):
                compare(f"{test}_vs_{anchor}_{metric}".replace("-", "_"), _curve(sys[test], metric), test, anchor,
                        metric)

    # Each control against the CorrDiff system it is matched to.
    for key, pts in sys.items():
        control = pts[0].system
        if control.is_control and control.matched_to in sys:
            perceptual(control.matched_to, key)
    if "diffusion" in sys and E2E_LPIPS_KEY in sys:
        perceptual("diffusion", E2E_LPIPS_KEY)
    if len(corr_all) > len(corr):
        compare("corrdiff_gamma_front_vs_diffusion_psnr", _front(corr_all, "psnr", True),
                "corrdiff (best γ per bit-rate: Pareto front over all γ and rate points)", "diffusion", "psnr")
        compare("corrdiff_gamma_front_vs_e2e_lpips", _front(corr_all, "lpips", False),
                "corrdiff (best γ per bit-rate: Pareto front over all γ and rate points)", "e2e", "lpips")
    return {
        "paired": paired_report(sys),
        "convention": "BD-rate in % of the anchor's bit-rate at equal quality (negative: the test saves bits); "
                      "bjontegaard 1.3.0 on log10(bpp) vs quality, LPIPS negated; cubic with >= 4 points per "
                      "curve, else pchip (linear for 2 points); value null with a reason where undefined",
        "comparisons": comparisons,
        "distortion_perception": distortion_perception(points),
    }


#: (test, reference) systems compared image by image at each rate point: what the λ bits add, and what
#: the encoder's latent refinement adds.
PAIRED = (("corrdiff", "corrdiff-nobits"), ("corrdiff-pick", "corrdiff-nobits"), ("corrdiff-pick", "corrdiff"),
          ("e2e-refine", "e2e"), ("corrdiff-refine", "corrdiff"))


def paired_difference(test: Sequence[float], ref: Sequence[float]) -> dict[str, Any]:
    """Mean of ``test − ref`` over paired images with a two-sided 95 % Student-t interval."""
    from scipy import stats

    d = np.asarray(test, dtype=float) - np.asarray(ref, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def paired_report(sys: dict[str, list[Point]]) -> dict[str, Any]:
    """Per rate point, :data:`PAIRED` differences on the same images (bpp, PSNR, LPIPS-alex/VGG): the
    λ bits' cost and gain with an interval, where a BD-rate over 3 points would hide the spread."""
    out: dict[str, Any] = {}
    for test, ref in PAIRED:
        if test not in sys or ref not in sys:
            continue
        refs = {p.label: p for p in sys[ref]}
        for p in sys[test]:
            q = refs.get(p.label)
            if q is None:
                continue
            a = {r["image"]: r for r in p.images}
            b = {r["image"]: r for r in q.images}
            names = [n for n in a if n in b]
            out[f"{test}_minus_{ref}/{p.label}"] = {
                metric: paired_difference([a[n][metric] for n in names], [b[n][metric] for n in names])
                for metric in ("bpp", "psnr", "lpips", "lpips_vgg")
                if all(metric in a[n] and metric in b[n] and math.isfinite(a[n][metric]) and math.isfinite(b[n][metric])
                       for n in names)}
    return out


def distortion_perception(points: Sequence[Point]) -> dict[str, list[dict[str, Any]]]:
    """Per rate point: diffusion (λ ≡ 0), CorrDiff at each γ, e2e — ordered from perception to fidelity.

    ``psnr_gain_over_chord_db`` is how far a CorrDiff point lies above the straight line between the
    two endpoints in the (LPIPS, PSNR) plane: positive where CorrDiff dominates a time-sharing mix of
    the pure endpoints at equal LPIPS (DESIGN §1: "the method is worth it where that curve dominates").
    ``chord_position`` is where its LPIPS falls on that line (0 = diffusion, 1 = e2e); outside [0, 1] the
    gain is taken against the nearer endpoint (no mix reaches that LPIPS).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    # e2e-lpips is another model's D_e (mode e2e too): the curve is one model's, from its diffusion to its e2e.
    learned = [p for p in points if p.system.kind == "learned" and p.system.key not in ("codec", E2E_LPIPS_KEY)
               and not p.system.is_control]
    for label in dict.fromkeys(p.label for p in learned):
        pts = [p for p in learned if p.label == label]
        entries = []
        for p in pts:
            m = p.metrics()
            mode = p.system.mode.name.lower() if p.system.mode is not None else p.system.key
            gamma = p.gamma if mode == "corrdiff" else (0.0 if mode == "diffusion" else None)
            tag = f"γ={gamma:g}" if mode == "corrdiff" else mode
            entries.append({"system": p.system.key, "mode": mode, "gamma": gamma, "tag": tag, "bpp": m["bpp"],
                            "psnr": m["psnr"], "lpips": m["lpips"]})
        order = {"diffusion": -1.0, "e2e": 2.0}
        entries.sort(key=lambda e: order.get(e["mode"], e["gamma"] if e["gamma"] is not None else 1.0))
        ends = {e["mode"]: e for e in entries if e["mode"] in ("diffusion", "e2e")}
        for e in entries:
            if e["mode"] != "corrdiff" or len(ends) < 2:
                continue
            d, x = ends["diffusion"], ends["e2e"]
            vals = (e["lpips"], d["lpips"], x["lpips"], e["psnr"], d["psnr"], x["psnr"])
            if any(v is None or not math.isfinite(v) for v in vals) or x["lpips"] == d["lpips"]:
                continue
            t = (e["lpips"] - d["lpips"]) / (x["lpips"] - d["lpips"])
            e["chord_position"] = t
            tc = min(1.0, max(0.0, t))
            e["psnr_gain_over_chord_db"] = e["psnr"] - (d["psnr"] + tc * (x["psnr"] - d["psnr"]))
        out[label] = entries
    return out
