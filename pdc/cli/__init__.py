"""The ``pdc`` command line: a thin Typer layer over plain library functions."""

from pdc.cli.main import app, main

__all__ = ["app", "main"]
