"""Joining the pieces of a long rod cut across (``bpartis.fragments``):
hand-drawn label images whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse, polygon

from imageextract.segment.bpartis.fragments import (
    DEFAULTS,
    ROD_DEFAULTS,
    contacts,
    grown_map,
    join_fragments,
    label_moments,
    shape_of,
    shapes,
    whole_rods,
    width_profile,
)


def bar(shape, centre, length, width, angle_deg):
    """Pixels of a ``length`` x ``width`` bar centred at ``centre`` (y, x),
    its long axis ``angle_deg`` from the x axis."""
    t = np.radians(angle_deg)
    d = np.array([-np.sin(t), np.cos(t)])  # along the bar, (dy, dx)
    n = np.array([np.cos(t), np.sin(t)])
    c = np.asarray(centre, float)
    corners = [c + sa * length / 2 * d + sb * width / 2 * n
               for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    ys, xs = zip(*corners)
    return polygon(ys, xs, shape)


def cut_rod(shape=(200, 260), centre=(100, 130), length=220, width=10, angle=25, pieces=4):
    """A rod cut across into ``pieces`` labels of equal length, plus its
    direction; label k+1 is the k-th piece from one end."""
    lab = np.zeros(shape, np.int32)
    rr, cc = bar(shape, centre, length, width, angle)
    t = np.radians(angle)
    along = (rr - centre[0]) * -np.sin(t) + (cc - centre[1]) * np.cos(t)
    piece = np.clip(((along + length / 2) / (length / pieces)).astype(int), 0, pieces - 1)
    lab[rr, cc] = piece + 1
    return lab


def result(lab, scores=None):
    k = int(lab.max())
    sc = np.linspace(0.6, 0.9, k) if scores is None else np.asarray(scores, float)
    return {"labels": lab, "scores": sc, "uncertainty": np.full(k, 0.1),
            "seed_scores": sc + 0.05}


@pytest.mark.parametrize("angle", [0, 25, 90, 137])
def test_a_rod_cut_into_four_comes_out_whole(angle):
    lab = cut_rod(angle=angle)
    area = np.bincount(lab.ravel())[1:].astype(float)
    res = join_fragments(result(lab))
    assert res["joined"] == 3
    assert int(res["labels"].max()) == 1
    assert np.array_equal(res["labels"] > 0, lab > 0)  # no pixel gained or lost
    expect = (area * np.linspace(0.6, 0.9, 4)).sum() / area.sum()
    assert res["scores"] == pytest.approx([expect])
    assert res["seed_scores"] == pytest.approx([expect + 0.05])
    assert res["uncertainty"] == pytest.approx([0.1])


def test_a_small_gap_between_the_pieces_is_bridged_but_not_a_wide_one():
    lab = cut_rod(pieces=2, angle=0)
    cols = np.flatnonzero((lab == 2).any(0))
    gapped = lab.copy()
    gapped[:, cols[0]] = 0  # 1 px of background between the halves: 2 px apart
    assert join_fragments(result(gapped))["joined"] == 1
    assert join_fragments(result(gapped), gap=1)["joined"] == 0
    wide = lab.copy()
    wide[:, cols[0]:cols[0] + 2] = 0  # 3 px apart
    assert join_fragments(result(wide))["joined"] == 0
    assert join_fragments(result(wide), gap=3)["joined"] == 1


def test_distinct_particles_stay_apart():
    shape = (160, 240)
    # two short ellipsoids touching end to end: each elongation 2, together about 4
    chain = np.zeros(shape, np.int32)
    chain[ellipse(80, 60, 12, 24, shape)] = 1
    chain[ellipse(80, 107, 12, 24, shape)] = 2
    assert list(contacts(chain)) == [(1, 2)]
    assert join_fragments(result(chain))["joined"] == 0
    # ... which the elongation floor and the contact (two rounded ends touch
    # at a few pixels, a rod cut across along its width) each keep apart
    assert join_fragments(result(chain), min_union_elongation=1.0)["joined"] == 0
    assert join_fragments(result(chain), min_contact=0.0)["joined"] == 0
    assert join_fragments(result(chain), min_union_elongation=1.0,
                          min_contact=0.0)["joined"] == 1
    # a row of five ellipsoids of elongation 3, each touching the next end to end
    row = np.zeros((40, 300), np.int32)
    for i in range(5):
        row[ellipse(20, 30 + 59 * i, 10, 30, row.shape)] = i + 1
    assert len(contacts(row)) == 4
    assert join_fragments(result(row))["joined"] == 0
    assert join_fragments(result(row), min_contact=0.0)["joined"] > 0
    # two rods side by side, touching along their length
    side = np.zeros(shape, np.int32)
    side[70:80, 20:220], side[80:90, 20:220] = 1, 2
    assert list(contacts(side)) == [(1, 2)]
    assert join_fragments(result(side))["joined"] == 0
    # two rods crossing
    cross = np.zeros(shape, np.int32)
    cross[bar(shape, (80, 120), 150, 8, 20)] = 1
    cross[bar(shape, (80, 120), 150, 8, 110)] = 2
    assert list(contacts(cross)) == [(1, 2)]
    assert join_fragments(result(cross))["joined"] == 0
    # a thin rod ending on a particle much wider than it
    blob = np.zeros(shape, np.int32)
    blob[76:84, 20:140] = 1
    blob[50:110, 140:200] = 2
    assert list(contacts(blob)) == [(1, 2)]
    assert join_fragments(result(blob))["joined"] == 0
    # two rods in line but at 30 degrees to each other
    bent = np.zeros(shape, np.int32)
    bent[bar(shape, (80, 70), 100, 8, 0)] = 1
    t = np.radians(30)  # the second starts where the first ends, at (80, 120)
    bent[bar(shape, (80 - 50 * np.sin(t), 120 + 50 * np.cos(t)), 100, 8, 30)] = 2
    assert list(contacts(bent)) == [(1, 2)]
    assert join_fragments(result(bent))["joined"] == 0


def test_only_the_pieces_join_and_the_labels_stay_consecutive():
    lab = cut_rod(pieces=3, angle=0)
    lab[lab > 0] += 1  # the rod is 2, 3, 4
    lab[5:20, 5:20] = 1  # a square away from it
    lab[185:195, 5:15] = 5
    res = join_fragments(result(lab, [0.5, 0.8, 0.8, 0.8, 0.7]))
    assert res["joined"] == 2
    out = res["labels"]
    assert sorted(np.unique(out).tolist()) == [0, 1, 2, 3]
    assert (out[lab == 1] == 1).all() and (out[lab == 5] == 3).all()
    assert (out[np.isin(lab, [2, 3, 4])] == 2).all()
    assert res["scores"] == pytest.approx([0.5, 0.8, 0.7])


def test_nothing_to_join_leaves_the_result_as_it_was():
    lab = np.zeros((30, 30), np.int32)
    res = join_fragments(result(lab))
    assert res["joined"] == 0 and res["labels"] is lab
    one = cut_rod(pieces=1)
    r = result(one)
    res = join_fragments(r)
    assert res["joined"] == 0 and res["labels"] is one and res["scores"] is r["scores"]
    assert "joined" not in r  # the input is not modified


def test_bad_options_are_refused():
    lab = cut_rod()
    with pytest.raises(ValueError, match="max_angle"):
        join_fragments(result(lab), max_angle=90)
    with pytest.raises(ValueError, match="gap"):
        join_fragments(result(lab), gap=1.5)


def test_moments_and_shape():
    lab = np.zeros((50, 50), np.int32)
    lab[bar(lab.shape, (25, 25), 40, 4, 45)] = 1
    m = label_moments(lab)
    assert m.shape == (2, 6) and m[1, 0] == (lab == 1).sum()
    c, e, w, d = shape_of(m[1])
    assert c == pytest.approx([25, 25], abs=0.6)
    assert e > 6 and 3.5 < w < 6
    assert abs(d[0]) == pytest.approx(abs(d[1]), abs=0.05)  # the diagonal
    # the vectorised elongation agrees with shape_of's, label by label
    lab = cut_rod(pieces=5, angle=33)
    lab[ellipse(20, 20, 8, 14, lab.shape)] = 6
    m = label_moments(lab)
    assert shapes(m)[1][1:] == pytest.approx([shape_of(r)[1] for r in m[1:]])
    assert set(DEFAULTS) == {"min_elongation", "max_angle", "max_width_ratio", "min_gain",
                             "min_union_elongation", "gap", "min_contact"}


def test_the_backend_joins_when_its_config_says_so(monkeypatch):
    pytest.importorskip("torch")
    from imageextract.segment.bpartis import BPartIS, inference

    tiny = {"width": 0.25, "depth": 0.34, "dec_channels": [16, 16, 8, 8, 8], "freeze": 0}
    lab = cut_rod(shape=(120, 200), centre=(60, 100), length=180, width=8, angle=10)

    def fragmented(net, rgb, **kw):
        return dict(result(lab), scale=1.0, passes=1, mi=np.zeros(lab.shape, np.float32),
                    seed=(lab > 0).astype(np.float32))

    monkeypatch.setattr(inference, "segment_image", fragmented)
    rgb = np.zeros(lab.shape + (3,), np.uint8)
    off = BPartIS.from_config({"model": tiny})
    assert off.join_fragments is None
    assert off.segment_rgb(rgb)["scores"].size == 4
    on = BPartIS.from_config({"model": tiny, "inference": {"join_fragments": {"max_angle": 10}}})
    assert on.join_fragments == {**DEFAULTS, "max_angle": 10}
    res = on.segment_rgb(rgb)
    assert res["joined"] == 3 and res["scores"].size == 1 and int(res["labels"].max()) == 1
    assert on.segment_rgb(rgb, join_fragments=None)["scores"].size == 4
    seg = on.predict(rgb)
    assert seg.scores.shape == (1,) and seg.uncertainty.shape == (1,)
    for bad in ({"max_angle": 95}, {"gap": 1.5}, {"min_gain": "2"}, {"width": 3}, [1],
                {"min_union_elongation": 0.5}, {"gap": True}, {"min_contact": -1}):
        with pytest.raises(ValueError, match="join_fragments"):
            BPartIS.from_config({"model": tiny, "inference": {"join_fragments": bad}})


def gapped_rod(keep=(1, 3), **kw):
    """A rod cut into five pieces of which only ``keep`` were found (the
    others and its ends dropped), and the foreground of the whole rod, as
    the network's seed map would light it, at half the labels' resolution."""
    lab = cut_rod(pieces=5, **kw)
    whole = lab > 0
    found = np.where(np.isin(lab, keep), lab, 0)
    _, found = np.unique(found, return_inverse=True)
    seed = np.where(whole, 0.9, 0.05)[::2, ::2]
    return found.reshape(lab.shape).astype(np.int32), whole, seed


@pytest.mark.parametrize("angle", [0, 25, 90, 137])
def test_a_rod_found_in_pieces_apart_is_made_whole_from_the_foreground(angle):
    lab, whole, seed = gapped_rod(angle=angle)
    area = np.bincount(lab.ravel())[1:].astype(float)
    assert join_fragments(result(lab))["joined"] == 0  # the pieces do not touch
    res = whole_rods(dict(result(lab, [0.6, 0.9]), seed=seed))
    assert res["whole_rods"] == 1 and int(res["labels"].max()) == 1
    iou = ((res["labels"] > 0) & whole).sum() / ((res["labels"] > 0) | whole).sum()
    assert iou > 0.85  # the rod as a whole, ends included (the seed at half resolution)
    assert (res["labels"][lab > 0] == 1).all()  # no pixel of a piece lost
    assert res["scores"] == pytest.approx([(area * [0.6, 0.9]).sum() / area.sum()])
    assert res["uncertainty"] == pytest.approx([0.1])
    # one piece of the five, covering a fifth of the band, is made whole too
    one, _, _ = gapped_rod(keep=(3,), angle=angle)
    assert whole_rods(dict(result(one), seed=seed))["whole_rods"] == 1


def test_bands_that_are_not_one_rod_are_left_alone():
    shape = (160, 260)

    def seeded(lab, fg):
        return dict(result(lab), seed=np.where(fg, 0.9, 0.0))

    # a chain of touching disks along a line: a long band with waists
    chain = np.zeros(shape, np.int32)
    for i, x in enumerate(range(30, 231, 40)):
        chain[ellipse(80, x, 20, 20, shape)] = i + 1
    fg = chain > 0
    assert shapes(label_moments(fg.astype(np.int32)))[1][1] > 6
    kept = np.where(chain % 2 == 1, chain, 0)  # every other disk found
    kept = np.unique(kept, return_inverse=True)[1].reshape(shape).astype(np.int32)
    assert whole_rods(seeded(kept, fg))["whole_rods"] == 0
    # two rods side by side: the band is twice as wide as either
    side = np.zeros(shape, np.int32)
    side[70:80, 20:110], side[80:90, 150:240] = 1, 2
    fg = np.zeros(shape, bool)
    fg[70:90, 20:240] = True
    assert whole_rods(seeded(side, fg))["whole_rods"] == 0
    # a compact particle on the band's axis is not a piece of a rod
    rod = np.zeros(shape, np.int32)
    rod[76:84, 20:100] = 1
    rod[ellipse(80, 200, 3, 3, shape)] = 2
    fg = np.zeros(shape, bool)
    fg[76:84, 20:240] = True
    assert whole_rods(seeded(rod, fg))["whole_rods"] == 0
    # a piece at 45 degrees to the band
    tilted = np.zeros(shape, np.int32)
    tilted[bar(shape, (80, 60), 14, 7, 45)] = 1
    assert whole_rods(seeded(tilted, fg | (tilted > 0)))["whole_rods"] == 0
    # a band whose one particle already covers nearly all of it
    nearly = np.zeros(shape, np.int32)
    nearly[76:84, 30:240] = 1
    assert whole_rods(seeded(nearly, fg))["whole_rods"] == 0
    # a band that holds no particle is not made one (it may be a scale bar)
    none = np.zeros(shape, np.int32)
    none[5:15, 5:15] = 1
    assert whole_rods(seeded(none, fg | (none > 0)))["whole_rods"] == 0
    # two rods crossing: not elongated as one band
    cross = np.zeros(shape, np.int32)
    cross[bar(shape, (80, 130), 120, 8, 20)] = 1
    cross[bar(shape, (80, 130), 40, 8, 110)] = 2
    fg = cross > 0
    fg[bar(shape, (80, 130), 120, 8, 110)] = True
    assert whole_rods(seeded(cross, fg))["whole_rods"] == 0


def test_only_the_rod_changes_and_the_labels_stay_consecutive():
    lab, whole, seed = gapped_rod(keep=(2, 4), angle=0)
    lab[lab > 0] += 1  # the pieces are 2 and 3
    lab[5:20, 5:20] = 1  # a square away from the rod
    lab[185:195, 5:15] = 4
    res = whole_rods(dict(result(lab, [0.5, 0.8, 0.8, 0.7]), seed=seed))
    out = res["labels"]
    assert res["whole_rods"] == 1 and sorted(np.unique(out).tolist()) == [0, 1, 2, 3]
    assert (out[lab == 1] == 1).all() and (out[lab == 4] == 3).all()
    assert ((out == 2) == (whole & ~(lab == 1) & ~(lab == 4))).mean() > 0.995
    assert res["scores"] == pytest.approx([0.5, 0.8, 0.7])


def test_whole_rods_without_a_seed_map_or_particles_changes_nothing():
    lab, _, seed = gapped_rod()
    r = result(lab)
    res = whole_rods(r)
    assert res["whole_rods"] == 0 and res["labels"] is lab and "whole_rods" not in r
    empty = np.zeros_like(lab)
    assert whole_rods(dict(result(empty), seed=seed))["labels"] is empty
    assert set(ROD_DEFAULTS) == {"fg_threshold", "min_elongation", "max_angle",
                                 "max_width_ratio", "max_offset", "min_inside", "max_stray",
                                 "max_cover", "min_waist"}


def test_grown_map_is_the_backends_bilinear_resize_and_profiles_measure_width():
    pytest.importorskip("torch")
    from imageextract.segment.bpartis.inference import resize_map

    m = np.random.default_rng(0).random((23, 31)).astype(np.float32)
    for shape in ((23, 31), (50, 70), (69, 93), (11, 15)):
        assert grown_map(m, shape) == pytest.approx(resize_map(m, shape), abs=1e-5)
    lab = np.zeros((60, 200), np.int32)
    lab[25:35, 20:180] = 1  # 160 x 10 along x, centred at (29.5, 99.5)
    lab[:, 100:110] = 0  # cut: one slice of it empty
    ys, xs = np.nonzero(lab)
    prof = width_profile(ys, xs, np.array([29.5, 99.5]), np.array([0.0, 1.0]), 10.0)
    assert prof.tolist() == [10.0] * 8 + [0.0] + [10.0] * 7


def test_the_backend_makes_rods_whole_when_its_config_says_so(monkeypatch):
    pytest.importorskip("torch")
    from imageextract.segment.bpartis import BPartIS, inference

    tiny = {"width": 0.25, "depth": 0.34, "dec_channels": [16, 16, 8, 8, 8], "freeze": 0}
    lab, _, seed = gapped_rod(angle=10)

    def apart(net, rgb, **kw):
        return dict(result(lab), scale=1.0, passes=1, mi=np.zeros(lab.shape, np.float32),
                    seed=seed.astype(np.float32))

    monkeypatch.setattr(inference, "segment_image", apart)
    rgb = np.zeros(lab.shape + (3,), np.uint8)
    off = BPartIS.from_config({"model": tiny})
    assert off.whole_rods is None and off.segment_rgb(rgb)["scores"].size == 2
    on = BPartIS.from_config({"model": tiny, "inference": {"whole_rods": {"max_angle": 10}}})
    assert on.whole_rods == {**ROD_DEFAULTS, "max_angle": 10.0}
    res = on.segment_rgb(rgb)
    assert res["whole_rods"] == 1 and res["scores"].size == 1
    assert on.segment_rgb(rgb, whole_rods=None)["scores"].size == 2
    for bad in ({"max_angle": 95}, {"fg_threshold": 1}, {"min_waist": "0.5"}, {"width": 3}, [1],
                {"min_elongation": 0.5}, {"max_cover": True}, {"max_stray": 0.6},
                {"max_offset": float("nan")}):
        with pytest.raises(ValueError, match="whole_rods"):
            BPartIS.from_config({"model": tiny, "inference": {"whole_rods": bad}})


def test_a_short_rod_with_round_ends_is_made_whole():
    """The end slices of a band are partial (a rod has round ends): they are
    not taken for a waist, even where the band is only a few slices long."""
    shape = (60, 140)
    rod = np.zeros(shape, bool)
    rod[23:37, 27:113] = True  # 86 x 14 with round caps: about 100 x 14 in all
    rod[ellipse(30, 27, 7, 7, shape)] = True
    rod[ellipse(30, 112, 7, 7, shape)] = True
    c, e, w, d = shapes(label_moments(rod.astype(np.int32)))
    assert 6 < e[1] < 8
    lab = np.zeros(shape, np.int32)
    lab[24:36, 35:60], lab[24:36, 75:100] = 1, 2  # two pieces, the middle and ends dropped
    res = whole_rods(dict(result(lab), seed=np.where(rod, 0.9, 0.0)))
    assert res["whole_rods"] == 1
    assert np.array_equal(res["labels"] > 0, rod)


def test_step_options_checks_a_final_step_as_the_config_would():
    from imageextract.segment.bpartis import FINAL_STEPS, step_options
    from imageextract.segment.bpartis.fragments import DEFAULTS, ROD_DEFAULTS

    assert set(FINAL_STEPS) == {"join_fragments", "whole_rods", "drop_scale_bars", "coarse_pass"}
    assert step_options("join_fragments", {}) == {**DEFAULTS, "gap": int(DEFAULTS["gap"])}
    assert step_options("whole_rods", {"max_angle": 10}) == {
        k: float(v) for k, v in {**ROD_DEFAULTS, "max_angle": 10}.items()}
    assert step_options("drop_scale_bars", None) is None
    assert step_options("coarse_pass", {"factor": 0.5})["factor"] == 0.5
    with pytest.raises(ValueError, match="inference.join_fragments"):
        step_options("join_fragments", {"max_angle": 95})
    with pytest.raises(ValueError, match="no final step 'scale_bars'"):
        step_options("scale_bars", {})
