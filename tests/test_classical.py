import numpy as np
import pytest

from imageextract.analysis.sizes import measure
from imageextract.data import hexagonal_micrograph, synthetic_micrograph
from imageextract.segment import segment
from imageextract.segment.classical import ClassicalSegmenter


@pytest.mark.parametrize("dark", [False, True])
def test_recovers_known_diameters(dark):
    """Discs of radius 12 px at 2.5 nm/px → ECD 60 nm, within 5 %."""
    img, truth = synthetic_micrograph((320, 320), n_particles=15, radius_px=12.0,
                                      dark_particles=dark, seed=4)
    seg = segment(img, backend="classical")
    assert seg.labels.shape == img.shape and seg.labels.dtype == np.int32
    assert seg.n_instances == int(truth.max())
    t = measure(seg.labels, nm_per_px=2.5, scores=seg.scores)
    t = t[~t.touches_border]
    true_ecd = measure(truth, nm_per_px=2.5).ecd_nm.median()
    assert abs(true_ecd - 60.0) / 60.0 < 0.03  # the rasterised truth itself
    assert np.all(np.abs(t.ecd_nm - 60.0) / 60.0 < 0.05)


def test_splits_touching_particles():
    from imageextract.data import disc_labels

    truth = disc_labels((120, 160), [(60, 55), (60, 100)], [22, 22])  # overlapping discs
    img = np.where(truth > 0, 200, 40).astype(np.uint8)
    seg = ClassicalSegmenter().predict(img)
    assert seg.n_instances == 2


def test_uneven_background():
    img, truth = synthetic_micrograph((300, 300), n_particles=12, gradient=0.5, seed=8)
    seg = segment(img)
    assert abs(seg.n_instances - int(truth.max())) <= 1


def test_rgb_and_uint16_inputs_agree():
    img, _ = synthetic_micrograph(seed=5)
    a = segment(img).labels
    b = segment(np.stack([img] * 3, -1)).labels
    c = segment(img.astype(np.uint16) * 257).labels
    assert a.max() == b.max() == c.max()


def test_empty_uniform_and_nan_images():
    assert segment(np.zeros((64, 64), np.uint8)).n_instances == 0
    nan = np.full((64, 64), np.nan, np.float32)
    seg = segment(nan)
    assert seg.n_instances == 0 and seg.scores.shape == (0,)
    t = measure(seg.labels)
    assert len(t) == 0 and "ecd_nm" in t.columns


def test_single_particle():
    from imageextract.data import disc_labels

    truth = disc_labels((100, 100), [(50, 50)], [15])
    img = np.where(truth > 0, 30, 220).astype(np.uint8)
    seg = segment(img)
    assert seg.n_instances == 1
    assert 0 < seg.scores[0] <= 1


def test_hexagonal_lattice_count():
    img, truth = hexagonal_micrograph((300, 300), spacing_px=30, radius_px=9)
    seg = segment(img)
    assert abs(seg.n_instances - int(truth.max())) <= 2


def test_bad_options():
    img, _ = synthetic_micrograph(seed=0)
    with pytest.raises(ValueError, match="method"):
        ClassicalSegmenter(method="magic").predict(img)
    with pytest.raises(ValueError, match="2-D or 3-D"):
        ClassicalSegmenter().predict(np.zeros(5))


def test_a_drawn_scale_bar_is_not_a_particle():
    """A black bar drawn on a light micrograph is a dark object to a
    threshold; the backend drops it (and only it) unless told not to."""
    img, truth = synthetic_micrograph((320, 320), n_particles=12, radius_px=12.0,
                                      dark_particles=True, seed=4)
    assert not truth[268:285, 170:310].any()  # the bar's place is free
    img[272:279, 180:300] = 0
    kept = ClassicalSegmenter(drop_scale_bars=False).predict(img)
    assert kept.n_instances == int(truth.max()) + 1
    assert kept.labels[275, 240] > 0
    seg = ClassicalSegmenter().predict(img)
    assert seg.n_instances == int(truth.max()) and seg.labels[275, 240] == 0
    assert seg.scores.size == seg.n_instances
