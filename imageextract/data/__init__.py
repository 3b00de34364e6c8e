"""Synthetic micrographs with known ground truth (tests, doctests, examples).

Every generator returns ``(image, labels)``: an ``(M, N) uint8`` image and
the ``(M, N) int32`` instance labels it was drawn from.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _render(labels: np.ndarray, *, rng: np.random.Generator, dark_particles: bool,
            noise: float, gradient: float, blur: float) -> np.ndarray:
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = 0.25 + gradient * (xx / max(w - 1, 1))
    fg = 0.8
    img = np.where(labels > 0, fg, bg).astype(np.float32)
    if dark_particles:
        img = 1.0 - img
    if blur > 0:
        img = ndi.gaussian_filter(img, blur)
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def disc_labels(shape: tuple[int, int], centres, radii) -> np.ndarray:
    """Label image with one disc per (centre, radius); later discs win overlaps."""
    h, w = shape
    labels = np.zeros(shape, dtype=np.int32)
    for k, ((cy, cx), r) in enumerate(zip(centres, radii), start=1):
        # paint inside the disc's bounding box only (same pixels as a full-image test)
        y0, y1 = max(0, int(np.floor(cy - r))), min(h, int(np.ceil(cy + r)) + 1)
        x0, x1 = max(0, int(np.floor(cx - r))), min(w, int(np.ceil(cx + r)) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        labels[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return labels


def synthetic_micrograph(
    shape: tuple[int, int] = (256, 256),
    *,
    n_particles: int = 12,
    radius_px: float | tuple[float, float] = (8.0, 14.0),
    dark_particles: bool = False,
    noise: float = 0.04,
    gradient: float = 0.1,
    blur: float = 1.0,
    min_gap_px: float = 4.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random non-overlapping discs on a noisy, slightly uneven background.

    Parameters
    ----------
    shape : (M, N)
    n_particles : int
        Number of discs attempted (fewer if they do not fit).
    radius_px : float or (min, max)
        Disc radius, fixed or uniform in a range.
    dark_particles : bool
        Dark discs on a light background (TEM bright field) instead of light
        on dark.

    Returns
    -------
    image : (M, N) ndarray of uint8
    labels : (M, N) ndarray of int32

    Examples
    --------
    >>> img, lab = synthetic_micrograph(n_particles=5, seed=3)
    >>> img.shape, int(lab.max())
    ((256, 256), 5)
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    lo, hi = (radius_px, radius_px) if np.isscalar(radius_px) else radius_px
    centres, radii = [], []
    tries = 0
    while len(centres) < n_particles and tries < 5000:
        tries += 1
        r = float(rng.uniform(lo, hi))
        cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + min_gap_px) ** 2
               for (y, x), q in zip(centres, radii)):
            centres.append((cy, cx))
            radii.append(r)
    labels = disc_labels(shape, centres, radii)
    img = _render(labels, rng=rng, dark_particles=dark_particles, noise=noise,
                  gradient=gradient, blur=blur)
    return img, labels


def hexagonal_micrograph(
    shape: tuple[int, int] = (400, 400),
    *,
    spacing_px: float = 30.0,
    radius_px: float = 9.0,
    dark_particles: bool = True,
    noise: float = 0.03,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Discs on a hexagonal lattice of nearest-neighbour distance ``spacing_px``.

    >>> img, lab = hexagonal_micrograph(spacing_px=40, radius_px=10)
    >>> int(lab.max()) > 50
    True
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    centres = []
    row_h = spacing_px * np.sqrt(3) / 2
    for i, y in enumerate(np.arange(radius_px + 2, h - radius_px - 2, row_h)):
        offset = (spacing_px / 2) if i % 2 else 0.0
        for x in np.arange(radius_px + 2 + offset, w - radius_px - 2, spacing_px):
            centres.append((float(y), float(x)))
    labels = disc_labels(shape, centres, [radius_px] * len(centres))
    img = _render(labels, rng=rng, dark_particles=dark_particles, noise=noise,
                  gradient=0.05, blur=1.0)
    return img, labels


def draw_scale_bar(image: np.ndarray, *, bar_px: int, thickness: int = 4,
                   margin: int = 10, value: int | None = None) -> np.ndarray:
    """Return a copy of ``image`` with a white bar of ``bar_px`` pixels drawn in
    its lower-right corner (for scale-bar reader tests)."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    y1 = h - margin
    x1 = w - margin
    out[y1 - thickness:y1, x1 - bar_px:x1] = np.iinfo(out.dtype).max if out.dtype.kind in "ui" else 1.0
    return out


__all__ = ["synthetic_micrograph", "hexagonal_micrograph", "disc_labels", "draw_scale_bar"]
