import math

import numpy as np
import pandas as pd
import pytest

from imageextract.analysis.distributions import (
    bootstrap_ci, histogram, lognormal_fit, summarize, weighted_percentiles)
from imageextract.analysis.rdf import radial_distribution
from imageextract.analysis.sizes import COLUMNS, feret_diameters, measure
from imageextract.data import disc_labels, hexagonal_micrograph


def ellipse_labels(shape, centre, a, b, angle_deg):
    """Filled ellipse with semi-axes a (major) and b, major axis at angle_deg
    from +x, counter-clockwise as displayed (image y points down)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    x = xx - centre[1]
    y = -(yy - centre[0])  # y up
    t = math.radians(angle_deg)
    u = x * math.cos(t) + y * math.sin(t)
    v = -x * math.sin(t) + y * math.cos(t)
    return ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.int32)


@pytest.mark.parametrize("angle", [0, 30, 45, 90, -60])
def test_ellipse_axes_and_orientation(angle):
    lab = ellipse_labels((200, 200), (100, 100), 40, 20, angle)
    t = measure(lab, nm_per_px=0.5)
    row = t.iloc[0]
    assert row.major_axis_px == pytest.approx(80, rel=0.02)
    assert row.minor_axis_px == pytest.approx(40, rel=0.03)
    assert row.aspect_ratio == pytest.approx(2.0, rel=0.04)
    expected = angle if angle > -90 else angle + 180
    d = (row.orientation_deg - expected + 90) % 180 - 90
    assert abs(d) < 1.0
    assert row.major_axis_nm == pytest.approx(row.major_axis_px * 0.5)
    assert row.feret_max_px == pytest.approx(81, abs=2.0)
    assert row.feret_min_px == pytest.approx(41, abs=2.0)
    assert row.ecd_px == pytest.approx(2 * math.sqrt(40 * 20), rel=0.02)
    assert 0.7 < row.circularity < 0.9  # exact ellipse: 0.84; pixelated outlines read a bit lower
    assert row.solidity > 0.97


def test_disc_ecd_area_nm_and_border():
    lab = disc_labels((100, 100), [(50, 50), (5, 50)], [20, 10])
    t = measure(lab, nm_per_px=2.0)
    assert list(t.columns) == COLUMNS
    assert t.touches_border.tolist() == [False, True]
    assert t.ecd_nm[0] == pytest.approx(80, rel=0.02)
    assert t.area_nm2[0] == pytest.approx(t.area_px[0] * 4)
    assert t.aspect_ratio[0] == pytest.approx(1.0, abs=0.02)
    assert t.circularity[0] > 0.85


def test_uncalibrated_gives_null_nm_columns():
    t = measure(disc_labels((60, 60), [(30, 30)], [10]))
    assert t.ecd_px.notna().all() and t.ecd_nm.isna().all() and t.area_nm2.isna().all()


def test_scores_uncertainty_certain():
    lab = disc_labels((100, 100), [(30, 30), (70, 70)], [10, 10])
    t = measure(lab, scores=np.array([0.9, 0.4]), uncertainty=np.array([0.01, 0.5]),
                uncertainty_threshold=0.1)
    assert t.score.tolist() == [0.9, 0.4]
    assert t.certain.tolist() == [True, False]


def test_empty_labels_typed_table():
    t = measure(np.zeros((10, 10), np.int32))
    assert len(t) == 0 and list(t.columns) == COLUMNS
    assert t.touches_border.dtype == bool
    s = summarize(t)
    assert s["n_particles"] == 0 and math.isnan(s["d50_px"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        measure(np.zeros(5))
    with pytest.raises(ValueError, match="nm_per_px"):
        measure(np.zeros((5, 5), int), nm_per_px=-1)


def test_feret_of_rectangle_and_line():
    pts = np.array([[0, 0], [10, 0], [10, 4], [0, 4]], float)
    fmax, fmin = feret_diameters(pts)
    assert fmax == pytest.approx(math.hypot(10, 4)) and fmin == pytest.approx(4)
    fmax, fmin = feret_diameters(np.array([[0, 0], [5, 0], [10, 0]], float))
    assert fmax == pytest.approx(10) and fmin == 0


def test_percentiles_and_volume_weighting():
    d = np.array([10.0] * 9 + [100.0])
    n10, n50, n90 = weighted_percentiles(d, [10, 50, 90])
    assert n50 == 10.0
    v50 = weighted_percentiles(d, [50], weighting="volume")[0]
    assert v50 > 90  # one 100 nm particle holds 99 % of the volume


def test_lognormal_fit_recovers_parameters():
    rng = np.random.default_rng(0)
    d = rng.lognormal(math.log(25.0), math.log(1.3), 20000)
    gm, gsd = lognormal_fit(d)
    assert gm == pytest.approx(25.0, rel=0.01) and gsd == pytest.approx(1.3, rel=0.01)


def test_bootstrap_ci_covers_median():
    rng = np.random.default_rng(1)
    d = rng.normal(50, 5, 400)
    lo, hi = bootstrap_ci(d, np.median, n_boot=300)
    assert lo < 50 < hi and hi - lo < 3


def test_histogram_fractions():
    h = histogram([1, 2, 2, 3, 3, 3], bins=3)
    assert h["count"].tolist() == [1, 2, 3]
    assert h.fraction.sum() == pytest.approx(1.0)
    hv = histogram([1, 2, 2, 3, 3, 3], bins=3, weighting="volume")
    assert hv.fraction.iloc[-1] > h.fraction.iloc[-1]


def test_summarize_excludes_border_and_uncertain():
    lab = disc_labels((200, 200), [(50, 50), (150, 150), (5, 100)], [10, 20, 8])
    t = measure(lab, nm_per_px=1.0, uncertainty=np.array([0.0, 0.9, 0.0]), uncertainty_threshold=0.5)
    s = summarize(t)
    assert s["n_particles"] == 3 and s["n_measured"] == 1
    assert s["d50_nm"] == pytest.approx(20, rel=0.03)
    assert s["size_unit"] == "nm"


def test_rdf_peak_at_hexagonal_spacing():
    """Centroids measured from a synthetic hexagonal micrograph: g(r) peaks at
    the lattice spacing (in nm after calibration)."""
    spacing_px, nm_per_px = 30.0, 1.5
    img, truth = hexagonal_micrograph((450, 450), spacing_px=spacing_px, radius_px=9)
    t = measure(truth, nm_per_px=nm_per_px)
    t = t[~t.touches_border]
    xy = t[["centroid_x_px", "centroid_y_px"]].to_numpy() * nm_per_px
    g = radial_distribution(xy, area=(450 * nm_per_px) ** 2, dr=2.0)
    r_peak = float(g.r[g.g.idxmax()])
    assert abs(r_peak - spacing_px * nm_per_px) <= 2.0
    # long-range average tends to 1 for a uniform density estimate
    assert g.g.iloc[:5].fillna(0).max() == 0  # no pairs closer than a diameter


def test_rdf_too_few_points():
    assert radial_distribution(np.array([[0.0, 0.0], [1.0, 1.0]]), area=10.0).empty
    assert isinstance(radial_distribution(np.zeros((0, 2)), area=1.0), pd.DataFrame)
