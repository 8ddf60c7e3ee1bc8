"""Entry point of the ``pdc`` command.

User errors (:class:`pdc.errors.PdcError`) are printed as one line on stderr with exit status 2; the
same status Typer uses for bad usage.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

from pdc import __version__
from pdc.cli import data as data_cli
from pdc.cli import codec as codec_cli
from pdc.cli import evaluate as evaluate_cli
from pdc.cli import metrics as metrics_cli
from pdc.cli import train as train_cli
from pdc.errors import PdcError

# Deprecation notices from inside torch/compressai are not actionable for a user of the CLI.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|load)` is deprecated", category=FutureWarning)

app = typer.Typer(
    name="pdc",
    help="Perceptual image codec: a diffusion decoder corrected by a privileged end-to-end decoder (CorrDiff).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pdc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Options of ``pdc`` itself (the app's help text stays the one given to ``typer.Typer``)."""


app.add_typer(metrics_cli.app, name="metrics")
app.add_typer(data_cli.app, name="data")
app.command("weights")(metrics_cli.weights)
app.command("compress")(codec_cli.compress)
app.command("decompress")(codec_cli.decompress)
app.command("info")(codec_cli.info)
app.command("eval", help="Alias of `pdc evaluate` (same options; says so on stderr).")(evaluate_cli.eval_alias)
app.command("evaluate")(evaluate_cli.evaluate)
app.add_typer(train_cli.app, name="train")
app.add_typer(train_cli.pipeline_app, name="pipeline")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; convert user errors into a single line and exit status 2."""
    try:
        app(args=argv, standalone_mode=True)
    except PdcError as exc:
        print(f"pdc: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
