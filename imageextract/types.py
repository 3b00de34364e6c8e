"""Frozen containers that flow between pipeline stages.

They hold data and validate it; they carry no processing logic.  Arrays are
plain NumPy arrays; per-particle results are pandas DataFrames (see
:mod:`imageextract.analysis.sizes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import CalibrationError

CalibrationSource = Literal["scalebar", "sibling", "metadata", "manual"]
CALIBRATION_SOURCES = ("scalebar", "sibling", "metadata", "manual")


@dataclass(frozen=True)
class Calibration:
    """Pixel size of a micrograph.

    Parameters
    ----------
    nm_per_px : float
        Physical size of one pixel in nanometres; finite and > 0.
    source : {"scalebar", "sibling", "metadata", "manual"}
        Where the value came from.
    confidence : float
        0..1; 1 for a value the user typed.
    text : str
        The scale-bar label as read (empty when not from a scale bar).
    bar_px : float or None
        Length of the scale bar in pixels, when read from one.
    bar_box : (x0, y0, x1, y1) or None
        Box of the detected bar (drawn on overlays).
    """

    nm_per_px: float
    source: CalibrationSource = "manual"
    confidence: float = 1.0
    text: str = ""
    bar_px: float | None = None
    bar_box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        try:
            value = float(self.nm_per_px)
        except (TypeError, ValueError) as err:
            raise CalibrationError(
                f"nm_per_px must be a number, got {self.nm_per_px!r}"
            ) from err
        if not math.isfinite(value) or value <= 0:
            raise CalibrationError(
                f"nm_per_px must be a finite number > 0, got {self.nm_per_px!r}"
            )
        if self.source not in CALIBRATION_SOURCES:
            raise CalibrationError(
                f"calibration source {self.source!r} is not one of {CALIBRATION_SOURCES}"
            )
        object.__setattr__(self, "nm_per_px", value)


@dataclass(frozen=True)
class Micrograph:
    """One electron micrograph ready for segmentation.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray
        Pixel data as loaded (uint8, uint16 or float); alpha already dropped.
    micrograph_id : str
        Stable identifier, unique within a run's store.
    calibration : Calibration or None
        None when the pixel size is unknown (nm columns are then null).
    modality : {"TEM", "SEM", "STEM", "unknown"}
    source, path, doi, figure, panel : str
        Provenance; ``doi``/``figure``/``panel`` are empty for local images.
    bbox : (x0, y0, x1, y1)
        Panel box inside its figure (the whole image for local files).
    license, material : str
        Licence of the source article and the material its caption names
        (literature path; empty for local files).
    """

    image: np.ndarray
    micrograph_id: str
    calibration: Calibration | None = None
    modality: str = "unknown"
    source: str = "local"
    path: str = ""
    doi: str = ""
    figure: str = ""
    panel: str = ""
    bbox: tuple[int, int, int, int] | None = None
    license: str = ""
    material: str = ""

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
            raise ValueError(
                f"micrograph {self.micrograph_id!r}: image must be a 2-D or 3-D "
                f"array, got {type(img).__name__} with shape {getattr(img, 'shape', None)}"
            )
        if img.ndim == 3 and img.shape[2] != 3:
            raise ValueError(
                f"micrograph {self.micrograph_id!r}: colour images must have 3 "
                f"channels, got shape {img.shape}"
            )
        if self.bbox is None:
            h, w = img.shape[:2]
            object.__setattr__(self, "bbox", (0, 0, int(w), int(h)))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])  # type: ignore[return-value]


@dataclass(frozen=True)
class Segmentation:
    """Instance segmentation of one micrograph.

    Parameters
    ----------
    labels : (M, N) ndarray of int32
        Instance labels, 0 is background, 1..K instances (consecutive).
    scores : (K,) ndarray of float
        Confidence of each instance, row ``k - 1`` for label ``k``.
    uncertainty : (K,) ndarray of float or None
        Per-instance uncertainty (e.g. mean mutual information); None when the
        backend has no uncertainty estimate.
    backend : str
        Registry name of the backend.
    weights : str
        ``"name:version@sha256:…"`` of the weights, or ``"none"``.
    pixel_uncertainty : (M, N) ndarray or None
        Optional per-pixel uncertainty map.
    """

    labels: np.ndarray
    scores: np.ndarray
    uncertainty: np.ndarray | None = None
    backend: str = ""
    weights: str = "none"
    pixel_uncertainty: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
        labels = labels.astype(np.int32, copy=False)
        n = int(labels.max()) if labels.size else 0
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != n:
            raise ValueError(f"scores has {scores.shape[0]} entries for {n} labels")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", scores)
        if self.uncertainty is not None:
            unc = np.asarray(self.uncertainty, dtype=np.float64).reshape(-1)
            if unc.shape[0] != n:
                raise ValueError(f"uncertainty has {unc.shape[0]} entries for {n} labels")
            object.__setattr__(self, "uncertainty", unc)

    @property
    def n_instances(self) -> int:
        return int(self.scores.shape[0])


PanelKind = Literal["micrograph", "chart", "other"]
PANEL_KINDS = ("micrograph", "chart", "other")


def _check_image(img, what: str) -> None:
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise ValueError(f"{what}: image must be a 2-D or 3-D array, got "
                         f"{type(img).__name__} with shape {getattr(img, 'shape', None)}")
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        raise ValueError(f"{what}: colour images must have 3 or 4 channels, got shape {img.shape}")


@dataclass(frozen=True)
class Figure:
    """A (possibly compound) figure as published or as found on disk.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray
    doi, figure_id, caption, source_url : str
        Provenance; empty for local files.
    license : str or None
    path : str
        Local file the figure was read from, if any.
    """

    image: np.ndarray
    doi: str = ""
    figure_id: str = ""
    caption: str = ""
    source_url: str = ""
    license: str | None = None
    path: str = ""

    def __post_init__(self) -> None:
        _check_image(self.image, f"figure {self.figure_id or self.path!r}")


@dataclass(frozen=True)
class Panel:
    """One panel cut from a figure.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray
        The panel's pixels (a copy of ``figure.image[y0:y1, x0:x1]``).
    doi, figure_id : str
        Provenance of the figure.
    label : str
        Panel letter as printed ("a", "b2", "C"), brackets removed; "" when none was read.
    bbox : (x0, y0, x1, y1)
        Box in figure pixels, exclusive right/bottom edges.
    kind : {"micrograph", "chart", "other"}
        Only micrographs go on to segmentation.
    index : int
        Reading order (rows top to bottom, left to right), from 0.
    """

    image: np.ndarray
    doi: str = ""
    figure_id: str = ""
    label: str = ""
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    kind: PanelKind = "micrograph"
    index: int = 0

    def __post_init__(self) -> None:
        _check_image(self.image, f"panel {self.index}")
        if self.kind not in PANEL_KINDS:
            raise ValueError(f"panel kind {self.kind!r} is not one of {PANEL_KINDS}")
        if len(self.bbox) != 4:
            raise ValueError(f"panel bbox must be (x0, y0, x1, y1), got {self.bbox!r}")
        object.__setattr__(self, "bbox", tuple(int(v) for v in self.bbox))
