"""``pdc --version`` (issue 20 item 8)."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

import pdc
from pdc.cli.main import app


def test_version_prints_the_installed_version_and_exits_0():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"pdc {pdc.__version__}"
    assert pdc.__version__ == version("pdc")  # pdc/__init__.py and pyproject.toml agree
