"""``pdc compress``, ``pdc decompress``: the codec on the user's own images (``pdc eval`` is an alias of
``pdc evaluate``, :mod:`pdc.cli.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pdc.errors import BitstreamError, ModelPackageError, PdcError

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model set or package directory, or an MLflow URI such as "
                                       "models:/corrdiff@champion (default: the shipped model, pdc/zoo/small)."),
]
ModeOpt = Annotated[str | None, typer.Option(help="corrdiff, corrdiff-nobits (the same correction with a fixed λ "
                                                  "schedule and no λ bits), diffusion (all λ = 0), e2e (privileged "
                                                  "decoder) or codec (g_s only); default: corrdiff, or the richest "
                                                  "mode a partial model (e.g. codec-only) decodes.")]
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


def model_path(spec: str | None) -> Path:
    """A local directory for a model spec: a path, an MLflow ``models:/name@alias`` URI, or None for the
    shipped model set."""
    if spec is None:
        from pdc.zoo import default_model

        return default_model()
    if spec.startswith("models:/"):
        from pdc.tracking import download_registered_model  # the only place the CLI touches MLflow

        return download_registered_model(spec)
    path = Path(spec)
    if not path.exists():
        raise ModelPackageError(f"{path}: no such model package")
    return path


def load_model(spec: str | None, rate: int = 0, device: str = "cpu"):
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
    image: Annotated[Path, typer.Argument(help="Image to compress (PNG, JPEG, WebP, TIFF, ...), or a folder of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .pdc stream (for a folder: the "
                                                                  "folder to write <name>.pdc files into).")],
    model: ModelOpt = None,
    mode: ModeOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = 0,
    gamma: GammaOpt = None,
    rate: RateOpt = 0,
    recon: Annotated[Path | None, typer.Option(help="Also write the reconstruction the decoder will produce.")] = None,
    pick: Annotated[bool, typer.Option(
        "--pick", help="Choose λ per step by LPIPS-VGG within 0.1 dB of the least-squares PSNR instead of by least "
                       "squares (encoder only, ≈ 10× slower to encode; any decoder reads the result).")] = False,
    refine: Annotated[int, typer.Option(
        "--refine", metavar="STEPS", min=0, max=10000,
        help="Refine each latent for this many steps at the encoder, for the rate point's rate–distortion "
             "trade-off: fewer bits at equal quality, any decoder reads the result. 60 saves ≈ 4 % of the bits at "
             "equal PSNR on Kodak for ≈ 20 s of encoding per photo on 2 CPU cores (docs/results.md). 0: the "
             "one-pass encoder.")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Compress an image (or every image of a folder) into versioned .pdc streams."""
    from pdc.bitstream import Mode
    from pdc.codec import LambdaPick, best_mode
    from pdc.codec import compress as run
    from pdc.fsutil import atomic_write_bytes
    from pdc.imageio import image_files, read_image, write_image
    from pdc.metrics import bpp
    from pdc.models.refine import LatentRefinement
    from pdc.progress import progress_bar

    if pick and mode not in (None, "corrdiff"):
        raise PdcError("--pick chooses λ levels: it needs --mode corrdiff")
    if gamma is not None and mode is not None and _mode(mode) == Mode.CORRDIFF_NOBITS:
        raise PdcError("--gamma scales the encoder's λ: corrdiff-nobits uses a fixed λ schedule instead")
    if image.is_dir():
        if recon is not None and recon.suffix:
            raise PdcError(f"{recon}: with a folder of images, --recon names a folder")
        files = image_files(image)
        if not files:
            raise PdcError(f"{image}: no images (PNG, JPEG, WebP, TIFF) in this folder")
        if output.exists() and not output.is_dir():
            raise PdcError(f"{output}: exists and is not a folder")
    else:
        files = [image]
    net = load_model(model, rate, device)
    coding = _mode(mode) if mode is not None else best_mode(net)
    mode = coding.label
    if pick and mode != "corrdiff":
        raise PdcError(f"--pick chooses λ levels: it needs --mode corrdiff, which this model cannot decode ({mode})")
    failed: list[str] = []
    rates: list[float] = []
    with progress_bar(len(files), "compress", unit="image", enabled=len(files) > 1) as bar:
        for f in files:
            try:
                img = read_image(f)
            except PdcError as exc:  # one unreadable file does not stop the folder; reported at the end
                failed.append(str(exc))
                bar.update(1)
                continue
            enc = run(net, img, mode=coding, steps=steps, seed=seed, gamma=gamma,
                      pick=LambdaPick() if pick else None, refine=LatentRefinement(steps=refine) if refine else None)
            dest = output / f"{f.stem}.pdc" if image.is_dir() else output
            atomic_write_bytes(dest, enc.data)
            if recon is not None:
                write_image(recon / f"{f.stem}.png" if image.is_dir() else recon, enc.reconstruction)
            h, w = img.shape[:2]
            rates.append(bpp(len(enc.data), h, w))
            bar.update(1)
            if not image.is_dir():
                typer.echo(f"{dest}: {len(enc.data)} bytes, {rates[-1]:.4f} bpp ({mode}, λ section "
                           f"{enc.lambda_bytes} B)")
    if image.is_dir():
        typer.echo(f"{output}: {len(rates)} stream(s), mean {sum(rates) / max(1, len(rates)):.4f} bpp ({mode})")
    if failed:
        raise PdcError(f"{len(failed)} file(s) not compressed: " + "; ".join(failed))


def decompress(
    stream: Annotated[Path, typer.Argument(help="A .pdc file written by `pdc compress`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output PNG.")],
    model: ModelOpt = None,
    rate: Annotated[int | None, typer.Option(help="Rate point of a model set (default: the one whose id the stream "
                                                  "carries).", min=0)] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Decode a .pdc stream to PNG with the model that wrote it (a model set's rate point is found from the
    stream's model id)."""
    from pdc.codec import decompress as run
    from pdc.devices import codec_device
    from pdc.imageio import write_image
    from pdc.models.package import load_package, load_rate_point

    data = read_stream(stream)
    path = model_path(model)
    try:
        member = rate_for_stream(path, data) if rate is None else None
        net = load_package(member) if member is not None else load_rate_point(path, rate or 0)
        image = run(net.to(codec_device(device)), data)
    except BitstreamError as exc:
        raise BitstreamError(f"{stream}: {exc}") from None
    write_image(output, image)
    typer.echo(f"{output}: {image.shape[-1]}x{image.shape[-2]}")


def read_stream(stream: Path) -> bytes:
    """The bytes of a .pdc file, refusing a missing or implausibly large file before reading it."""
    if not stream.is_file():
        raise BitstreamError(f"{stream}: no such file")
    size = stream.stat().st_size
    if size > MAX_STREAM_BYTES:
        raise BitstreamError(f"{stream}: {size} bytes is larger than any valid stream")
    return stream.read_bytes()


def rate_for_stream(model: Path, data: bytes) -> Path:
    """The package of ``model`` (a set or a package) whose id the stream carries; a clear error if none."""
    from pdc.bitstream import parse
    from pdc.models.package import rate_packages, read_metadata

    want = parse(data).model_id.hex()
    members = rate_packages(model)
    for member in members:
        if read_metadata(member)["hash"][:32] == want:
            return member
    raise BitstreamError(f"the stream was written by model {want}, which is none of the {len(members)} rate "
                         f"point(s) of {model}: decode with the model set that wrote it")


def info(stream: Annotated[Path, typer.Argument(help="A .pdc file.")]) -> None:
    """Print a stream's header: mode, image size, steps, seed, model id, section sizes, bpp."""
    from pdc.bitstream import parse
    from pdc.metrics import bpp

    data = read_stream(stream)
    try:
        s = parse(data)
    except BitstreamError as exc:
        raise BitstreamError(f"{stream}: {exc}") from None
    typer.echo(f"{stream}: pdc stream v1, {len(data)} bytes, {bpp(len(data), s.height, s.width):.4f} bpp")
    typer.echo(f"  mode      {s.mode.label}")
    typer.echo(f"  size      {s.width}x{s.height}")
    typer.echo(f"  steps     {s.steps}    seed {s.seed}")
    typer.echo(f"  model id  {s.model_id.hex()}")
    for kind, payload in sorted(s.sections.items()):
        typer.echo(f"  section   {kind.name.lower():<7} {len(payload)} bytes")
