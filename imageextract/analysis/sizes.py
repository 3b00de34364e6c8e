"""Per-particle morphology: one row per instance of a label image.

Pixel columns are always filled; ``*_nm`` / ``*_nm2`` columns are NaN when
the micrograph has no calibration.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: Morphology columns, in output order (provenance columns are added by the pipeline).
COLUMNS = [
    "particle_id", "centroid_x_px", "centroid_y_px",
    "area_px", "area_nm2", "ecd_px", "ecd_nm",
    "feret_max_px", "feret_max_nm", "feret_min_px", "feret_min_nm",
    "major_axis_px", "major_axis_nm", "minor_axis_px", "minor_axis_nm",
    "aspect_ratio", "circularity", "solidity", "orientation_deg",
    "touches_border", "score", "uncertainty", "certain",
]

_DTYPES = {
    "particle_id": "int64", "touches_border": "bool", "certain": "bool",
}


def empty_table() -> pd.DataFrame:
    """A particle table with every column and no rows (typed)."""
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "float64")) for c in COLUMNS})


def feret_diameters(points: np.ndarray) -> tuple[float, float]:
    """Maximum and minimum Feret (caliper) diameters of a 2-D point set.

    Parameters
    ----------
    points : (P, 2) ndarray
        Points (e.g. the corners of a region's pixels).

    Returns
    -------
    feret_max, feret_min : float
        Largest distance between two points, and smallest width over all
        caliper directions (rotating calipers on the convex hull).

    >>> sq = np.array([[0, 0], [0, 2], [3, 0], [3, 2]], float)
    >>> [round(v, 6) for v in feret_diameters(sq)]
    [3.605551, 2.0]
    """
    from scipy.spatial import ConvexHull, QhullError

    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(pts) < 2:
        return 0.0, 0.0
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # collinear points
        d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
        return float(d.max()), 0.0
    diff = hull[:, None, :] - hull[None, :, :]
    fmax = float(np.sqrt((diff ** 2).sum(-1)).max())
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1) / lengths[:, None]
    proj = hull @ normals.T  # (V, E)
    widths = proj.max(axis=0) - proj.min(axis=0)
    return fmax, float(widths.min())


def _pixel_corners(coords: np.ndarray) -> np.ndarray:
    """Corners of the pixels at ``coords`` ((P, 2) row, col) as (x, y) points."""
    xy = coords[:, ::-1].astype(np.float64)
    offs = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    return (xy[:, None, :] + offs[None, :, :]).reshape(-1, 2)


def measure(
    labels: np.ndarray,
    *,
    nm_per_px: float | None = None,
    scores: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    uncertainty_threshold: float | None = None,
) -> pd.DataFrame:
    """Measure every particle of a label image.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Instance labels, 0 is background.
    nm_per_px : float, optional
        Pixel size; ``*_nm`` columns are NaN without it.
    scores, uncertainty : (K,) ndarray, optional
        Per-instance values for labels 1..K (row ``k - 1`` is label ``k``).
    uncertainty_threshold : float, optional
        Instances with uncertainty above it get ``certain = False``.

    Returns
    -------
    table : pandas.DataFrame
        One row per particle with the columns in :data:`COLUMNS`:
        ``ecd`` is the equivalent circular diameter sqrt(4A/π); Feret
        diameters are measured on the pixel outlines (pixel corners);
        ``major/minor_axis`` are those of the ellipse with the same second
        moments and ``aspect_ratio = major / minor >= 1``;
        ``circularity = 4πA/P²`` (capped at 1); ``orientation_deg`` is the
        angle of the major axis from the +x axis, counter-clockwise as the
        image is displayed, in (-90, 90].

    Examples
    --------
    >>> from imageextract.data import disc_labels
    >>> lab = disc_labels((100, 100), [(50, 50)], [20])
    >>> t = measure(lab, nm_per_px=2.0)
    >>> round(float(t.ecd_nm[0]) / 80, 2)
    1.0
    """
    from skimage.measure import regionprops

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array, got shape {labels.shape}")
    if nm_per_px is not None and not (math.isfinite(nm_per_px) and nm_per_px > 0):
        raise ValueError(f"nm_per_px must be a finite number > 0, got {nm_per_px!r}")
    labels = labels.astype(np.int32, copy=False)
    h, w = labels.shape
    rows = []
    for rp in regionprops(labels):
        k = rp.label
        area = float(rp.area)
        cy, cx = rp.centroid
        mu = rp.moments_central
        # second central moments, x = column, y = row (image y points down)
        mu20, mu02, mu11 = mu[2, 0], mu[0, 2], mu[1, 1]  # skimage: mu[r, c] sums dr^r dc^c
        mu_xx, mu_yy, mu_xy = mu02 / area, mu20 / area, mu11 / area
        common = math.sqrt(max(((mu_xx - mu_yy) / 2) ** 2 + mu_xy ** 2, 0.0))
        l1 = (mu_xx + mu_yy) / 2 + common
        l2 = max((mu_xx + mu_yy) / 2 - common, 0.0)
        major = 4 * math.sqrt(l1)
        minor = 4 * math.sqrt(l2)
        theta_img = 0.5 * math.atan2(2 * mu_xy, mu_xx - mu_yy)  # y down
        orient = -math.degrees(theta_img)  # displayed, y up
        if orient <= -90:
            orient += 180
        fmax, fmin = feret_diameters(_pixel_corners(rp.coords))
        perim = float(rp.perimeter)
        circ = min(1.0, 4 * math.pi * area / perim ** 2) if perim > 0 else 1.0
        r0, c0, r1, c1 = rp.bbox
        rows.append({
            "particle_id": k,
            "centroid_x_px": cx, "centroid_y_px": cy,
            "area_px": area, "ecd_px": math.sqrt(4 * area / math.pi),
            "feret_max_px": fmax, "feret_min_px": fmin,
            "major_axis_px": major, "minor_axis_px": minor,
            "aspect_ratio": (major / minor) if minor > 0 else float("nan"),
            "circularity": circ, "solidity": float(rp.solidity),
            "orientation_deg": orient,
            "touches_border": bool(r0 == 0 or c0 == 0 or r1 == h or c1 == w),
        })
    if not rows:
        return empty_table()
    t = pd.DataFrame(rows)
    s = nm_per_px if nm_per_px is not None else float("nan")
    t["area_nm2"] = t["area_px"] * s * s
    for base in ("ecd", "feret_max", "feret_min", "major_axis", "minor_axis"):
        t[f"{base}_nm"] = t[f"{base}_px"] * s
    ids = t["particle_id"].to_numpy()
    t["score"] = np.asarray(scores, float)[ids - 1] if scores is not None and len(scores) else np.nan
    if uncertainty is not None and len(uncertainty):
        unc = np.asarray(uncertainty, float)[ids - 1]
        t["uncertainty"] = unc
        t["certain"] = (unc <= uncertainty_threshold) if uncertainty_threshold is not None else True
    else:
        t["uncertainty"] = np.nan
        t["certain"] = True
    t = t[COLUMNS]
    return t.astype({c: d for c, d in _DTYPES.items()})
