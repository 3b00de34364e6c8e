"""Size and shape distributions: histograms, D10/D50/D90, lognormal fit,
bootstrap confidence intervals.  Pure functions on 1-D arrays."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

Weighting = Literal["number", "volume"]


def _clean(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v) & (v > 0)]


def _weights(d: np.ndarray, weighting: Weighting) -> np.ndarray:
    if weighting == "number":
        return np.ones_like(d)
    if weighting == "volume":
        return d ** 3
    raise ValueError(f"weighting must be 'number' or 'volume', got {weighting!r}")


def weighted_percentiles(values, q, *, weighting: Weighting = "number") -> np.ndarray:
    """Percentiles ``q`` (0–100) of ``values`` under number or volume (d³) weighting.

    Number weighting gives NumPy's linear-interpolation percentiles; volume
    weighting interpolates the cumulative volume fraction.

    >>> weighted_percentiles([1, 2, 3, 4, 5], [10, 50, 90]).tolist()
    [1.4, 3.0, 4.6]
    """
    d = _clean(values)
    q = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if d.size == 0:
        return np.full(q.shape, np.nan)
    if weighting == "number":
        return np.percentile(d, q)
    d = np.sort(d)
    w = _weights(d, weighting)
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(q / 100.0, cum, d)


def lognormal_fit(values) -> tuple[float, float]:
    """Maximum-likelihood lognormal fit: (geometric mean, geometric SD).

    >>> gm, gsd = lognormal_fit([10, 10, 10])
    >>> round(gm, 6), round(gsd, 6)
    (10.0, 1.0)
    """
    d = _clean(values)
    if d.size == 0:
        return float("nan"), float("nan")
    logs = np.log(d)
    return float(np.exp(logs.mean())), float(np.exp(logs.std(ddof=0)))


def histogram(values, *, bins: int | str | np.ndarray = "auto",
              weighting: Weighting = "number", value_range=None) -> pd.DataFrame:
    """Histogram as a table: ``bin_left, bin_right, count, fraction``.

    ``fraction`` sums to 1 and is number- or volume-weighted; ``count`` is
    always the number of particles in the bin.
    """
    d = _clean(values)
    if d.size == 0:
        return pd.DataFrame({"bin_left": [], "bin_right": [], "count": [], "fraction": []})
    edges = np.histogram_bin_edges(d, bins=bins, range=value_range)
    counts, _ = np.histogram(d, bins=edges)
    wsum, _ = np.histogram(d, bins=edges, weights=_weights(d, weighting))
    total = wsum.sum()
    return pd.DataFrame({
        "bin_left": edges[:-1], "bin_right": edges[1:], "count": counts,
        "fraction": wsum / total if total > 0 else wsum,
    })


def bootstrap_ci(values, statistic, *, n_boot: int = 1000, ci: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic(values)``.

    ``statistic`` maps a 1-D array to a float.  Returns (low, high); NaNs
    with fewer than 2 values.
    """
    d = _clean(values)
    if d.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    stats = np.array([statistic(d[i]) for i in idx])
    alpha = (1 - ci) / 2
    lo, hi = np.nanpercentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def summarize(table: pd.DataFrame, *, exclude_border: bool = True,
              weighting: Weighting = "number", n_boot: int = 500,
              seed: int = 0) -> dict:
    """Per-micrograph statistics of a particle table.

    Uses ``ecd_nm`` when the table is calibrated, else ``ecd_px``; the keys
    say which (``d50_nm`` or ``d50_px``, …).  Border-touching particles are
    left out unless ``exclude_border=False``; uncertain particles
    (``certain == False``) are always left out.

    Returns
    -------
    dict
        ``n_particles, n_measured, unit, d10, d50, d90, d50_ci_low,
        d50_ci_high, mean, std, geo_mean, geo_sd, mean_aspect_ratio,
        mean_aspect_ratio_ci_low/high``, suffixed with the unit.
    """
    n_all = int(len(table))
    t = table
    if exclude_border and len(t):
        t = t[~t["touches_border"].astype(bool)]
    if len(t) and "certain" in t:
        t = t[t["certain"].astype(bool)]
    calibrated = len(table) > 0 and table["ecd_nm"].notna().any()
    unit = "nm" if calibrated else "px"
    d = _clean(t[f"ecd_{unit}"]) if len(t) else np.zeros(0)
    ar = np.asarray(t["aspect_ratio"], float) if len(t) else np.zeros(0)
    ar = ar[np.isfinite(ar)]
    d10, d50, d90 = weighted_percentiles(d, [10, 50, 90], weighting=weighting)
    lo, hi = bootstrap_ci(
        d, lambda x: float(weighted_percentiles(x, [50], weighting=weighting)[0]),
        n_boot=n_boot, seed=seed)
    gm, gsd = lognormal_fit(d)
    ar_lo, ar_hi = bootstrap_ci(ar, np.mean, n_boot=n_boot, seed=seed)
    u = unit
    return {
        "n_particles": n_all,
        "n_measured": int(d.size),
        "size_unit": unit,
        "weighting": weighting,
        f"d10_{u}": float(d10), f"d50_{u}": float(d50), f"d90_{u}": float(d90),
        f"d50_ci_low_{u}": lo, f"d50_ci_high_{u}": hi,
        f"mean_ecd_{u}": float(d.mean()) if d.size else math.nan,
        f"std_ecd_{u}": float(d.std(ddof=1)) if d.size > 1 else math.nan,
        f"lognormal_gm_{u}": gm, "lognormal_gsd": gsd,
        "mean_aspect_ratio": float(ar.mean()) if ar.size else math.nan,
        "aspect_ratio_ci_low": ar_lo, "aspect_ratio_ci_high": ar_hi,
    }
