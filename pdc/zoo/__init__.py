"""Shipped weights: the model set that ``pdc compress``/``decompress``/``evaluate`` use without ``--model``.

``pdc/zoo/small/`` is a model set (``index.json`` + one package per rate point) trained by the ``small``
profile; ``MODEL_CARD.md`` beside it says how, on what and how well. Packages are hash-verified on load,
so altered weights are refused by name. Its packages may hold only some networks (see
:mod:`pdc.models.package`): a codec-only set decodes in ``--mode codec`` and warm-starts training.
"""

from __future__ import annotations

from pathlib import Path

from pdc.errors import ModelPackageError

#: The shipped model set (installed with the package).
SHIPPED = Path(__file__).resolve().parent / "small"


def default_model() -> Path:
    """The shipped model set, or a one-line error saying how to get a model."""
    if (SHIPPED / "index.json").is_file():
        return SHIPPED
    raise ModelPackageError(f"no --model given and no shipped model in {SHIPPED}: train one with `make run` "
                            "(then --model models/corrdiff) or pass --model DIR")


def shipped_package(rate: str) -> Path | None:
    """The shipped package of rate point ``rate`` (a warm start for training), if there is one."""
    p = SHIPPED / rate
    return p if (p / "model.json").is_file() else None
