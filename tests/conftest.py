"""Shared fixtures: paths to the shared test data (skipped where absent) and a per-test weights cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("PDC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when the data set is not on this machine."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared test data not available: {p}")
    return p


@pytest.fixture(scope="session")
def lpips_reference() -> Path:
    return shared("lpips-reference")


@pytest.fixture(scope="session")
def kodak() -> Path:
    return shared("kodak")


@pytest.fixture(autouse=True)
def _no_sticky_mlflow_store():
    """pdc points MLflow at a store with ``mlflow.set_tracking_uri``, which outranks $MLFLOW_TRACKING_URI for
    the rest of the process: reset it after every test so no test logs into an earlier test's store."""
    yield
    import sys

    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
