"""Calibration: pixels → nanometres.

Order of precedence: a value the user gives (``--nm-per-px``, source
``manual``) > a scale bar read from the image (source ``scalebar``) when a
scale-bar reader is installed > none (nm columns stay null).  The scale-bar
reader plugs in through :func:`set_scale_bar_reader`; the figures stage
registers it when it is available.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from .types import Calibration

logger = logging.getLogger(__name__)

ScaleBarReader = Callable[[np.ndarray], "Calibration | None"]
_reader: ScaleBarReader | None = None


def set_scale_bar_reader(reader: ScaleBarReader | None) -> None:
    """Install (or remove, with None) the function that reads scale bars."""
    global _reader
    _reader = reader


def _default_reader() -> ScaleBarReader | None:
    if _reader is not None:
        return _reader
    try:  # the figures stage, when present, provides read_scale_bar(image)
        from .figures.scalebar import read_scale_bar  # type: ignore[import-not-found]
    except ImportError:
        return None
    return read_scale_bar


def calibrate(image: np.ndarray, *, nm_per_px: float | None = None,
              read_scale_bar: bool = True) -> Calibration | None:
    """Calibration of one micrograph.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray
    nm_per_px : float, optional
        User-given pixel size; wins over anything read from the image.
    read_scale_bar : bool
        Try the installed scale-bar reader when no value is given.

    Returns
    -------
    Calibration or None

    >>> calibrate(np.zeros((8, 8)), nm_per_px=0.5).source
    'manual'
    """
    if nm_per_px is not None:
        return Calibration(nm_per_px=nm_per_px, source="manual", confidence=1.0)
    if not read_scale_bar:
        return None
    reader = _default_reader()
    if reader is None:
        return None
    try:
        return reader(image)
    except Exception as err:  # a reader bug must not lose the micrograph
        logger.warning("scale-bar reader failed: %s", err)
        return None
