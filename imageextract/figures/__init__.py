"""Figures: compound-figure panel splitting and scale-bar reading.

::

    split_panels(figure)              -> list[Panel]
    read_scale_bar(image, ocr=None)   -> Calibration | None
    calibrate_panels(panels)          -> list[Calibration | None]   (sibling rule)
    parse_scale_text("0.5 µm")        -> ScaleText(value=0.5, unit="um", ...)

OCR engines load lazily (see :mod:`imageextract.figures.ocr`).
"""

from .panels import split_panels
from .scalebar import (ScaleBarReading, calibrate_panels, drawn_scale_bars, find_scale_bars,
                       read_scale_bar)
from .units import ScaleText, parse_scale_text

__all__ = ["ScaleBarReading", "ScaleText", "calibrate_panels", "drawn_scale_bars",
           "find_scale_bars",
           "parse_scale_text", "read_scale_bar", "split_panels"]
