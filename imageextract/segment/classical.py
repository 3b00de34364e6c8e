"""Classical segmentation: needs no weights.

Denoise → flatten uneven background → threshold (Otsu or local) with
automatic particle polarity (light or dark particles) → fill holes and drop
small objects → distance-transform watershed (h-maxima markers) to split
touching particles.  It is the fallback when no trained model is available and
the baseline the learned backends must beat.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from ..types import Segmentation
from .base import drop_drawn_scale_bars, relabel_consecutive, to_gray_float

logger = logging.getLogger(__name__)


def _polarity_is_dark(gray: np.ndarray, mask_light: np.ndarray) -> bool:
    """Decide whether particles are darker than the background.

    The background is taken as the class that covers most of the image
    border; images whose border is split evenly fall back to "the minority
    class is the particles".
    """
    border = np.concatenate([mask_light[0], mask_light[-1], mask_light[:, 0], mask_light[:, -1]])
    frac_light_border = float(border.mean()) if border.size else 0.5
    if abs(frac_light_border - 0.5) > 0.15:
        return frac_light_border > 0.5  # border mostly light → background light → particles dark
    return float(mask_light.mean()) > 0.5


def foreground_mask(
    image: np.ndarray,
    *,
    method: Literal["otsu", "local"] = "otsu",
    polarity: Literal["auto", "light", "dark"] = "auto",
    smooth_sigma: float = 1.0,
    background_sigma: float | None = None,
    block_size: int = 101,
) -> np.ndarray:
    """Binary particle mask of a micrograph.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray
    method : {"otsu", "local"}
        Global Otsu threshold, or a local (adaptive) threshold with
        ``block_size`` neighbourhood.
    polarity : {"auto", "light", "dark"}
        Whether particles are lighter or darker than the background.
    smooth_sigma : float
        Gaussian denoising sigma in pixels (0 disables).
    background_sigma : float, optional
        Sigma of the Gaussian used to estimate and remove an uneven
        background; default a quarter of the smaller image side. 0 disables.

    Returns
    -------
    mask : (M, N) ndarray of bool
    """
    from skimage.filters import threshold_local, threshold_otsu

    gray = to_gray_float(image)
    if gray.size == 0 or float(gray.max() - gray.min()) < 1e-6:
        return np.zeros(gray.shape, dtype=bool)
    if smooth_sigma > 0:
        gray = ndi.gaussian_filter(gray, smooth_sigma)
    if background_sigma is None:
        background_sigma = min(gray.shape) / 4.0
    if background_sigma > 0:
        # Remove slow illumination gradients; the large sigma keeps particles
        # much smaller than the image intact.
        bg = ndi.gaussian_filter(gray, background_sigma, mode="reflect")
        flat = gray - bg
    else:
        flat = gray
    if method == "otsu":
        t = threshold_otsu(flat)
        light = flat > t
    elif method == "local":
        bs = int(block_size) | 1
        light = flat > threshold_local(flat, bs, offset=0.0)
        light &= np.abs(flat - flat.mean()) > 0.25 * flat.std()
    else:
        raise ValueError(f"method must be 'otsu' or 'local', got {method!r}")
    if polarity == "auto":
        dark = _polarity_is_dark(gray, light)
    elif polarity in ("light", "dark"):
        dark = polarity == "dark"
    else:
        raise ValueError(f"polarity must be 'auto', 'light' or 'dark', got {polarity!r}")
    return ~light if dark else light


def split_touching(mask: np.ndarray, *, h: float = 2.0, min_distance: int = 3) -> np.ndarray:
    """Split touching particles with a distance-transform watershed.

    Markers are the h-maxima of the (smoothed) Euclidean distance transform,
    so two particles are separated only when the neck between them is at
    least ``h`` pixels narrower than both.

    Returns
    -------
    labels : (M, N) ndarray of int32
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    dist = ndi.distance_transform_edt(mask)
    dist_s = ndi.gaussian_filter(dist, 1.0) if min_distance > 1 else dist
    peaks = h_maxima(dist_s, h) & mask
    markers, _ = ndi.label(peaks)
    labels = watershed(-dist_s, markers, mask=mask)
    # components without a marker (tiny blobs) keep their own label
    missing = mask & (labels == 0)
    if missing.any():
        extra, n = ndi.label(missing)
        labels = np.where(missing, extra + labels.max(), labels)
    return labels.astype(np.int32)


class ClassicalSegmenter:
    """Threshold + watershed backend (no weights).

    Parameters
    ----------
    method : {"otsu", "local"}
    polarity : {"auto", "light", "dark"}
    smooth_sigma : float
    min_area_px : int
        Objects smaller than this are dropped (default: adaptive,
        ``max(16, 2e-4 * image pixels)``).
    relative_min_area : float
        Objects smaller than this fraction of the typical large object (the
        90th percentile of object areas) are dropped too: particles in one
        micrograph have similar sizes, while noise, text and debris are small.
    split : bool
        Split touching particles with the watershed.
    h : float
        Depth (px) of distance-transform maxima used as watershed markers.
    drop_scale_bars : bool
        Drop the objects lying on a scale bar drawn on the image (a dark
        bar on a light background is a dark object to a threshold;
        :func:`~imageextract.segment.base.drop_drawn_scale_bars`).

    Examples
    --------
    >>> from imageextract.data import synthetic_micrograph
    >>> img, truth = synthetic_micrograph(seed=1)
    >>> seg = ClassicalSegmenter().predict(img)
    >>> abs(seg.n_instances - int(truth.max())) <= 2
    True
    """

    name = "classical"
    weights = "none"

    def __init__(
        self,
        *,
        method: Literal["otsu", "local"] = "otsu",
        polarity: Literal["auto", "light", "dark"] = "auto",
        smooth_sigma: float = 2.0,
        background_sigma: float | None = None,
        min_area_px: int | None = None,
        relative_min_area: float = 0.2,
        split: bool = True,
        h: float = 2.0,
        drop_scale_bars: bool = True,
    ) -> None:
        self.relative_min_area = float(relative_min_area)
        self.method = method
        self.polarity = polarity
        self.smooth_sigma = float(smooth_sigma)
        self.background_sigma = background_sigma
        self.min_area_px = min_area_px
        self.split = bool(split)
        self.h = float(h)
        self.drop_scale_bars = bool(drop_scale_bars)

    def predict(self, image: np.ndarray) -> Segmentation:
        """Segment ``image`` ((M, N) or (M, N, 3)) into particle instances."""
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise ValueError(f"expected a 2-D or 3-D image, got shape {image.shape}")
        mask = foreground_mask(
            image,
            method=self.method,
            polarity=self.polarity,
            smooth_sigma=self.smooth_sigma,
            background_sigma=self.background_sigma,
        )
        n_px = mask.size
        min_area = self.min_area_px if self.min_area_px is not None else max(16, int(2e-4 * n_px))
        mask = ndi.binary_opening(mask, iterations=1)
        mask = ndi.binary_fill_holes(mask)
        mask = _remove_small(mask, min_area)
        if self.relative_min_area > 0:
            mask = _remove_small(mask, int(self.relative_min_area * _typical_area(ndi.label(mask)[0])))
        labels = split_touching(mask, h=self.h) if self.split else ndi.label(mask)[0]
        if self.relative_min_area > 0:
            min_area = max(min_area, int(self.relative_min_area * _typical_area(labels)))
        labels = _remove_small_labels(labels, min_area)
        labels = relabel_consecutive(labels)
        gray = to_gray_float(image)
        scores = _contrast_scores(gray, labels)
        seg = Segmentation(labels=labels, scores=scores, uncertainty=None,
                           backend=self.name, weights=self.weights)
        return drop_drawn_scale_bars(image, seg) if self.drop_scale_bars else seg


def _typical_area(labels: np.ndarray) -> float:
    sizes = np.bincount(labels.ravel())[1:]
    sizes = sizes[sizes > 0]
    return float(np.percentile(sizes, 90)) if sizes.size else 0.0


def _remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[lab]


def _remove_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    small = sizes < min_area
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return labels


def _contrast_scores(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Score in [0, 1] per instance: contrast of its mean intensity against
    the background, relative to the image's dynamic range."""
    k = int(labels.max())
    if k == 0:
        return np.zeros(0)
    idx = np.arange(1, k + 1)
    means = np.asarray(ndi.mean(gray, labels, idx))
    bg = gray[labels == 0]
    bg_mean = float(bg.mean()) if bg.size else 0.0
    rng = float(np.percentile(gray, 99) - np.percentile(gray, 1)) or 1.0
    return np.clip(np.abs(means - bg_mean) / rng, 0.0, 1.0)
