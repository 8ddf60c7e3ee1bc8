"""The tables of docs/results.md from a `pdc evaluate` output folder: points, BD-rates, paired differences.

Reads ``rd.csv`` and ``bd_rate.json`` of one evaluation and prints them as Markdown, so every figure on
that page comes from an evaluation output through committed code::

    python benchmarks/results_tables.py outputs/kodak                 # all systems, all BD-rates
    python benchmarks/results_tables.py outputs/fid --metrics fid_bpp,fid,kid
    python benchmarks/results_tables.py outputs/fid-seed1 --metrics fid_bpp,fid,kid --spread outputs/fid

BD-rate: negative = the test system needs fewer bits for the same quality (pdc/rd/bd.py). Paired: mean
per-image difference (test − reference) with its 95 % Student-t interval (pdc/rd/report.py). FID and KID
are fitted against the FID images' own bpp (``fid_bpp``). ``--spread OTHER``: FID/KID of the same systems in
another evaluation (another ``--seed``) beside these, with their difference.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

COLUMNS = {"bpp": ("bpp", 4), "psnr": ("PSNR (dB)", 2), "ms_ssim": ("MS-SSIM", 4), "lpips": ("LPIPS-alex", 4),
           "lpips_vgg": ("LPIPS-VGG", 4), "fid_bpp": ("bpp (FID images)", 4), "fid": ("FID", 1), "kid": ("KID", 4)}


def _fmt(value: str, digits: int) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def points_table(rows: list[dict[str, str]], metrics: list[str]) -> str:
    head = ["system", "point", *(COLUMNS[m][0] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for m in metrics:
            cell = _fmt(r.get(m), COLUMNS[m][1])
            if m == "kid" and r.get("kid_std") not in (None, ""):
                cell += f" ± {_fmt(r['kid_std'], 4)}"
            cells.append(cell)
        lines.append(f"| {r['system']} | {r['point']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bd_table(bd: dict) -> str:
    lines = ["| comparison | BD-rate | rate axis | fit |", "|---|---|---|---|"]
    for name, c in bd.get("comparisons", {}).items():
        value = c.get("value")
        cell = f"{value:+.1f} %" if isinstance(value, (int, float)) else f"– ({c.get('reason')})"
        lines.append(f"| {name} | {cell} | {c.get('rate', 'bpp')} | {c.get('method') or ''} |")
    return "\n".join(lines)


def paired_table(bd: dict) -> str:
    lines = ["| test − reference | point | metric | mean | 95 % CI | n |", "|---|---|---|---|---|---|"]
    for key, by_metric in (bd.get("paired") or {}).items():  # "<test>_minus_<reference>/<point>"
        pair, _, point = key.rpartition("/")
        for metric, d in by_metric.items():
            lo, hi = d["ci95"]
            lines.append(f"| {pair} | {point} | {metric} | {d['mean']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {d['n']} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def spread_table(rows: list[dict[str, str]], other: list[dict[str, str]], seeds: tuple[str, str]) -> str:
    """FID and KID of each (system, point) in two evaluations side by side, with the difference."""
    theirs = {(r["system"], r["point"]): r for r in other}
    head = ["system", "point", *(f"{m} ({s})" for m in ("FID", "KID") for s in seeds), "ΔFID", "ΔKID"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        o = theirs.get((r["system"], r["point"]))
        if o is None or r.get("fid") in (None, ""):
            continue
        a = [float(r["fid"]), float(o["fid"]), float(r["kid"]), float(o["kid"])]
        lines.append(f"| {r['system']} | {r['point']} | {a[0]:.1f} | {a[1]:.1f} | {a[2]:.4f} | {a[3]:.4f} | "
                     f"{a[0] - a[1]:+.1f} | {a[2] - a[3]:+.4f} |")
    return "\n".join(lines)


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "rd.csv", newline="") as f:
        return list(csv.DictReader(f))


def _seed(folder: Path) -> str:
    return f"seed {json.loads((folder / 'summary.json').read_text()).get('seed')}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("eval", type=Path, help="A `pdc evaluate` output folder (rd.csv, bd_rate.json).")
    ap.add_argument("--spread", type=Path, help="Another evaluation of the same systems (another --seed): "
                    "print FID/KID of both.")
    ap.add_argument("--metrics", default="bpp,psnr,ms_ssim,lpips,lpips_vgg",
                    help=f"Columns, comma-separated, of: {', '.join(COLUMNS)}.")
    args = ap.parse_args()
    metrics = [m for m in args.metrics.split(",") if m]
    unknown = [m for m in metrics if m not in COLUMNS]
    if unknown:
        ap.error(f"unknown metric(s) {unknown}: choose from {', '.join(COLUMNS)}")
    rows = _rows(args.eval)
    bd = json.loads((args.eval / "bd_rate.json").read_text())
    print(points_table(rows, metrics), "", bd_table(bd), sep="\n")
    paired = paired_table(bd)
    if paired:
        print("", paired, sep="\n")
    if args.spread is not None:
        print("", spread_table(rows, _rows(args.spread), (_seed(args.eval), _seed(args.spread))), sep="\n")


if __name__ == "__main__":
    main()
