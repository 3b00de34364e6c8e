"""The segmenter protocol and image helpers shared by every backend."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..types import Segmentation


@runtime_checkable
class Segmenter(Protocol):
    """What every segmentation backend provides.

    ``predict`` takes the image first (``(M, N)`` or ``(M, N, 3)``, any
    numeric dtype) and returns a :class:`~imageextract.types.Segmentation`
    whose labels have the image's height and width.
    """

    name: str
    weights: str

    def predict(self, image: np.ndarray) -> Segmentation: ...


def to_gray_float(image: np.ndarray) -> np.ndarray:
    """Convert any supported image to ``(M, N) float32`` in [0, 1].

    Integer images are scaled by their dtype range; float images are
    min-max scaled when outside [0, 1].  NaNs become 0.

    >>> to_gray_float(np.array([[0, 255]], dtype=np.uint8)).tolist()
    [[0.0, 1.0]]
    """
    img = np.asarray(image)
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[..., :3]
        if img.shape[2] == 3:
            img = img.astype(np.float32) @ np.array([0.2125, 0.7154, 0.0721], np.float32)
            src_dtype = np.asarray(image).dtype
        else:
            raise ValueError(f"expected 1, 3 or 4 channels, got image of shape {img.shape}")
    else:
        src_dtype = img.dtype
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D or 3-D image, got shape {np.shape(image)}")
    out = img.astype(np.float32, copy=False)
    if np.issubdtype(src_dtype, np.integer):
        out = out / float(np.iinfo(src_dtype).max)
    else:
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(out.min(initial=0.0)), float(out.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    return np.nan_to_num(out, nan=0.0).astype(np.float32, copy=False)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert any supported image to ``(M, N, 3) uint8`` (for display and for
    networks trained on 8-bit RGB)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.ndim == 3:
        chans = [to_gray_float(img[..., c]) for c in range(3)]
        out = np.stack(chans, axis=-1)
    else:
        g = to_gray_float(img)
        out = np.stack([g, g, g], axis=-1)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 1..K in order of first appearance in sorted order."""
    labels = np.asarray(labels)
    uniq = np.unique(labels)
    uniq = uniq[uniq != 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[uniq] = np.arange(1, uniq.size + 1, dtype=np.int32)
    return lut[labels]


def keep_instances(labels: np.ndarray, scores: np.ndarray, uncertainty: np.ndarray | None,
                   keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Keep the instances ``i + 1`` with ``keep[i]`` (``keep`` as long as
    ``scores``); relabel them 1..K, their scores and uncertainties (None
    stays None) in step.  The inputs themselves come back when all are kept.

    >>> keep_instances(np.array([[1, 2, 3]], np.int32), np.ones(3), np.zeros(3),
    ...                np.array([True, False, True]))[0].tolist()
    [[1, 0, 2]]
    """
    if keep.all():
        return labels, scores, uncertainty
    lut = np.zeros(scores.size + 1, np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels], scores[keep], None if uncertainty is None else uncertainty[keep]


def instances_in_boxes(labels: np.ndarray, boxes, *, min_inside: float = 0.5,
                       pad: int = 2) -> np.ndarray:
    """Which instances of ``labels`` lie mostly in ``boxes``.

    ``boxes``: ``(x0, y0, x1, y1)`` pixel boxes (exclusive ends, as
    :attr:`~imageextract.types.Calibration.bar_box`), each grown by ``pad``
    pixels.  Returns a ``(K,)`` bool array (``K = labels.max()``), True for
    each instance with at least ``min_inside`` of its pixels in their union.

    >>> lab = np.zeros((20, 40), np.int32); lab[2:6, 2:6] = 1; lab[15:18, 5:35] = 2
    >>> instances_in_boxes(lab, [(5.0, 15.0, 35.0, 18.0)]).tolist()
    [False, True]
    """
    if not 0.0 < min_inside <= 1.0:
        raise ValueError(f"min_inside must be in (0, 1], got {min_inside}")
    k = int(labels.max()) if labels.size else 0
    h, w = labels.shape
    mask = np.zeros((h, w), bool)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        mask[max(0, int(np.floor(y0)) - pad):max(0, int(np.ceil(y1)) + pad),
             max(0, int(np.floor(x0)) - pad):max(0, int(np.ceil(x1)) + pad)] = True
    if k == 0 or not mask.any():
        return np.zeros(k, bool)
    area = np.bincount(labels.ravel(), minlength=k + 1)
    inside = np.bincount(labels[mask], minlength=k + 1)
    return inside[1:] >= min_inside * np.maximum(area[1:], 1)


def drop_in_boxes(seg: Segmentation, boxes, *, min_inside: float = 0.5,
                  pad: int = 2) -> Segmentation:
    """``seg`` without the instances that lie mostly in ``boxes``
    (:func:`instances_in_boxes`): a scale bar segmented as a rod is not a
    particle.  The labels of the rest are renumbered ``1..K'`` in order,
    with their scores and uncertainties; ``seg`` itself is returned when
    nothing is dropped.

    >>> lab = np.zeros((20, 40), np.int32); lab[2:6, 2:6] = 1; lab[15:18, 5:35] = 2
    >>> seg = Segmentation(labels=lab, scores=np.array([0.9, 0.8]))
    >>> out = drop_in_boxes(seg, [(5.0, 15.0, 35.0, 18.0)])
    >>> int(out.labels.max()), out.scores.tolist()
    (1, [0.9])
    """
    drop = instances_in_boxes(seg.labels, boxes, min_inside=min_inside, pad=pad)
    if not drop.any():
        return seg
    labels, scores, uncertainty = keep_instances(seg.labels, seg.scores, seg.uncertainty, ~drop)
    return Segmentation(labels=labels, scores=scores, uncertainty=uncertainty,
                        backend=seg.backend, weights=seg.weights,
                        pixel_uncertainty=seg.pixel_uncertainty)


def drop_drawn_scale_bars(image: np.ndarray, seg: Segmentation, *, min_flat: float = 0.5,
                          min_inside: float = 0.5) -> Segmentation:
    """``seg`` without the instances lying on a scale bar drawn on ``image``
    (:func:`~imageextract.figures.scalebar.drawn_scale_bars`, no OCR): at
    least ``min_inside`` of their pixels in its box (:func:`drop_in_boxes`).

    >>> img = np.full((60, 120), 200, np.uint8)
    >>> img += np.random.default_rng(0).integers(0, 20, img.shape, dtype=np.uint8)
    >>> img[10:30, 10:30] = 60; img[50:55, 40:100] = 0   # a particle, a drawn bar
    >>> lab = np.zeros(img.shape, np.int32); lab[10:30, 10:30] = 1; lab[50:55, 40:100] = 2
    >>> drop_drawn_scale_bars(img, Segmentation(labels=lab, scores=np.ones(2))).n_instances
    1
    """
    from ..figures.scalebar import drawn_scale_bars

    boxes = drawn_scale_bars(image, min_flat=min_flat)
    return drop_in_boxes(seg, boxes, min_inside=min_inside) if boxes else seg
