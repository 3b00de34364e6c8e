"""Two-dimensional radial distribution function of particle centroids.

Computed with ``rdfpy``.  Edge handling (rdfpy's own): no periodic boundary;
at radius r only particles whose whole shell of radius r + dr lies inside the
bounding box of the centroids are used as origins, while every particle is a
neighbour.  The number density is passed explicitly as N / image area (not
inferred from the centroids' bounding box, which overestimates it), and g(r)
is computed out to ``rcutoff`` × half the shorter side of that box.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def radial_distribution(
    centroids: np.ndarray,
    *,
    area: float,
    dr: float | None = None,
    rcutoff: float = 0.9,
) -> pd.DataFrame:
    """g(r) of 2-D centroids.

    Parameters
    ----------
    centroids : (N, 2) ndarray
        Particle centres (x, y) in nm (or px when uncalibrated).
    area : float
        Area of the field of view in the same units squared; sets the number
        density N / area.
    dr : float, optional
        Shell width; default a quarter of the mean nearest-neighbour distance.
    rcutoff : float
        Fraction of half the shorter box side out to which g(r) is computed.

    Returns
    -------
    rdf : pandas.DataFrame
        Columns ``r`` (shell centres) and ``g``; empty when fewer than 3
        particles (NaN g where no origin fits).

    Examples
    --------
    >>> xy = np.stack(np.meshgrid(np.arange(0, 200, 10.0), np.arange(0, 200, 10.0)), -1).reshape(-1, 2)
    >>> t = radial_distribution(xy + 5, area=200 * 200, dr=1.0)
    >>> float(t.r[t.g.idxmax()])
    9.5
    """
    from rdfpy import rdf
    from scipy.spatial import cKDTree

    xy = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    xy = xy[np.all(np.isfinite(xy), axis=1)]
    empty = pd.DataFrame({"r": pd.Series(dtype=float), "g": pd.Series(dtype=float)})
    if len(xy) < 3 or not area > 0:
        return empty
    span = xy.max(axis=0) - xy.min(axis=0)
    if np.any(span <= 0):
        return empty
    if dr is None:
        nn = cKDTree(xy).query(xy, k=2)[0][:, 1]
        dr = float(np.mean(nn)) / 4.0
    if not dr > 0:
        return empty
    rho = len(xy) / float(area)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            g, r = rdf(xy, dr=dr, rho=rho, rcutoff=rcutoff)
        except ValueError as err:
            logger.info("RDF not computed: %s", err)
            return empty
    for w in caught:
        logger.debug("rdfpy: %s", w.message)
    return pd.DataFrame({"r": r, "g": g})
