"""``pdc compress``, ``pdc decompress``, ``pdc eval``: the codec on the user's own images."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from pdc.errors import BitstreamError, ModelPackageError, PdcError

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Model package directory, or an MLflow URI such as models:/corrdiff@champion."),
]
ModeOpt = Annotated[str, typer.Option(help="corrdiff (default), diffusion (all λ = 0), e2e (privileged decoder) or codec (g_s only).")]
StepsOpt = Annotated[int | None, typer.Option(help="DDIM steps K (default: the model's).", min=1, max=64)]
SeedOpt = Annotated[int, typer.Option(help="Seed of the initial noise (stored in the stream).", min=0)]
GammaOpt = Annotated[
    float | None, typer.Option(help="Correction strength γ in [0, 1] (default: the model's).", min=0.0, max=1.0)
]

#: Largest .pdc file we will read (a v1 stream of a 64 MP image is far smaller).
MAX_STREAM_BYTES = 256 * 1024 * 1024


RateOpt = Annotated[int, typer.Option(help="Rate point to use when --model is a model set (0 = lowest λ_rd).", min=0)]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda. A stream decodes on the same "
                                             "device class that wrote it (see README, Devices).")]


def model_path(spec: str) -> Path:
    """A local directory for a model spec: a path, or an MLflow ``models:/name@alias`` URI."""
    if spec.startswith("models:/"):
        from pdc.tracking import download_registered_model  # the only place the CLI touches MLflow

        return download_registered_model(spec)
    path = Path(spec)
    if not path.exists():
        raise ModelPackageError(f"{path}: no such model package")
    return path


def load_model(spec: str, rate: int = 0, device: str = "cpu"):
    """One rate point of a model package or model set, from a path or an MLflow URI, on ``device``
    (auto, cpu or cuda)."""
    from pdc.devices import codec_device
    from pdc.models.package import load_rate_point

    return load_rate_point(model_path(spec), rate).to(codec_device(device))


def _mode(name: str):
    from pdc.bitstream import Mode

    try:
        return Mode.parse(name)
    except ValueError as exc:
        raise PdcError(str(exc)) from None


def compress(
    image: Annotated[Path, typer.Argument(help="Image to compress (PNG, JPEG, WebP, TIFF, ...).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .pdc stream.")],
    model: ModelOpt,
    mode: ModeOpt = "corrdiff",
    steps: StepsOpt = None,
    seed: SeedOpt = 0,
    gamma: GammaOpt = None,
    rate: RateOpt = 0,
    recon: Annotated[Path | None, typer.Option(help="Also write the reconstruction the decoder will produce.")] = None,
    pick: Annotated[bool, typer.Option(
        "--pick", help="Choose λ per step by LPIPS-VGG within 0.1 dB of the least-squares PSNR instead of by least "
                       "squares (encoder only, ≈ 10× slower to encode; any decoder reads the result).")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Compress one image into a versioned .pdc stream."""
    from pdc.codec import LambdaPick
    from pdc.codec import compress as run
    from pdc.fsutil import atomic_write_bytes
    from pdc.imageio import read_image, write_image
    from pdc.metrics import bpp

    img = read_image(image)
    if pick and mode != "corrdiff":
        raise PdcError("--pick chooses λ levels: it needs --mode corrdiff")
    enc = run(load_model(model, rate, device), img, mode=_mode(mode), steps=steps, seed=seed, gamma=gamma,
              pick=LambdaPick() if pick else None)
    atomic_write_bytes(output, enc.data)
    if recon is not None:
        write_image(recon, enc.reconstruction)
    h, w = img.shape[:2]
    typer.echo(f"{output}: {len(enc.data)} bytes, {bpp(len(enc.data), h, w):.4f} bpp ({mode}, λ section {enc.lambda_bytes} B)")


def decompress(
    stream: Annotated[Path, typer.Argument(help="A .pdc file written by `pdc compress`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output PNG.")],
    model: ModelOpt,
    rate: RateOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Decode a .pdc stream to PNG (the model must be the one that wrote it)."""
    from pdc.codec import decompress as run
    from pdc.imageio import write_image

    if not stream.is_file():
        raise BitstreamError(f"{stream}: no such file")
    size = stream.stat().st_size
    if size > MAX_STREAM_BYTES:
        raise BitstreamError(f"{stream}: {size} bytes is larger than any valid stream")
    try:
        image = run(load_model(model, rate, device), stream.read_bytes())
    except BitstreamError as exc:
        raise BitstreamError(f"{stream}: {exc}") from None
    write_image(output, image)
    typer.echo(f"{output}: {image.shape[-1]}x{image.shape[-2]}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}"
    return str(v)


def evaluate(
    images: Annotated[Path, typer.Argument(help="Folder of test images (e.g. Kodak).")],
    model: ModelOpt,
    modes: Annotated[str, typer.Option(help="Comma-separated modes to evaluate.")] = "corrdiff,diffusion,e2e",
    steps: StepsOpt = None,
    gamma: GammaOpt = None,
    crop: Annotated[int | None, typer.Option(help="Centre-crop each image to this size (quick runs).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the full results as JSON here.")] = None,
    lpips: Annotated[bool, typer.Option(help="Compute LPIPS (alex and VGG).")] = True,
    rate: RateOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Mean bpp, PSNR, MS-SSIM, LPIPS of each mode of one rate point on a folder: a view of `pdc evaluate`
    (same code, no classic codecs, no FID), as a table and JSON (per-image rows included)."""
    import tempfile

    from rich.console import Console
    from rich.table import Table

    from pdc.fsutil import atomic_write_bytes
    from pdc.models.package import rate_packages
    from pdc.rd import evaluate_model_set

    members = rate_packages(model_path(model))
    if not 0 <= rate < len(members):
        raise PdcError(f"{model}: rate index {rate} out of range (the set has {len(members)} rate points)")
    keys = [_mode(m.strip()).name.lower() for m in modes.split(",") if m.strip()]
    if gamma is not None and "corrdiff" in keys:
        keys[keys.index("corrdiff")] = f"corrdiff-g{gamma:g}"
    with tempfile.TemporaryDirectory(prefix="pdc-eval-") as tmp:
        summary = evaluate_model_set(
            members[rate], images, Path(tmp) / "eval", limit=limit, crop=crop, steps=steps,
            gammas=(gamma,) if gamma is not None else (), classic=[], with_lpips=lpips,
            systems=[k for k in keys if k != "e2e-noise"], device=device,
        )
    if output is not None:
        atomic_write_bytes(output, (json.dumps(summary, indent=2) + "\n").encode())
    cols = ["bpp", "psnr", "ms_ssim", "lpips", "lpips_vgg", "lambda_bytes", "encode_s", "decode_s"]
    table = Table(title=f"{summary['images']['count']} images from {images} (rate point {rate})")
    table.add_column("mode")
    for c in cols:
        table.add_column(c, justify="right")
    for row in summary["rows"]:
        table.add_row(row["system"], *[_fmt(row.get(c, float("nan"))) for c in cols])
    Console().print(table)
