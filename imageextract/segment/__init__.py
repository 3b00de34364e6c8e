"""Segmentation backends: one registry (entry-point group
``imageextract.segmenters``) and the :func:`segment` convenience function."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..registry import Registry
from ..types import Segmentation
from .base import Segmenter

SEGMENTERS = Registry("imageextract.segmenters", "segmentation backend")
# Built-ins are registered by import path so that heavy dependencies (torch)
# load only when the backend is used.
SEGMENTERS.register("classical", "imageextract.segment.classical:ClassicalSegmenter")
SEGMENTERS.register("bpartis", "imageextract.segment.bpartis:BPartIS")


def available_backends() -> list[str]:
    """Names of every installed segmentation backend."""
    return SEGMENTERS.names()


def get_segmenter(name: str = "classical", **options: Any) -> Segmenter:
    """Build backend ``name``; unknown names raise
    :class:`~imageextract.errors.BackendNotFoundError` listing the installed ones."""
    return SEGMENTERS.create(name, **options)


def segment(image: np.ndarray, *, backend: str = "classical", **options: Any) -> Segmentation:
    """Segment one image with backend ``backend``.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray
    backend : str
        Registry name (``imageextract backends`` lists them).
    **options
        Passed to the backend's constructor.

    Returns
    -------
    Segmentation

    Examples
    --------
    >>> from imageextract.data import synthetic_micrograph
    >>> img, truth = synthetic_micrograph(seed=0)
    >>> seg = segment(img, backend="classical")
    >>> seg.labels.shape == img.shape
    True
    """
    return get_segmenter(backend, **options).predict(image)


__all__ = ["SEGMENTERS", "Segmenter", "available_backends", "get_segmenter", "segment"]
