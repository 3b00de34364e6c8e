"""The bpartis particle rescorer: features, match labels, the fit, the
threshold choice and its installation, and the backend using it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imageextract.segment.bpartis.rescore import (
    FEATURES,
    MLPRescorer,
    Rescorer,
    fit_mlp_rescorer,
    fit_rescorer,
    instance_features,
    load_rescorer,
    match_labels,
)

COL = {name: i for i, name in enumerate(FEATURES)}


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def scene():
    """Two dark discs on a noisy bright background; label 3 is a patch of
    background, label 4 a disc cut by the image border."""
    rng = np.random.default_rng(0)
    shape = (96, 128)
    img = 200 + rng.normal(0, 3, shape)
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate([(30, 30), (60, 80)], 1):
        m = disc(shape, cy, cx, 12)
        img[m] = 60
        lab[m] = i
    lab[70:86, 10:26] = 3  # background: no edge, no contrast
    m = disc(shape, 48, 127, 10)
    img[m] = 60
    lab[m] = 4
    return img.clip(0, 255).astype(np.uint8), lab


def test_instance_features_tell_particles_from_background():
    img, lab = scene()
    k = 4
    f = instance_features(img, lab, scores=np.full(k, 0.9), uncertainty=np.zeros(k),
                          mi=np.zeros(lab.shape), scale=2.0, target_diameter=48.0)
    assert f.shape == (k, len(FEATURES)) and np.isfinite(f).all()
    c = f[:, COL["contrast"]]
    assert c[0] > 2 and c[1] > 2 and c[2] < 0.5  # dark discs vs the background patch
    e = f[:, COL["edge"]]
    assert e[0] > 3 * e[2]  # the discs' outlines lie on edges
    assert f[:, COL["border"]].tolist() == [0, 0, 0, 1]
    assert f[0, COL["solidity"]] == pytest.approx(1.0, abs=0.15)
    # a 24-px disc at scale 2 is a 48-px disc: the training size
    assert f[0, COL["log_size"]] == pytest.approx(0.0, abs=0.15)
    assert f[0, COL["log_count"]] == pytest.approx(np.log(4))
    assert f[:, COL["log_rel_max"]].max() == 0.0
    # RGB gives the same as grey
    f3 = instance_features(np.repeat(img[..., None], 3, 2), lab, scores=np.full(k, 0.9),
                           uncertainty=np.zeros(k), mi=np.zeros(lab.shape), scale=2.0)
    np.testing.assert_allclose(f3, f)


def test_instance_features_edge_cases():
    img, lab = scene()
    none = instance_features(img, np.zeros_like(lab), scores=np.zeros(0), uncertainty=np.zeros(0),
                             mi=np.zeros(lab.shape), scale=1.0)
    assert none.shape == (0, len(FEATURES))
    with pytest.raises(ValueError, match="does not match labels shape"):
        instance_features(img[:10], lab, scores=np.ones(4), uncertainty=np.zeros(4),
                          mi=np.zeros(lab.shape), scale=1.0)
    # a one-pixel particle has finite features
    one = np.zeros_like(lab)
    one[5, 5] = 1
    f = instance_features(img, one, scores=np.ones(1), uncertainty=np.zeros(1),
                          mi=np.zeros(lab.shape), scale=1.0)
    assert np.isfinite(f).all()


def test_match_labels_counts_fragments_and_duplicates_as_false():
    truth = np.zeros((20, 40), np.int32)
    truth[2:12, 2:12] = 1
    truth[2:12, 20:30] = 2
    pred = np.zeros_like(truth)
    pred[2:12, 2:12] = 1       # exact
    pred[2:12, 20:25] = 2      # half of particle 2: IoU 0.5, not > 0.5
    pred[2:12, 25:30] = 3      # the other half
    pred[15:19, 35:39] = 4     # background
    assert match_labels(truth, pred).tolist() == [1, 0, 0, 0]
    # two predictions over one particle: only the better one is a match
    pred2 = np.zeros_like(truth)
    pred2[2:3, 2:12] = 1   # one row of particle 1: IoU 0.1
    pred2[3:12, 2:12] = 2  # the rest: IoU 0.9
    assert match_labels(truth, pred2).tolist() == [0, 1]
    assert match_labels(np.zeros_like(truth), pred).tolist() == [0, 0, 0, 0]
    assert match_labels(truth, np.zeros_like(truth)).size == 0


def test_fit_rescorer_separates_and_round_trips():
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(size=(n, len(FEATURES)))
    y = (x[:, COL["contrast"]] + 0.5 * x[:, COL["score"]] > 0).astype(float)
    model = fit_rescorer(x, y, threshold=0.6)
    p = model.predict_proba(x)
    assert ((p > 0.5) == (y > 0)).mean() > 0.95
    assert model.keep(p).tolist() == (p >= 0.6).tolist()
    again = Rescorer.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(again.predict_proba(x), p)
    assert again.threshold == 0.6
    with pytest.raises(ValueError, match="features per particle"):
        model.predict_proba(x[:, :3])
    with pytest.raises(ValueError, match="both matched and unmatched"):
        fit_rescorer(x, np.ones(n))
    bad = model.to_dict()
    bad["coef"] = bad["coef"][:-1]
    with pytest.raises(ValueError, match="coef"):
        Rescorer.from_dict(bad)
    bad = model.to_dict()
    bad["features"] = bad["features"][:-1]
    with pytest.raises(ValueError, match="do not match"):
        Rescorer.from_dict(bad)


def test_mlp_rescorer_learns_a_combination_the_logistic_one_cannot():
    """Real particles are those where two features agree in sign (an XOR
    the features' squares cannot express): the perceptrons learn it."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    n = 600
    x = rng.normal(size=(n, len(FEATURES)))
    y = (x[:, COL["contrast"]] * x[:, COL["neighbours"]] > 0).astype(float)
    mlp = fit_mlp_rescorer(x, y, threshold=0.6, members=2, steps=300)
    logistic = fit_rescorer(x, y)
    acc = lambda p: ((p > 0.5) == (y > 0)).mean()  # noqa: E731
    p = mlp.predict_proba(x)
    assert acc(p) > 0.9 and acc(logistic.predict_proba(x)) < 0.7
    assert len(mlp.members) == 2 and mlp.keep(p).tolist() == (p >= 0.6).tolist()
    d = json.loads(json.dumps(mlp.to_dict()))
    assert d["kind"] == "mlp"
    again = load_rescorer(d)
    assert isinstance(again, MLPRescorer) and again.threshold == 0.6
    np.testing.assert_allclose(again.predict_proba(x), p)
    assert isinstance(load_rescorer(logistic.to_dict()), Rescorer)
    with pytest.raises(ValueError, match="features per particle"):
        mlp.predict_proba(x[:, :3])
    with pytest.raises(ValueError, match="both matched and unmatched"):
        fit_mlp_rescorer(x, np.zeros(n))
    with pytest.raises(ValueError, match="unknown rescorer kind 'forest'"):
        load_rescorer(dict(d, kind="forest"))
    bad = json.loads(json.dumps(d))
    bad["members"][0][1]["weight"] = bad["members"][0][1]["weight"][:-1]
    with pytest.raises(ValueError, match="does not follow"):
        load_rescorer(bad)
    with pytest.raises(ValueError, match="at least one member"):
        load_rescorer(dict(d, members=[]))
    with pytest.raises(ValueError, match="mean and std"):
        load_rescorer(dict(d, mean=[0.0]))


def _proposals(n_images=30, seed=0):
    """Synthetic proposals: real particles (matched) have high contrast,
    false ones low; each image's label map has one pixel row per proposal."""
    rng = np.random.default_rng(seed)
    props = []
    for i in range(n_images):
        k_true, k_false = rng.integers(2, 6), rng.integers(0, 4)
        k = k_true + k_false
        truth = np.zeros((k, 10), np.int32)
        truth[:k_true] = np.arange(1, k_true + 1)[:, None]
        labels = np.repeat(np.arange(1, k + 1)[:, None], 10, 1).astype(np.int32)
        matched = np.r_[np.ones(k_true), np.zeros(k_false)]
        x = rng.normal(size=(k, len(FEATURES)))
        x[:, COL["contrast"]] += 3 * matched
        props.append({"stem": f"s{i}", "truth": truth, "labels": labels, "features": x,
                      "matched": matched, "uncertainty": np.zeros(k)})
    return props


def test_cross_validation_picks_a_threshold_that_drops_false_proposals(tmp_path):
    from imageextract.segment.bpartis.rescore_fit import (
        cross_validate,
        install,
        score_filtered,
        stack_proposals,
    )

    props = _proposals()
    cv = cross_validate(props, folds=3, thresholds=(0.01, 0.5))
    assert cv[0.5]["ap50"] > cv[0.01]["ap50"]
    assert cv[0.5]["ap50"] > 0.9
    keep_all = score_filtered(props, [np.ones(len(p["matched"])) for p in props], 0.5)
    assert keep_all["ap50"] < cv[0.5]["ap50"]
    assert keep_all["aji_plus"] < 1.0

    model = fit_rescorer(*stack_proposals(props)[:2], threshold=0.5)
    model.cluster = {"min_score": 0.6}
    (tmp_path / "config.json").write_text(json.dumps({"inference": {"mc_samples": 8}}))
    (tmp_path / "MODEL_CARD.md").write_text("# m\n\n## Notes\nn\n\n## Weights\nw\n")
    res = {"split": "train-fit", "images": 30, "proposals": 100, "matched_fraction": 0.7,
           "cv": {str(t): v for t, v in cv.items()}, "proposals_unfiltered": keep_all}
    install(tmp_path, model, res)
    install(tmp_path, model, res)  # again: replaces, does not duplicate
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["inference"]["mc_samples"] == 8
    assert Rescorer.from_dict(cfg["inference"]["rescore"]).cluster == {"min_score": 0.6}
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.count("## Rescoring") == 1 and card.count("## Weights") == 1
    assert card.index("## Notes") < card.index("## Rescoring") < card.index("## Weights")


def test_mlp_rescorer_cross_validates_installs_and_runs_in_the_backend(tmp_path):
    pytest.importorskip("torch")
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.rescore_fit import (
        cross_validate,
        fit_for_model,
        fit_kind,
        install,
        stack_proposals,
    )

    props = _proposals(n_images=20)
    cv = cross_validate(props, folds=3, thresholds=(0.5,), kind="mlp")
    assert cv[0.5]["ap50"] > 0.9
    model = fit_kind("mlp", *stack_proposals(props), threshold=0.5)
    assert isinstance(model, MLPRescorer)
    with pytest.raises(ValueError, match="unknown rescorer kind"):
        fit_kind("forest", *stack_proposals(props))
    with pytest.raises(ValueError, match="unknown rescorer kind"):
        fit_for_model(tmp_path, tmp_path, kind="forest")
    (tmp_path / "config.json").write_text(json.dumps({"inference": {}}))
    (tmp_path / "MODEL_CARD.md").write_text("# m\n")
    res = {"split": "train-fit", "images": 20, "proposals": 90, "matched_fraction": 0.7,
           "cv": {"0.5": cv[0.5]}, "proposals_unfiltered": cv[0.5]}
    install(tmp_path, model, res)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "ensemble of 3 perceptrons" in card
    assert "the best of 1 by 5-fold" in card and "x the working scale found" not in card
    # a threshold chosen end to end, on proposals at several scales, says so
    install(tmp_path, model, dict(res, threshold_from="given", factors=[0.8, 1.0]))
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "chosen end to end" in card and "at 0.8, 1 x the working scale found" in card
    assert card.count("## Rescoring") == 1
    with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        fit_for_model(tmp_path, tmp_path, threshold=1.5)
    rescore = json.loads((tmp_path / "config.json").read_text())["inference"]["rescore"]
    tiny = {"width": 0.25, "depth": 0.34, "dec_channels": [16, 16, 8, 8, 8], "freeze": 0}
    b = BPartIS.from_config({"model": tiny, "inference": {"tile_px": 64, "overlap_px": 16,
                                                          "rescore": rescore}}, mc_samples=2)
    assert isinstance(b.rescorer, MLPRescorer)
    seg = b.predict((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    assert seg.scores.shape == (int(seg.labels.max()),)


def test_backend_uses_the_rescorer_from_config():
    torch = pytest.importorskip("torch")
    from imageextract.segment.bpartis import BPartIS

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, len(FEATURES)))
    model = fit_rescorer(x, (x[:, 0] > 0).astype(float))
    tiny = {"width": 0.25, "depth": 0.34, "dec_channels": [16, 16, 8, 8, 8], "freeze": 0}
    img = (rng.random((64, 64)) * 255).astype(np.uint8)

    def backend(threshold, mc_samples=2, **kw):
        model.threshold = threshold
        model.inputs = {"mc_samples": 2, "uncertainty": "mi"}
        model.cluster = {"min_score": 0.0, "min_rel_area": 0.0, "seed_threshold": 0.0,
                         "fg_threshold": 0.0}
        cfg = {"model": tiny, "inference": {"tile_px": 64, "overlap_px": 16,
                                            "cluster": {"min_score": 0.5},
                                            "rescore": model.to_dict()}}
        torch.manual_seed(0)
        return BPartIS.from_config(cfg, mc_samples=mc_samples, **kw)

    b = backend(0.0)
    assert b.rescorer is not None and b.cluster_options["min_score"] == 0.0
    seg = b.predict(img)
    k = int(seg.labels.max())
    assert k > 0  # with every pixel foreground, something is proposed
    assert seg.scores.shape == (k,) and np.all((seg.scores >= 0) & (seg.scores <= 1))
    assert int(backend(1.01).predict(img).labels.max()) == 0  # nothing passes
    # the features were made with T = 2 and MI: with other settings the rescorer is off
    assert backend(1.01, mc_samples=1).rescorer is None
    assert backend(1.01, uncertainty="consistency").rescorer is None
    plain = backend(1.01, rescore=False)
    assert plain.rescorer is None and plain.cluster_options["min_score"] == 0.5
    bad = {"model": tiny, "inference": {"rescore": {"mean": [0.0]}}}
    with pytest.raises(ValueError, match="inference.rescore"):
        BPartIS.from_config(bad)


def test_proposals_come_from_the_scale_found(monkeypatch):
    from imageextract.segment.bpartis import BPartIS, inference
    from imageextract.segment.bpartis.rescore_fit import collect_proposals

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tiny = {"width": 0.25, "depth": 0.34, "dec_channels": [16, 16, 8, 8, 8], "freeze": 0}
    b = BPartIS.from_config({"model": tiny, "inference": {
        "target_diameter": 48.0, "max_passes": 0, "max_halvings": 0,
        "scale_factors": [0.8, 1.0, 1.25],
        "sparse_scale_factors": {"factors": [0.64], "max_particles": 10**6}}}, mc_samples=1)
    seen = []
    real = inference.segment_image

    def spy(*args, **kw):
        seen.append((kw["scale_factors"], kw["sparse_factors"]))
        return real(*args, **kw)

    monkeypatch.setattr(inference, "segment_image", spy)
    img, lab = scene()
    props = collect_proposals(b, [("s", np.dstack([img] * 3), lab)], progress=False)
    assert len(props) == 1 and seen == [((1.0,), None)]
    b.segment_rgb(np.dstack([img] * 3))  # the backend itself still tries them all
    assert seen[-1] == ((0.8, 1.0, 1.25), ({"factors": (0.64,), "max_particles": 10**6},))
    # at other multiples of the scale found: one entry per factor, the scale fixed
    seen.clear()
    props = collect_proposals(b, [("s", np.dstack([img] * 3), lab)], progress=False,
                              factors=(1.0, 0.5))
    assert [p["factor"] for p in props] == [1.0, 0.5] and len(seen) == 2
    assert [p["stem"] for p in props] == ["s", "s"]
    with pytest.raises(ValueError, match="factors"):
        collect_proposals(b, [], factors=(0.0,))


def test_cross_validation_keeps_an_images_proposals_in_one_fold():
    from imageextract.segment.bpartis import rescore_fit

    props = _proposals(n_images=12)
    again = [dict(p, factor=0.8) for p in props]  # the same images at another factor
    folds_seen = []
    real = rescore_fit.fit_kind

    def spy(kind, x, y, w, **kw):
        _, counts = np.unique(x, axis=0, return_counts=True)
        folds_seen.append((len(y), set(counts.tolist())))
        return real(kind, x, y, w, **kw)

    rescore_fit.fit_kind = spy
    try:
        cv = rescore_fit.cross_validate(props + again, folds=3, thresholds=(0.5,))
    finally:
        rescore_fit.fit_kind = real
    # each fit has both copies of every proposal it has, or neither
    n = sum(len(p["matched"]) for p in props)
    assert len(folds_seen) == 3 and all(c == {2} for _, c in folds_seen)
    assert sum(k for k, _ in folds_seen) == 2 * 2 * n  # every image left out once
    assert cv[0.5]["ap50"] > 0.9


def test_proposals_are_not_outline_refined():
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.rescore_fit import collect_proposals

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tiny = {"width": 0.25, "depth": 0.34, "dec_channels": [16, 16, 8, 8, 8], "freeze": 0}
    b = BPartIS.from_config({"model": tiny, "inference": {
        "target_diameter": 48.0, "max_passes": 0, "max_halvings": 0}}, mc_samples=1)
    calls = []

    class Refiner:  # stands in for an installed outline refiner
        def refine(self, rgb, labels, seed, *, scale):
            calls.append(scale)
            return labels

    b.outline = Refiner()
    img, lab = scene()
    collect_proposals(b, [("s", np.dstack([img] * 3), lab)], progress=False)
    # the backend rescores before it refines outlines: the fit must see the same
    assert calls == []
    b.segment_rgb(np.dstack([img] * 3))
    assert len(calls) == 1


def _random_masks(n=60, seed=5):
    """Blobby masks, some with holes, some touching the window's edge."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(1, 30, 2)
        m = ndi.gaussian_filter(rng.random((h, w)), 1.5) > 0.5 + 0.02 * rng.normal()
        if i % 3 == 0 and h > 6 and w > 6:  # a ring: a hole for sure
            m[1:-1, 1:-1] = True
            m[3:-3, 3:-3] = False
        yield m


def test_feature_helpers_match_scipy():
    # the helpers instance_features uses instead of scipy's morphology and
    # Qhull on every outline pixel must give the same numbers
    from scipy import ndimage as ndi
    from scipy.spatial import ConvexHull

    from imageextract.segment.bpartis import rescore as R

    n_holes = 0
    for m in _random_masks():
        for it in (1, 3, 4):
            np.testing.assert_array_equal(R._dilate(m, it), ndi.binary_dilation(m, iterations=it))
        if not m.any():
            continue
        rows, first, last = R._row_extents(m)
        holes = int(ndi.binary_fill_holes(m).sum() - m.sum())
        assert R._holes(m, first, last) == holes
        n_holes += holes > 0
        ys, xs = np.nonzero(m)
        corners = np.concatenate([np.stack([ys + dy, xs + dx], 1) for dy in (0, 1)
                                  for dx in (0, 1)])
        assert R._convex_area(rows, first, last) == pytest.approx(ConvexHull(corners).volume)
    assert n_holes >= 10


def test_instance_features_with_image_statistics_computed_once():
    from imageextract.segment.bpartis.rescore import image_statistics

    img, lab = scene()
    lab[2:16, 50:64] = 5
    lab[5:13, 53:61] = 0  # a ring: 132 px around a 64-px hole
    k = int(lab.max())
    kw = dict(scores=np.linspace(0.8, 0.95, k), uncertainty=np.zeros(k),
              mi=np.zeros(lab.shape), scale=1.0)
    rgb = np.repeat(img[..., None], 3, 2)
    ref = instance_features(rgb, lab, **kw)
    np.testing.assert_array_equal(instance_features(rgb, lab, stats=image_statistics(rgb), **kw),
                                  ref)
    assert ref[:4, COL["holes"]].max() == 0
    assert ref[4, COL["holes"]] == pytest.approx(64 / 196)
    assert ref[4, COL["solidity"]] == pytest.approx(132 / 196)
