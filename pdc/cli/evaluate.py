"""``pdc evaluate``: rate–distortion–perception curves of a model set against its baselines.

Registered by :mod:`pdc.cli.main` as ``app.command("evaluate")(evaluate_cli.evaluate)`` and, as an alias
that says so on stderr, ``app.command("eval")(evaluate_cli.eval_alias)``; the work is
:func:`pdc.rd.evaluate_model_set`.

* Test images default to ``data/test/kodak`` (``pdc data fetch kodak``), FID images to
  ``data/test/bsds500`` when present; both are checked against the project's training images.
* Output goes to ``outputs/evaluate`` by default; a DVC-tracked output of the project (``eval/``,
  ``models/…``, ``data/shards``, ``data/raw``: the outs of ``dvc.yaml`` and ``*.dvc``) is refused
  unless ``--force``.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pdc.errors import PdcError

DEFAULT_IMAGES = Path("data/test/kodak")
DEFAULT_FID_IMAGES = Path("data/test/bsds500")
DEFAULT_OUT = Path("outputs/evaluate")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


HEADERS = {"ms_ssim": "MS-SSIM", "psnr": "PSNR", "lpips": "LPIPS-alex", "lpips_vgg": "LPIPS-VGG", "fid": "FID",
           "kid": "KID", "fid_bpp": "bpp FID set", "lambda_share": "λ/file", "encode_s": "enc s", "decode_s": "dec s"}


def print_table(summary: dict[str, Any], console=None) -> None:
    """All systems × metrics, one section per rate point, then the classic codecs."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 125))
    rows = summary["rows"]
    fid = summary.get("fid_images") is not None
    cols = [("bpp", 4), ("psnr", 2), ("ms_ssim", 4), ("lpips", 4), ("lpips_vgg", 4)] + (
        [("fid_bpp", 4), ("fid", 2), ("kid", 4)] if fid else []) + [("lambda_share", 3), ("encode_s", 2), ("decode_s", 2)]
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


# -- DVC-tracked outputs ------------------------------------------------------------------------------
def find_dvc_project(path: Path) -> Path | None:
    """The nearest folder at or above ``path`` holding ``dvc.yaml`` or ``.dvc/`` (None: no DVC project)."""
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        if (folder / "dvc.yaml").is_file() or (folder / ".dvc").is_dir():
            return folder
    return None


_VAR = re.compile(r"\$\{\s*([^}]*?)\s*\}")


def _interpolate(path: str, params: dict) -> str | None:
    """``${a.b}`` from params.yaml; a path with a per-item variable (``${key}``, ``${item}``) is cut to
    the folder above it. None when nothing is left."""
    parts = []
    for part in path.split("/"):
        def lookup(m: re.Match) -> str:
            value: Any = params
            for k in m.group(1).split("."):
                if not isinstance(value, dict) or k not in value:
                    raise KeyError(m.group(1))
                value = value[k]
            if isinstance(value, dict | list):
                raise KeyError(m.group(1))
            return str(value)

        try:
            parts.append(_VAR.sub(lookup, part))
        except KeyError:
            break
    return "/".join(parts) or None


def dvc_outputs(project: Path) -> list[Path]:
    """Every output of the DVC project at ``project``: ``outs``, ``metrics`` and ``plots`` of each stage in
    ``dvc.yaml`` (templated paths resolved from params.yaml) and the ``outs`` of ``*.dvc`` files."""
    import yaml

    def load(path: Path) -> Any:
        try:
            return yaml.safe_load(path.read_text()) if path.is_file() else None
        except (OSError, yaml.YAMLError):
            return None

    project = Path(project)
    params = load(project / "params.yaml")
    params = params if isinstance(params, dict) else {}
    found: list[str] = []
    doc = load(project / "dvc.yaml")
    stages = doc.get("stages") if isinstance(doc, dict) else None
    for stage in (stages or {}).values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for field in ("outs", "metrics", "plots"):
            for entry in body.get(field) or [] if isinstance(body, dict) else []:
                path = entry if isinstance(entry, str) else next(iter(entry), None) if isinstance(entry, dict) else None
                if isinstance(path, str) and (resolved := _interpolate(path, params)):
                    found.append(resolved)
    for pin in sorted(project.glob("*.dvc")):
        meta = load(pin)
        for out in (meta.get("outs") or []) if isinstance(meta, dict) else []:
            if isinstance(out, dict) and isinstance(out.get("path"), str):
                found.append((pin.parent / out["path"]).relative_to(project).as_posix())
    return [project / p for p in dict.fromkeys(found)]


def refuse_dvc_output(out: Path) -> None:
    """Raise :class:`PdcError` when ``out`` is, lies inside or holds an output DVC tracks."""
    target = Path(out).resolve()
    project = find_dvc_project(target)
    if project is None:
        return
    for tracked in dvc_outputs(project):
        t = tracked.resolve()
        if target == t or t in target.parents or target in t.parents:
            where = "is" if target == t else "lies inside" if t in target.parents else "holds"
            raise PdcError(f"{out}: {where} the DVC-tracked output {tracked.relative_to(project).as_posix()} of "
                           f"{project} (the pipeline's own); choose another --out or pass --force to replace it")


def default_training_data() -> tuple[Path | None, float | None]:
    """What the project trains on: its shards (``pipeline.shards``) when built, else its corpus
    (``pipeline.data``, train split) when present, else nothing to check against."""
    from pdc.data.shards import MANIFEST
    from pdc.data.testsets import project_paths

    paths = project_paths()
    if (paths["shards"] / MANIFEST).is_file():
        return paths["shards"], None
    if paths["data"].is_dir():
        return paths["data"], paths["val_fraction"]
    return None, None


def evaluate(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model set or package directory, or an MLflow URI "
                                                       "(models:/corrdiff@champion); default: the shipped model "
                                                       "(pdc/zoo/small, every mode).")
    ] = None,
    images: Annotated[Path, typer.Option(help="Test images: a folder (Kodak: `pdc data fetch kodak` → "
                                              "data/test/kodak) or a shards folder (its val split).")] = DEFAULT_IMAGES,
    fid_images: Annotated[
        Path | None,
        typer.Option(help=f"Larger set for FID/KID on 256×256 patches (default: {DEFAULT_FID_IMAGES} if it exists)."),
    ] = None,
    no_fid: Annotated[bool, typer.Option("--no-fid", help="Skip FID/KID.")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (replaced as a whole); a DVC-tracked "
                                      "output (eval/, models/, data/shards …) only with --force.")] = DEFAULT_OUT,
    force: Annotated[bool, typer.Option("--force", help="Allow --out to replace a DVC-tracked output.")] = False,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the whole summary (means and per-image rows) as one JSON file here.",
                     dir_okay=False),
    ] = None,
    rate: Annotated[
        int | None, typer.Option("--rate", "-r", help="Only this rate point (index in the set).", min=0)
    ] = None,
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
                          "corrdiff-g<γ>). Default: all of those. Opt-in: corrdiff-pick (the encoder's perceptual "
                          "λ pick, ≈ 9 samplings per image), corrdiff-nobits (the decoder's fixed λ schedule, no "
                          "λ bits), e2e-refine and corrdiff-refine (the encoder refines each latent, ≈ 60 decoder "
                          "passes per image). Matched-noise controls (e2e-noise[-hf][-pick]) run for corrdiff and "
                          "corrdiff-pick when e2e runs beside them; e2e-lpips runs with --e2e-lpips."),
    ] = None,
    e2e_lpips: Annotated[
        Path | None,
        typer.Option("--e2e-lpips", help="The loss control: a package or model set (as many rate points as --model) "
                                          "whose D_e was trained with the diffusion's loss (`pdc train privileged "
                                          "--loss diffusion`) on the same codec weights (checked). Adds the system "
                                          "e2e-lpips: the e2e files decoded by that D_e, and BD-rates "
                                          "diffusion_vs_e2e_lpips_*. Needs e2e in the run."),
    ] = None,
    classic: Annotated[
        str | None,
        typer.Option(help="Classic baselines, comma-separated (jpeg, webp, avif) or 'none'. Default: all available."),
    ] = None,
    training_data: Annotated[
        Path | None,
        typer.Option(help="What the model trained on (shards or image folder; default: the project's "
                          "pipeline.shards when built, else pipeline.data): test and FID images equal by pixels "
                          "to one of its training images are refused."),
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
    from pdc.config import parse_gammas
    from pdc.fsutil import atomic_write_bytes
    from pdc.rd import evaluate_model_set

    t0 = time.perf_counter()
    if not force:
        refuse_dvc_output(out)
    val_fraction = None
    if training_data is None:
        training_data, val_fraction = default_training_data()
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
    model_dir = model_path(model)
    if rate is not None:
        from pdc.models.package import rate_packages

        members = rate_packages(model_dir)
        if rate >= len(members):
            raise PdcError(f"{model}: --rate {rate} out of range (the set has {len(members)} rate points)")
        model_dir = members[rate]
        if e2e_lpips is not None and len(alts := rate_packages(e2e_lpips)) == len(members) > 1:
            e2e_lpips = alts[rate]  # the same rate point of a set as large as --model
    summary = evaluate_model_set(
        model_dir, images, out, fid_images=fid_dir, limit=limit, crop=crop, steps=steps, gammas=gamma_values,
        progress=True, with_lpips=not no_lpips, fid_limit=fid_limit, seed=seed, decode=not no_decode,
        systems=_names(systems), classic=None if classic is None else _classic(classic), training_data=training_data,
        training_val_fraction=val_fraction, device=device, e2e_lpips=e2e_lpips,
    )
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(summary, indent=2) + "\n").encode())
    print_table(summary)
    typer.echo(f"wrote {len(summary['files'])} files to {summary['out']} (streams in {summary['streams_dir']})")
    typer.echo(f"elapsed {time.perf_counter() - t0:.1f} s")


@functools.wraps(evaluate)
def eval_alias(*args: Any, **kwargs: Any) -> None:
    typer.echo("note: `pdc eval` is an alias of `pdc evaluate` (same options)", err=True)
    evaluate(*args, **kwargs)


eval_alias.__doc__ = "Alias of `pdc evaluate` (same options; says so on stderr)."
