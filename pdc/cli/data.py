"""``pdc data ...``: the default corpus, imports, downloads, validation and WebDataset shards.

Parsing and printing only; the work is done by :mod:`pdc.data`.  Errors are :class:`pdc.errors.PdcError`
(one line, exit 2); ``--strict`` turns rejected files into exit status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pdc.imageio import MAX_PIXELS
from pdc.progress import progress_callback

if TYPE_CHECKING:
    from pdc.data.validate import Report

app = typer.Typer(
    help="Training and test data: embedded default corpus, imports, downloads, validation, WebDataset shards.",
    no_args_is_help=True,
)

MinSize = Annotated[
    int,
    typer.Option(
        "--min-size", help="Reject images whose width or height is below this (the training crop size).", min=1
    ),
]
MaxPixels = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        help="Reject images with more pixels than this, read "
        "from the header before decoding (decompression-bomb guard).",
        min=1,
    ),
]
Strict = Annotated[bool, typer.Option("--strict", help="Exit with status 1 if any file was rejected.")]
ReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--report", help="Where to write the JSON report (default: data/reports/<name>.json).", dir_okay=False
    ),
]
Root = Annotated[Path, typer.Option("--root", help="Folder holding the raw corpora (DVC-tracked).")]
TestRoot = Annotated[
    Path, typer.Option("--root", help="Folder holding the test sets (outside pipeline.data, never sharded).")
]

DEFAULT_MIN = 256


_progress = progress_callback  # tqdm, as every progress bar in pdc (pdc.progress)


def _summarize(report: Report, report_path: Path, verb: str, strict: bool) -> None:
    c = report.counts
    typer.echo(
        f"{verb} {len(report.files)} file(s): {c['ok']} ok, {c['converted']} converted, "
        f"{c['rejected']} rejected; report: {report_path}"
    )
    rejected = report.rejected
    for f in rejected[:20]:
        typer.echo(f"  rejected {f.path}: {f.reason}", err=True)
    if len(rejected) > 20:
        typer.echo(f"  ... and {len(rejected) - 20} more (see the report)", err=True)
    if strict and rejected:
        raise typer.Exit(1)


@app.command()
def init(
    dest: Annotated[Path, typer.Option("--dest", help="Output folder.")] = Path("data/raw/default"),
) -> None:
    """Write the embedded default corpus (colour photos from the scikit-image wheel) as PNG.

    Byte-identical on every run with the pinned packages, so `dvc status data.dvc` stays clean.
    """
    from pdc.data.corpus import init_default_corpus

    with _progress("default corpus") as cb:
        files = init_default_corpus(dest, progress=cb)
    typer.echo(f"wrote {len(files)} images to {dest}")


@app.command("import")
def import_(
    src: Annotated[Path, typer.Argument(help="Folder of PNG/JPEG/WebP/TIFF images (searched recursively).")],
    name: Annotated[str | None, typer.Option("--name", help="Corpus name (default: the folder's name).")] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Target folder of the corpora (default: data/raw, or data/test with --test)."),
    ] = None,
    test: Annotated[
        bool, typer.Option("--test", help="A test set: goes to data/test/NAME, never into pipeline.data.")
    ] = False,
    min_size: MinSize = DEFAULT_MIN,
    max_pixels: MaxPixels = MAX_PIXELS,
    report: ReportOpt = None,
    strict: Strict = False,
) -> None:
    """Copy a folder of images into <root>/NAME as 8-bit RGB PNG, converting or rejecting each file.

    The target folder is replaced as a whole, atomically. Every file's outcome goes to the JSON report.
    Training corpora go to data/raw (pipeline.data); test sets (--test) to data/test, and a test set
    inside pipeline.data is refused.
    """
    from pdc.data.testsets import TEST_ROOT, TRAINING_ROOT, refuse_test_set_inside_training
    from pdc.data.validate import default_report_path, import_folder, write_report

    corpus = name or src.resolve().name
    if not corpus or "/" in corpus or corpus.startswith("."):
        from pdc.errors import DataError

        raise DataError(f"invalid corpus name {corpus!r}")
    root = root if root is not None else TEST_ROOT if test else TRAINING_ROOT
    if test:
        refuse_test_set_inside_training(root / corpus)
    with _progress(f"import {corpus}") as cb:
        rep = import_folder(src, root / corpus, min_size=min_size, max_pixels=max_pixels, progress=cb)
    path = report or default_report_path(corpus)
    write_report(rep, path)
    _summarize(rep, path, f"imported into {root / corpus}:", strict)


@app.command()
def fetch(
    dataset: Annotated[str, typer.Argument(help="kodak or clic2020.")],
    from_dir: Annotated[
        Path | None,
        typer.Option("--from", help="Take the files from this local folder (or the CLIC zip) instead of downloading."),
    ] = None,
    root: TestRoot = Path("data/test"),
    sha256: Annotated[str | None, typer.Option("--sha256", help="Expected SHA-256 of the CLIC 2020 zip.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Network timeout in seconds.")] = 30.0,
) -> None:
    """Download a standard test set into <root>/DATASET (default data/test/DATASET), verifying checksums.

    Test sets stay out of the training corpus: a <root> inside pipeline.data is refused.

    kodak: the 24 kodimNN.png from r0k.us, each checked against a shipped SHA-256 table.
    clic2020: the CLIC 2020 professional validation zip; its SHA-256 is printed (not yet pinned).
    """
    from pdc.data.fetch import fetch_dataset

    with _progress(f"fetch {dataset}") as cb:
        res = fetch_dataset(dataset, root, from_dir=from_dir, expected_sha256=sha256, timeout=timeout, progress=cb)
    msg = f"wrote {res.files} images to {res.dest}"
    if res.archive_sha256:
        msg += f" (archive sha256 {res.archive_sha256})"
    typer.echo(msg)


@app.command()
def validate(
    src: Annotated[Path, typer.Argument(help="Folder to check (searched recursively).")],
    min_size: MinSize = DEFAULT_MIN,
    max_pixels: MaxPixels = MAX_PIXELS,
    report: ReportOpt = None,
    strict: Strict = False,
) -> None:
    """Check every file of a folder (nothing is copied) and write the JSON report."""
    from pdc.data.validate import default_report_path, validate_folder, write_report

    with _progress(f"validate {src}") as cb:
        rep = validate_folder(src, min_size=min_size, max_pixels=max_pixels, progress=cb)
    path = report or default_report_path(src.resolve().name)
    write_report(rep, path)
    _summarize(rep, path, "checked", strict)


@app.command()
def shards(
    src: Annotated[Path, typer.Option("--src", help="Raw images (all corpora).")] = Path("data/raw"),
    out: Annotated[Path, typer.Option("--out", help="Output folder (replaced atomically).")] = Path("data/shards"),
    shard_size: Annotated[int, typer.Option("--shard-size", help="Samples per shard.", min=1)] = 16,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Fraction of files in the val split (fixed hash of the relative path).",
            min=0.0,
            max=1.0,
        ),
    ] = 0.1,
    min_size: MinSize = DEFAULT_MIN,
    max_pixels: MaxPixels = MAX_PIXELS,
    test_set: Annotated[
        list[Path] | None,
        typer.Option("--test-set", help="Another folder of test images (repeatable; data/test is always checked)."),
    ] = None,
    strict: Strict = False,
) -> None:
    """Write byte-reproducible WebDataset train/val shards and manifest.json.

    An image equal by pixels to one of the test sets (every image under data/test, plus --test-set
    folders) is refused with both files named, and nothing is written.
    """
    from pdc.data.shards import build_shards

    with _progress("shards") as cb:
        manifest = build_shards(
            src,
            out,
            shard_size=shard_size,
            val_fraction=val_fraction,
            min_size=min_size,
            max_pixels=max_pixels,
            test_sets=test_set or (),
            progress=cb,
        )
    c = manifest["counts"]
    n = {s: len(v) for s, v in manifest["shards"].items()}
    typer.echo(
        f"wrote {out}: train {c['train']} samples in {n['train']} shard(s), val {c['val']} in {n['val']}, "
        f"{c['rejected']} rejected"
    )
    for r in manifest["rejected"][:20]:
        typer.echo(f"  rejected {r['path']}: {r['reason']}", err=True)
    if strict and manifest["rejected"]:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
