"""``pdc metrics ...`` and ``pdc weights``: metrics on image files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from pdc.errors import ImageError
from pdc.imageio import image_files, load_tensor

app = typer.Typer(
    help="Compare two images (or two folders, for FID/KID) with pdc's metric definitions.",
    no_args_is_help=True,
)

ImgA = Annotated[Path, typer.Argument(help="Reference image (the original).")]
ImgB = Annotated[Path, typer.Argument(help="Distorted image (the reconstruction).")]
Net = Annotated[str, typer.Option(help="LPIPS backbone: alex (the standard) or vgg.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.6f}"


def _emit(values: dict[str, float], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({k: (None if math.isinf(v) else v) for k, v in values.items()}))
    else:
        for k, v in values.items():
            typer.echo(f"{k}\t{_fmt(v)}")


def _images(a: Path, b: Path):
    return load_tensor(a), load_tensor(b)


@app.command()
def psnr(a: ImgA, b: ImgB, as_json: AsJson = False) -> None:
    """PSNR in dB on 8-bit RGB (inf for identical images)."""
    from pdc.metrics import psnr as f

    _emit({"psnr": f(*_images(a, b))}, as_json)


@app.command("ms-ssim")
def ms_ssim(a: ImgA, b: ImgB, as_json: AsJson = False) -> None:
    """MS-SSIM (5 scales; both images must be at least 161×161)."""
    from pdc.metrics import ms_ssim as f

    _emit({"ms_ssim": f(*_images(a, b))}, as_json)


@app.command()
def lpips(a: ImgA, b: ImgB, net: Net = "alex", as_json: AsJson = False) -> None:
    """LPIPS distance (v0.1; 0 for identical images)."""
    from pdc.metrics.perceptual import lpips as f

    _emit({f"lpips_{net}": f(*_images(a, b), net=net)}, as_json)


@app.command("all")
def all_metrics(a: ImgA, b: ImgB, net: Net = "alex", as_json: AsJson = False) -> None:
    """PSNR, MS-SSIM and LPIPS of one image pair."""
    from pdc.metrics import ms_ssim, psnr
    from pdc.metrics.perceptual import lpips as lp

    x, y = _images(a, b)
    _emit({"psnr": psnr(x, y), "ms_ssim": ms_ssim(x, y), f"lpips_{net}": lp(x, y, net=net)}, as_json)


def _image_set(path: Path) -> list[Path]:
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise ImageError(path, "folder holds no images")
        return files
    return [path]


@app.command()
def fid(
    reference: Annotated[Path, typer.Argument(help="Folder (or single image) of originals.")],
    reconstructed: Annotated[Path, typer.Argument(help="Folder (or single image) of reconstructions.")],
    as_json: AsJson = False,
) -> None:
    """FID and KID on 256×256 patches (HiFiC / MS-ILLM protocol)."""
    from pdc.metrics.perceptual import fid_kid

    ref = (load_tensor(p) for p in _image_set(reference))
    rec = (load_tensor(p) for p in _image_set(reconstructed))
    f, k = fid_kid(ref, rec)
    _emit({"fid": f, "kid": k.mean, "kid_std": k.std, "kid_subset_size": k.subset_size}, as_json)


def weights(
    net: Annotated[list[str], typer.Option(help="LPIPS backbones to resolve (repeatable).")] = ["alex"],  # noqa: B006
    fid: Annotated[bool, typer.Option(help="Also resolve the FID InceptionV3.")] = True,
) -> None:
    """Fetch, verify and convert the pretrained backbones into the local cache (offline-safe)."""
    from pdc.weights import resolve_all

    for name, path in resolve_all(tuple(net), fid=fid).items():
        typer.echo(f"{name}\t{path}")
