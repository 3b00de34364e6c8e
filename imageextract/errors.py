"""Exception hierarchy.  Every error a user can trigger derives from
:class:`ImageExtractError`, so the command line can report it in one line
instead of a traceback."""

from __future__ import annotations


class ImageExtractError(Exception):
    """Base class of every error imageextract raises on bad input."""


class ImageLoadError(ImageExtractError):
    """A file could not be read as an image (missing, empty, truncated,
    not an image, or over the pixel limit)."""


class CalibrationError(ImageExtractError):
    """A calibration (nm per pixel) is missing, malformed or out of range."""


class BackendNotFoundError(ImageExtractError, KeyError):
    """An unknown segmentation backend or fetcher name was requested."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class WeightsError(ImageExtractError):
    """Model weights are missing or do not match their recorded sha256."""


class FetchError(ImageExtractError):
    """A document or figure could not be fetched from a source."""


class ConfigError(ImageExtractError):
    """A pipeline file or override is malformed."""
