"""The project's error types.

Every failure a user can cause (a bad file, a bad stream, a bad config) raises a subclass of
:class:`PdcError`.  The CLI turns these into one line on stderr and exit status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class PdcError(Exception):
    """Base class for user-facing errors (CLI: one line, exit 2)."""


class ImageError(PdcError):
    """An input file is not a usable image."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MetricError(PdcError):
    """A metric cannot be computed on the given inputs (size mismatch, too small, ...)."""


class WeightsError(PdcError):
    """Pretrained backbone weights could not be resolved or failed verification."""


class BitstreamError(PdcError):
    """A compressed stream is truncated, corrupted, foreign or written for another model."""


class ConfigError(PdcError):
    """A params/config file has unknown keys or invalid values."""


class ModelPackageError(PdcError):
    """A model package is missing, incomplete or fails its hash check."""


class DataError(PdcError):
    """A dataset folder, shard set, download or checksum is missing, invalid or does not verify."""
