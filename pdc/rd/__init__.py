"""Rate–distortion–perception evaluation: CorrDiff and its baselines beside classic codecs.

``pdc evaluate`` (:mod:`pdc.cli.evaluate`) and :func:`evaluate_model_set` code the same images with
every system, count the bytes of real files, score them with :mod:`pdc.metrics`, and write CompressAI-
schema JSON, ``rd.csv`` (+ per-system DVC plot data), RD plots, a crop grid and ``bd_rate.json``.
This package imports no orchestration library (MLflow logging of the outputs is the caller's job).
"""

from pdc.rd.bd import bd_rate, pareto_front
from pdc.rd.classic import ClassicCodec, classic_codecs
from pdc.config import parse_gammas
from pdc.rd.runner import DEFAULT_GAMMAS, FORMAT, evaluate_model_set

__all__ = [
    "DEFAULT_GAMMAS",
    "FORMAT",
    "ClassicCodec",
    "bd_rate",
    "classic_codecs",
    "evaluate_model_set",
    "pareto_front",
    "parse_gammas",
]
