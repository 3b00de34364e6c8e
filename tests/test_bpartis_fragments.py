"""Joining the pieces of a long rod cut across (``bpartis.fragments``):
hand-drawn label images whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse, polygon

from imageextract.segment.bpartis.fragments import (
    DEFAULTS,
    contacts,
    join_fragments,
    label_moments,
    shape_of,
    shapes,
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
