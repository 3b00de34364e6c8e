"""The bpartis outline refiner: band features, training labels, the band
relabelling and its gate, the fit, the config round trip, the backend using
it and the installation by ``outline_fit``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imageextract.segment.bpartis.outline import (
    FEATURES,
    OutlineRefiner,
    band_targets,
    outline_features,
    relabel_band,
    smooth_band,
    tidy_particles,
)

COL = {name: i for i, name in enumerate(FEATURES)}


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def scene(rng, *, grow=0, shape=(96, 128)):
    """Dark discs on a noisy bright background (rgb), their true labels, and
    labels whose outlines are off by ``grow`` px (a too-small or too-large
    segmentation), with a seed map that follows the off labels."""
    img = 200 + rng.normal(0, 4, shape)
    truth = np.zeros(shape, np.int32)
    off = np.zeros(shape, np.int32)
    centres = [(30, 32), (64, 90), (28, 96)]
    for i, (cy, cx) in enumerate(centres, 1):
        r = rng.uniform(10, 14)
        img[disc(shape, cy, cx, r)] = 60 + rng.normal(0, 4)
        truth[disc(shape, cy, cx, r)] = i
        off[disc(shape, cy, cx, r + grow)] = i
    rgb = np.dstack([np.clip(img, 0, 255).astype(np.uint8)] * 3)
    return rgb, truth, off, (off > 0).astype(np.float32)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_outline_features_describe_the_band():
    rgb, truth, off, seed = scene(np.random.default_rng(0), grow=-2)
    flat, owner, X = outline_features(rgb, off, seed, scale=1.0, band=3.0)
    assert X.shape == (flat.size, len(FEATURES)) and X.dtype == np.float32
    assert np.all(np.abs(X[:, COL["distance"]]) <= 3.0)
    ys, xs = np.unravel_index(flat, off.shape)
    # every band pixel belongs to, or lies next to, the particle it is given to
    inside = off[ys, xs] > 0
    assert np.all(off[ys, xs][inside] == owner[inside])
    assert np.all(X[inside, COL["distance"]] <= 0) and np.all(X[~inside, COL["distance"]] > 0)
    # the outline is 2 px inside the true edge: the band pixels just outside it
    # are particle-grey (about 1 on the particle's scale), those past the true edge are not
    true_in = truth[ys, xs] > 0
    g = X[:, COL["grey"]]
    assert np.median(g[~inside & true_in]) > 0.6
    assert np.median(g[~true_in]) < 0.4
    # at half scale the band is twice as wide in native px
    flat2, _, X2 = outline_features(rgb, off, seed[::2, ::2], scale=0.5, band=3.0)
    assert flat2.size > 1.5 * flat.size
    assert np.abs(X2[:, COL["distance_px"]]).max() > 4
    assert outline_features(rgb, np.zeros_like(off), seed, scale=1.0) == (None, None, None)
    with pytest.raises(ValueError, match="does not match"):
        outline_features(rgb[:50], off, seed, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        outline_features(rgb, off, seed, scale=0.0)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_outline_features_in_pieces_equal_the_whole(scale):
    """Large images are processed in tiles with margins: the band pixels,
    their owners and every feature are those of the whole image, also for
    particles cut by the tile borders and for a particle larger than a tile
    (its core medians gathered from several pieces)."""
    from imageextract.data import synthetic_micrograph

    img, lab = synthetic_micrograph((300, 260), n_particles=40, radius_px=(6, 16), seed=3)
    lab = lab.copy()
    lab[disc(lab.shape, 150, 130, 90) & (lab == 0)] = lab.max() + 1  # a big one
    seed = np.random.default_rng(0).random(
        (int(300 * scale), int(260 * scale))).astype(np.float32)
    whole = outline_features(img, lab, seed, scale=scale, band=3.0)
    pieces = outline_features(img, lab, seed, scale=scale, band=3.0, tile=64)
    np.testing.assert_array_equal(whole[0], pieces[0])
    assert np.all(np.diff(pieces[0]) > 0)
    np.testing.assert_array_equal(whole[1], pieces[1])
    np.testing.assert_allclose(whole[2], pieces[2], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="tile"):
        outline_features(img, lab, seed, scale=scale, tile=8)
    # the grey maps cached between calls on the same image (as the refiner's
    # passes make, with other labels) change nothing; another image starts afresh
    cache: dict = {}
    for tile in (1024, 64):
        outline_features(img, lab, seed, scale=scale, band=3.0, tile=tile, cache=cache)
        grown = np.where(lab == 0, np.roll(lab, 2, axis=1), lab)
        cached = outline_features(img, grown, seed, scale=scale, band=3.0, tile=tile,
                                  cache=cache)
        fresh = outline_features(img, grown, seed, scale=scale, band=3.0, tile=tile)
        for a, b in zip(cached, fresh):
            np.testing.assert_array_equal(a, b)
    other = np.ascontiguousarray(255 - img)
    np.testing.assert_array_equal(
        outline_features(other, lab, seed, scale=scale, band=3.0, tile=64, cache=cache)[2],
        outline_features(other, lab, seed, scale=scale, band=3.0, tile=64)[2])


def test_refiner_probabilities_in_blocks(monkeypatch):
    from imageextract.segment.bpartis import outline

    rng = np.random.default_rng(0)
    k = len(FEATURES)
    ref = OutlineRefiner(mean=np.zeros(k), std=np.ones(k),
                         layers=[(rng.normal(size=(k, 8)).astype(np.float32), np.zeros(8)),
                                 (rng.normal(size=(8, 1)).astype(np.float32), np.zeros(1))])
    X = rng.normal(size=(1000, k)).astype(np.float32)
    full = ref.predict_proba(X)
    monkeypatch.setattr(outline, "_ROWS", 64)
    np.testing.assert_allclose(ref.predict_proba(X), full, rtol=1e-6)
    assert full.dtype == np.float32 and full.shape == (1000,)


def test_band_targets_use_the_matched_true_particle():
    truth = np.zeros((1, 10), np.int32)
    truth[0, 1:5] = 1
    truth[0, 6:9] = 2
    lab = np.zeros_like(truth)
    lab[0, 1:4] = 1  # matches true 1 (IoU 0.75)
    lab[0, 8] = 2    # matches nothing (IoU 1/3)
    flat = np.array([3, 4, 5, 7, 8])
    owner = np.array([1, 1, 1, 2, 2])
    y, usable = band_targets(truth, lab, flat, owner)
    assert y.tolist() == [1, 1, 0, 0, 0] and usable.tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="does not match"):
        band_targets(truth, lab[:, :5], flat, owner)


def test_relabel_band_and_its_gate():
    lab = np.zeros((1, 12), np.int32)
    lab[0, 1:5] = 1
    lab[0, 7:11] = 2
    flat = np.array([0, 1, 4, 5, 6, 7, 8, 9, 10, 11])
    owner = np.array([1, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    # particle 1 grows by two pixels, particle 2 loses one of its four
    prob = np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.1])
    free = relabel_band(lab, flat, owner, prob, gate=None)
    assert free[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 2, 2, 2, 0]
    # particle 1 grows 6/4 = 1.5x, outside (0.7, 1.4): it keeps its old pixels;
    # particle 2 (0.75x) is refined
    gated = relabel_band(lab, flat, owner, prob, gate=(0.7, 1.4))
    assert gated[0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2, 0]
    assert relabel_band(lab, flat, owner, prob, gate=(0.4, 1.6))[0].tolist() == free[0].tolist()
    assert lab[0, 1:5].tolist() == [1, 1, 1, 1]  # the input is left alone
    # the threshold decides; pixels outside the band are never touched
    none = relabel_band(lab, flat, owner, prob, threshold=0.95, gate=None)
    assert none[0].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]


def test_smoothing_and_tidying_remove_frayed_pixels():
    lab = np.zeros((20, 20), np.int32)
    lab[5:15, 5:15] = 1
    # a lone band pixel far outside with a high probability, one inside with a low one
    flat = np.ravel_multi_index(([2, 10], [2, 10]), lab.shape)
    prob = np.array([0.9, 0.1], np.float32)
    assert smooth_band(lab, flat, prob, sigma=0).tolist() == prob.tolist()
    sm = smooth_band(lab, flat, prob, sigma=1.0)
    assert sm[0] < 0.5 < sm[1]  # the neighbours outvote both
    # tidy: a speck and a detached piece are dropped and a hole is filled...
    new = lab.copy()
    new[1, 1] = 1
    new[9, 9] = 0
    new[5:8, 17:19] = 1
    out = tidy_particles(new, lab)
    assert out[1, 1] == 0 and out[5:8, 17:19].max() == 0 and out[5:15, 5:15].min() == 1
    # ... the piece kept is the one on the particle's old pixels, not the largest
    small = np.zeros_like(lab)
    small[5:8, 17:19] = 1
    out = tidy_particles(new, small)
    assert out[5:8, 17:19].min() == 1 and out[5:15, 5:15].max() == 0
    # ... and with no old pixels at all, the largest
    out = tidy_particles(new, np.zeros_like(lab))
    assert out[5:15, 5:15].min() == 1 and out[5:8, 17:19].max() == 0


def _fit(rng, n=8, **kw):
    from imageextract.segment.bpartis.outline import fit_outline_refiner

    xs, ys = [], []
    for i in range(n):
        rgb, truth, off, seed = scene(rng, grow=(-3, -2, 2, 3)[i % 4])
        flat, owner, X = outline_features(rgb, off, seed, scale=1.0)
        y, usable = band_targets(truth, off, flat, owner)
        xs.append(X[usable])
        ys.append(y[usable])
    return fit_outline_refiner(np.concatenate(xs), np.concatenate(ys), **kw)


def test_fitted_refiner_moves_outlines_to_the_edges():
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    ref = _fit(rng, hidden=16, epochs=15, gate=None)
    for grow in (-2, 2):
        rgb, truth, off, seed = scene(rng, grow=grow)
        new = ref.refine(rgb, off, seed, scale=1.0)
        for i in (1, 2, 3):
            before = iou(off == i, truth == i)
            after = iou(new == i, truth == i)
            assert before < 0.86 and after > 0.93, (grow, i, before, after)
    # round trip through the config dict, and the errors of a bad one
    d = json.loads(json.dumps(ref.to_dict()))
    back = OutlineRefiner.from_dict(d)
    X = np.random.default_rng(2).normal(size=(20, len(FEATURES))).astype(np.float32)
    np.testing.assert_allclose(back.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    assert back.gate is None and back.band == 4.0
    with pytest.raises(ValueError, match="features"):
        OutlineRefiner.from_dict({**d, "features": ["seed"]})
    with pytest.raises(ValueError, match="kind"):
        OutlineRefiner.from_dict({**d, "kind": "tree"})
    with pytest.raises(ValueError, match="layer"):
        OutlineRefiner.from_dict({**d, "layers": d["layers"][1:]})
    with pytest.raises(ValueError, match="gate"):
        OutlineRefiner.from_dict({**d, "gate": [1.2, 1.5]})
    with pytest.raises(ValueError, match="smooth"):
        OutlineRefiner.from_dict({**d, "smooth": -1})
    # a refiner stored before the smoothing existed runs without it
    assert OutlineRefiner.from_dict({k: v for k, v in d.items() if k != "smooth"}).smooth == 0
    with pytest.raises(ValueError, match="shape"):
        back.predict_proba(X[:, :3])


def test_more_passes_move_an_outline_further_than_the_band():
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    ref = _fit(rng, hidden=16, epochs=15, gate=None)
    rgb, truth, off, seed = scene(rng, grow=-7)  # outlines 7 px inside, the band is 4
    ious = {}
    for passes in (1, 2, 4):
        ref.passes = passes
        new = ref.refine(rgb, off, seed, scale=1.0)
        ious[passes] = min(iou(new == i, truth == i) for i in (1, 2, 3))
    assert min(iou(off == i, truth == i) for i in (1, 2, 3)) < 0.55
    assert ious[1] < 0.85 < 0.93 < ious[4], ious
    assert ious[1] < ious[2] <= ious[4] + 1e-9, ious
    # a pass that changes nothing ends the loop: outlines already at the
    # edges stay where one pass leaves them
    rgb, truth, off, seed = scene(rng, grow=0)
    ref.passes = 1
    once = ref.refine(rgb, off, seed, scale=1.0)
    ref.passes = 6
    assert min(iou(ref.refine(rgb, off, seed, scale=1.0) == i, truth == i)
               for i in (1, 2, 3)) >= min(iou(once == i, truth == i) for i in (1, 2, 3)) - 0.02
    d = ref.to_dict()
    assert OutlineRefiner.from_dict(d).passes == 6
    assert OutlineRefiner.from_dict({k: v for k, v in d.items() if k != "passes"}).passes == 1
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="passes"):
            OutlineRefiner.from_dict({**d, "passes": bad})


def test_fit_needs_both_classes():
    from imageextract.segment.bpartis.outline import fit_outline_refiner

    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="both classes"):
        fit_outline_refiner(np.zeros((10, len(FEATURES))), np.ones(10))


def test_backend_applies_the_outline_refiner_from_config():
    torch = pytest.importorskip("torch")
    from imageextract.segment.bpartis import BPartIS

    rng = np.random.default_rng(3)
    ref = _fit(rng, n=4, hidden=8, epochs=3)
    tiny = {"width": 0.25, "depth": 0.34, "dec_channels": [16, 16, 8, 8, 8], "freeze": 0}
    cfg = {"model": tiny, "inference": {
        "tile_px": 64, "overlap_px": 16, "target_diameter": None,
        "cluster": {"min_score": 0.0, "min_rel_area": 0.0, "seed_threshold": 0.0,
                    "fg_threshold": 0.0}, "outline": ref.to_dict()}}
    torch.manual_seed(0)
    b = BPartIS.from_config(cfg, mc_samples=1)
    assert b.outline is not None
    rgb = scene(rng)[0]
    plain = b.segment_rgb(rgb, outline=None)
    out = b.segment_rgb(rgb)
    assert plain["labels"].max() > 0 and "refined" not in plain and out["refined"]
    expected = ref.refine(rgb, plain["labels"], plain["seed"], scale=plain["scale"])
    np.testing.assert_array_equal(out["labels"], expected)
    assert not np.array_equal(out["labels"], plain["labels"])
    assert BPartIS.from_config(cfg, mc_samples=1, outline=False).outline is None
    bad = {"model": tiny, "inference": {"outline": {"kind": "mlp", "mean": [0.0]}}}
    with pytest.raises(ValueError, match="inference.outline"):
        BPartIS.from_config(bad)


def test_outline_fit_scores_and_installs(tmp_path):
    pytest.importorskip("torch")
    from imageextract.segment.bpartis.outline_fit import band_pixels, install, score_segs

    rng = np.random.default_rng(4)
    segs = []
    for grow in (-3, -2, 2, 3):
        rgb, truth, off, seed = scene(rng, grow=grow)
        segs.append({"rgb": rgb, "truth": truth, "labels": off, "seed": seed, "scale": 1.0})
    X, y = band_pixels(segs, band=3.0, max_pixels=500)
    assert X.shape == (len(y), len(FEATURES)) and len(y) <= 4 * 500 and 0 < y.mean() < 1
    ref = _fit(rng, hidden=16, epochs=15, gate=None)
    before, after = score_segs(segs), score_segs(segs, ref)
    assert after["aji_plus"] > before["aji_plus"] + 0.05
    assert after["score"] == pytest.approx((after["ap50"] + after["aji_plus"]) / 2)

    (tmp_path / "config.json").write_text(json.dumps({"inference": {"tile_px": 512}}))
    (tmp_path / "MODEL_CARD.md").write_text("# card\n\n## Weights\nsha\n")
    check = {"split": "val", "images": 4, "unrefined": before, "gate None smooth 0.5": after}
    res = {"pixels": len(y), "images": 4, "split": "train-fit", "every": 1,
           "inside_fraction": float(y.mean()), "check": check}
    for _ in range(2):  # a second install replaces the first
        install(tmp_path, ref, res)
    text = (tmp_path / "config.json").read_text()
    cfg = json.loads(text)
    assert '      "mean": [' in text  # number lists stay on one line
    assert len(text.splitlines()) < 100
    assert cfg["inference"]["tile_px"] == 512
    assert OutlineRefiner.from_dict(cfg["inference"]["outline"]).band == 4.0
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.count("## Outline refinement") == 1
    assert card.index("## Outline refinement") < card.index("## Weights")
    assert f"AJI+ {before['aji_plus']:.3f} -> {after['aji_plus']:.3f}" in card


def test_outline_fit_chooses_the_passes_on_the_check_split(tmp_path):
    pytest.importorskip("torch")
    from imageextract.segment.bpartis.outline_fit import choose_passes, install

    rng = np.random.default_rng(5)
    ref = _fit(rng, hidden=16, epochs=15, gate=None)
    far = []
    for _ in range(2):  # outlines further inside than the band reaches
        rgb, truth, off, seed = scene(rng, grow=-7)
        far.append({"rgb": rgb, "truth": truth, "labels": off, "seed": seed, "scale": 1.0})
    table = choose_passes(far, ref, passes=(1, 2, 3))
    assert list(table) == ["1", "2", "3"] and ref.passes > 1
    assert table["1"]["aji_plus"] < table[str(ref.passes)]["aji_plus"] - 0.1
    # where one pass already reaches the edges, more add nothing: the fewest win
    near = []
    for grow in (-2, 2):
        rgb, truth, off, seed = scene(rng, grow=grow)
        near.append({"rgb": rgb, "truth": truth, "labels": off, "seed": seed, "scale": 1.0})
    sentinel = {"score": -1.0}
    table = choose_passes(near, ref, passes=(1, 2), known={2: sentinel})
    assert ref.passes == 1 and table["2"] is sentinel  # known scores are not recomputed
    # the card names the passes
    ref.passes = 3
    d = tmp_path
    (d / "config.json").write_text("{}")
    (d / "MODEL_CARD.md").write_text("# card\n")
    res = {"pixels": 10, "images": 2, "split": "train-fit", "every": 1, "inside_fraction": 0.5,
           "check": {"split": "val", "images": 2, "unrefined": table["1"],
                     "passes": {"3": table["1"]}}}
    install(d, ref, dict(res, later_passes=2, later_pixels=4))
    assert "3 passes, each from the outlines the one before drew" in \
        (d / "MODEL_CARD.md").read_text()
    assert "4 of them from the outlines after 1-2 passes of a first fit" in \
        (d / "MODEL_CARD.md").read_text()
    assert json.loads((d / "config.json").read_text())["inference"]["outline"]["passes"] == 3


def test_later_pass_segs_follow_the_passes():
    pytest.importorskip("torch")
    from imageextract.segment.bpartis.outline_fit import later_pass_segs

    rng = np.random.default_rng(6)
    ref = _fit(rng, hidden=16, epochs=15, gate=None)
    rgb, truth, off, seed = scene(rng, grow=-7)
    seg = {"stem": "s", "rgb": rgb, "truth": truth, "labels": off, "seed": seed, "scale": 1.0}
    later = later_pass_segs([seg], ref, 3)
    assert len(later) == 3 and all(s["stem"] == "s" and s["truth"] is truth for s in later)
    ref.passes = 2
    np.testing.assert_array_equal(later[1]["labels"], ref.refine(rgb, off, seed, scale=1.0))
    assert iou(later[0]["labels"] == 1, truth == 1) > iou(off == 1, truth == 1) + 0.2
    assert seg["labels"] is off  # the input is left as it was


def test_outline_fit_refuses_a_bad_every_before_loading_anything(tmp_path):
    from imageextract.segment.bpartis.outline_fit import fit_for_model

    # no model and no data there: the argument is checked first
    with pytest.raises(ValueError, match="every must be >= 1"):
        fit_for_model(tmp_path / "no-model", tmp_path / "no-data", every=0)
    with pytest.raises(ValueError, match="later_passes must be >= 0"):
        fit_for_model(tmp_path / "no-model", tmp_path / "no-data", later_passes=-1)
