"""Small image helpers shared by the panel splitter and the scale-bar reader."""

from __future__ import annotations

import numpy as np


def to_grey01(image: np.ndarray) -> np.ndarray:
    """Any supported image → ``(M, N) float32`` in [0, 1].

    Parameters
    ----------
    image : (M, N), (M, N, 3) or (M, N, 4) ndarray
        uint8 is divided by 255; other integer types, and float outside
        [0, 1], are min-max scaled.

    Returns
    -------
    grey : (M, N) ndarray of float32

    Raises
    ------
    ValueError
        The array is not an image.

    >>> to_grey01(np.array([[0, 255]], np.uint8)).tolist()
    [[0.0, 1.0]]
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        src = img.dtype
        img = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif img.ndim == 3 and img.shape[2] == 1:
        src, img = img.dtype, img[..., 0]
    elif img.ndim == 2:
        src = img.dtype
    else:
        raise ValueError(f"expected an (M, N) or (M, N, 3) image, got shape {img.shape}")
    out = img.astype(np.float32, copy=False)
    if src == np.bool_:
        return out
    if src == np.uint8:
        return out / 255.0
    if np.issubdtype(src, np.integer):  # 16-bit, 12-bit-in-16, int32: stretch to the range
        lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 1.0)
        return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 1.0)
    if lo < 0.0 or hi > 1.0:
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    return out.astype(np.float32, copy=False)


def saturation(image: np.ndarray) -> np.ndarray:
    """Per-pixel colour saturation (max - min channel) in [0, 1]; zeros for grey.

    >>> saturation(np.zeros((2, 2), np.uint8)).shape
    (2, 2)
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3:
        return np.zeros(img.shape[:2], np.float32)
    rgb = img[..., :3].astype(np.float32)
    scale = 255.0 if img.dtype == np.uint8 else (65535.0 if img.dtype == np.uint16 else max(float(rgb.max()), 1.0))
    return (rgb.max(axis=2) - rgb.min(axis=2)) / scale
