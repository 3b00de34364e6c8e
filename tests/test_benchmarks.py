"""The helpers of ``benchmarks/compare.py`` and ``benchmarks/bench_val_views.py``
that prepare and summarise results (no backend or peer is run here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imageextract.evaluation.harness import write_label_png


@pytest.fixture(scope="module")
def compare(load_script):
    return load_script("benchmarks/compare.py")


def _disc_and_rods(tmp_path: Path) -> Path:
    (tmp_path / "segmaps").mkdir()
    yy, xx = np.mgrid[:128, :128]
    discs = np.zeros((128, 128), np.int32)
    for k, (cy, cx) in enumerate([(30, 30), (30, 90), (90, 60)], 1):
        discs[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] = k
    rods = np.zeros((128, 128), np.int32)
    rods[10:18, 5:120] = 1     # 8 x 115: aspect ~14
    rods[40:52, 0:90] = 2      # touches the border: still counted
    rods[80:110, 40:70] = 3    # one square among rods
    write_label_png(discs, tmp_path / "segmaps" / "discs.png")
    write_label_png(rods, tmp_path / "segmaps" / "rods.png")
    return tmp_path


def test_shape_groups_split_rods_from_discs(compare, tmp_path):
    data = _disc_and_rods(tmp_path)
    assert compare.shape_groups(data, ["discs", "rods"]) == {
        "discs": "compact", "rods": "elongated"}
    # the threshold is the median aspect ratio of the image's particles
    assert compare.shape_groups(data, ["rods"], threshold=20.0) == {"rods": "compact"}


def test_select_stems_by_shape(compare, tmp_path):
    data = _disc_and_rods(tmp_path)
    assert compare.select_stems(data, ["rods", "discs"]) == ["rods", "discs"]
    assert compare.select_stems(data, ["rods", "discs"], shape="compact") == ["discs"]
    assert compare.select_stems(data, ["rods", "discs"], shape="elongated") == ["rods"]
    assert compare.select_stems(data, ["rods", "discs"], limit=1) == ["rods"]
    with pytest.raises(ValueError, match="shape"):
        compare.select_stems(data, ["rods"], shape="round")


def test_by_shape_means_each_method_on_its_own_images(compare):
    metrics = dict.fromkeys(compare.METRICS, 0.0)
    ours = {"method": "ours", "status": "ok", "per_image": [
        {"stem": "a", **metrics, "ap50": 1.0}, {"stem": "b", **metrics, "ap50": 0.5},
        {"stem": "c", **metrics, "ap50": 0.0}]}
    peer = {"method": "peer", "status": "ok", "per_image": [{"stem": "a", **metrics}]}
    skipped = {"method": "gone", "status": "skipped", "reason": "no weights"}
    out = compare.by_shape([ours, peer, skipped], {"a": "compact", "b": "compact",
                                                   "c": "elongated"})
    assert out["compact"]["n_images"] == 2
    assert out["compact"]["methods"]["ours"]["mean"]["ap50"] == pytest.approx(0.75)
    assert out["compact"]["methods"]["peer"]["n_images"] == 1
    assert out["elongated"]["methods"] == {"ours": {"n_images": 1, "mean": {
        **metrics, "ap50": 0.0}}}


def test_markdown_has_the_shape_tables(compare, tmp_path):
    metrics = dict.fromkeys(compare.METRICS, 0.5)
    timing = {"wall_seconds_median": 1.0, "wall_seconds_mean": 1.0,
              "cpu_seconds_median": 1.0, "cpu_seconds_mean": 1.0}
    ours = {"method": "ours", "status": "ok", "n_images": 2, "mean": metrics, **timing,
            "per_image": [{"stem": "a", **metrics}, {"stem": "b", **metrics}]}
    report = {"split": "test", "date": "now", "methods": [ours],
              "machine": {"cpu": "x", "cpu_count": 2, "load_average_1_5_15": [0, 0, 0]},
              "by_shape": compare.by_shape([ours], {"a": "compact", "b": "elongated"})}
    compare.write_markdown(report, tmp_path / "c.md")
    text = (tmp_path / "c.md").read_text()
    assert "## By particle shape" in text
    assert "**elongated** (1 image)" in text
    assert text.count("| ours | 1 |") == 2
    assert "particles only" not in text
    compare.write_markdown({**report, "shape": "elongated"}, tmp_path / "e.md")
    assert "(elongated particles only)" in (tmp_path / "e.md").read_text().splitlines()[0]


def test_markdown_says_when_the_peers_timings_were_reused(compare, tmp_path):
    """A report whose peer rows come from an earlier run says so, with when;
    one measured in the run says nothing of the kind."""
    metrics = dict.fromkeys(compare.METRICS, 0.5)
    timing = {"wall_seconds_median": 9.0, "wall_seconds_mean": 9.0,
              "cpu_seconds_median": 9.0, "cpu_seconds_mean": 9.0}
    rows = [{"stem": "a", "seconds": 9.0, "reused": True,
             "predicted_at": "2026-12-04 14:20:01 +0000"},
            {"stem": "b", "seconds": 9.0, "reused": True,
             "predicted_at": "2026-12-04 14:14:30 +0000"},
            {"stem": "c", "seconds": 9.0, "predicted_at": "2026-12-04 15:00:00 +0000"}]
    peer = {"method": "peer", "status": "ok", "n_images": 3, "mean": metrics, **timing,
            "reused": compare.reuse_summary(rows)}
    report = {"split": "test", "date": "now", "methods": [peer],
              "machine": {"cpu": "x", "cpu_count": 2, "load_average_1_5_15": [0, 0, 0]},
              "notes": ["kept"]}
    compare.write_markdown(report, tmp_path / "c.md")
    text = (tmp_path / "c.md").read_text()
    assert "- kept" in text
    assert ("`peer`: the labels and timings of 2 of its 3 images come from an earlier run "
            "on this machine (`benchmarks/.peer-work`, predicted 2026-12-04 14:14:30 +0000 to "
            "2026-12-04 14:20:01 +0000)") in text
    assert report["notes"] == ["kept"]  # the report itself is not changed
    peer["reused"] = compare.reuse_summary(rows[2:])
    compare.write_markdown(report, tmp_path / "d.md")
    assert "earlier run" not in (tmp_path / "d.md").read_text()


def test_rounds_deal_the_images_and_merge_back(compare, tmp_path):
    """``--rounds``: the images dealt into interleaved slices, and each
    method's entries of the rounds merged into one in the split's order,
    with means and timings of all rows and the reused peer rows counted."""
    stems = ["a", "b", "c", "d", "e"]
    parts = compare.interleaved_slices(stems, 2)
    assert parts == [["a", "c", "e"], ["b", "d"]]
    assert compare.interleaved_slices(stems, 1) == [stems]
    with pytest.raises(ValueError, match="rounds"):
        compare.interleaved_slices(stems, 0)

    def entry(part, ap50, seconds, reused=None):
        rows = [{"stem": st, **dict.fromkeys(compare.METRICS, 0.0), "ap50": ap50,
                 "seconds": seconds, "cpu_seconds": 2 * seconds} for st in part]
        e = compare._method_entry("m", {"per_image": rows, "mean": compare._means(rows)},
                                  total_seconds=10.0)
        return {**e, "reused": reused} if reused is not False else e

    a = entry(parts[0], 1.0, 1.0, {"images": 3, "predicted_from": "t2", "predicted_to": "t3"})
    b = entry(parts[1], 0.0, 4.0, {"images": 1, "predicted_from": "t1", "predicted_to": "t1"})
    m = compare.merge_entries([a, b], stems)
    assert [r["stem"] for r in m["per_image"]] == stems
    assert m["n_images"] == 5 and m["rounds"] == 2 and m["total_seconds"] == 20.0
    assert m["mean"]["ap50"] == pytest.approx(3 / 5)
    assert m["wall_seconds_median"] == 1.0 and m["cpu_seconds_mean"] == pytest.approx(2 * 11 / 5)
    assert m["reused"] == {"images": 4, "predicted_from": "t1", "predicted_to": "t3"}
    assert compare.merge_entries([a], stems) is a
    assert compare.merge_entries([entry(parts[0], 1.0, 1.0, None),
                                  entry(parts[1], 1.0, 1.0, None)], stems)["reused"] is None
    assert "reused" not in compare.merge_entries([entry(parts[0], 1.0, 1.0, False),
                                                  entry(parts[1], 1.0, 1.0, False)], stems)
    gone = {"method": "m", "status": "failed", "reason": "round 2"}
    assert compare.merge_entries([a, gone], stems) is gone
    # the report says it ran in rounds
    report = {"split": "test", "date": "now", "methods": [m], "rounds": 2,
              "machine": {"cpu": "x", "cpu_count": 2, "load_average_1_5_15": [0, 0, 0]}}
    compare.write_markdown(report, tmp_path / "r.md")
    assert "ran in 2 rounds, each on one image in 2 of the list" in (tmp_path / "r.md").read_text()


@pytest.fixture(scope="module")
def val_views(load_script):
    return load_script("benchmarks/bench_val_views.py")


def test_views_move_the_labels_with_the_pixels(val_views):
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 10:30] = 1
    labels[20:38, 45:55] = 2
    # each particle its own grey, so a view that moved only one of the two shows
    rgb = np.stack([(labels * 100 + rng.integers(0, 20, labels.shape)).astype(np.uint8)] * 3, -1)
    for name in val_views.VIEWS:
        x, gt = val_views.view(name, rgb, labels)
        assert x.shape[:2] == gt.shape and x.dtype == np.uint8
        for k in (1, 2):
            # the particle's pixels are still the bright ones of its grey
            grey = x[..., 0][gt == k].astype(float)
            assert grey.size == (labels == k).sum()
            assert abs(grey.mean() - (100 * k + 9.5)) < 4, (name, k)
    x, gt = val_views.view("rot90", rgb, labels)
    assert gt.shape == (60, 40)
    x, gt = val_views.view("jpeg95", rgb, labels)
    assert gt is labels and 0 < np.abs(x.astype(int) - rgb).mean() < 3
    with pytest.raises(ValueError, match="view must be one of"):
        val_views.view("mirror", rgb, labels)


def test_view_summary_pairs_the_images(val_views):
    def m(s):
        return {"ap": s, "ap50": s, "ap75": s, "mean_iou": s, "aji_plus": s}

    rows = []
    for i, stem in enumerate("abcd"):
        for v in val_views.VIEWS:
            # the candidate is better by 0.05 on every view but loses one view of "a" badly
            cand = 0.2 if (stem == "a" and v == "plain") else 0.55 + 0.1 * i
            rows.append({"stem": stem, "view": v, "baseline": m(0.5 + 0.1 * i),
                         "candidate": m(cand)})
    s = val_views.summarise(rows, ("baseline", "candidate"))
    assert s["views"]["plain"]["baseline"]["score"] == pytest.approx(0.65)
    plain = s["views"]["plain"]["candidate"]["score"]
    assert plain == pytest.approx((0.2 + 0.65 + 0.75 + 0.85) / 4)
    assert s["per_image_mean_score"]["candidate"][0] == pytest.approx((0.2 + 4 * 0.55) / 5)
    assert s["difference"]["mean"] == pytest.approx((3 * 0.05 - 0.02) / 4)
    assert 0.5 < s["difference"]["candidate_win_rate"] < 1.0


@pytest.fixture(scope="module")
def embedding_axes(load_script):
    return load_script("benchmarks/bench_embedding_axes.py")


def test_axis_spread_tells_the_axes_apart(embedding_axes):
    lab = np.zeros((40, 60), int)
    lab[5:25, 10:40] = 1     # 20 x 30 px
    lab[30:38, 45:55] = 2    # below min_area with 100
    lab[30:36, 2:6] = 3      # 24 px: left out
    yy, xx = np.mgrid[:40, :60].astype(float)
    cy, cx = 14.5, 24.5
    # x offsets bring every pixel to the centre column, y offsets half way
    off = np.stack([(cy - yy) / 2 / 16.0, (cx - xx) / 16.0])
    s = embedding_axes.axis_spread(off, lab, coord_scale=16.0, min_area=100)
    assert s.shape == (1, 2)
    assert s[0, 0] == pytest.approx(0.5, abs=0.06) and s[0, 1] == pytest.approx(0.0, abs=1e-6)
    # turning the particle and its offsets a quarter turn swaps the axes
    turned = np.stack([np.rot90(-off[1]), np.rot90(off[0])])
    t = embedding_axes.axis_spread(turned, np.rot90(lab), coord_scale=16.0, min_area=100)
    assert t[0, 0] == pytest.approx(0.0, abs=1e-6) and t[0, 1] == pytest.approx(0.5, abs=0.06)
    assert embedding_axes.axis_spread(off, np.zeros_like(lab), coord_scale=16.0).shape == (0, 2)


def test_turn_rods_rules_take_the_turned_score_only_where_they_turn(load_script):
    bench = load_script("benchmarks/bench_turn_rods.py")
    rows = [{"plain": 0.5, "turned": 0.9, "along_x": 0.9, "elongation": 3.0},  # flat rods
            {"plain": 0.8, "turned": 0.6, "along_x": 0.2, "elongation": 3.0},  # upright rods
            {"plain": 0.9, "turned": 0.7, "along_x": 1.0, "elongation": 1.1},  # flat discs
            {"plain": 0.0, "turned": 0.0, "along_x": float("nan"),
             "elongation": float("nan")}]  # nothing found
    out = bench.score_rules({"s": rows}, [(0.6, 1.3), (0.6, 1.0), (1.0, 1.0)])
    assert out[0]["s"] == {"score": pytest.approx((0.9 + 0.8 + 0.9 + 0.0) / 4), "turned": 1}
    assert out[1]["s"] == {"score": pytest.approx((0.9 + 0.8 + 0.7 + 0.0) / 4), "turned": 2}
    assert out[2]["s"]["turned"] == 1  # along x 0.9 < 1.0; the discs lie along x whole


def test_specialist_rules_take_the_surer_specialist_only_where_they_ask(load_script):
    bench = load_script("benchmarks/bench_specialist.py")

    def net(ap50, conf, n=1, elong=1.0):
        return {"ap": ap50, "ap50": ap50, "ap75": ap50, "mean_iou": ap50, "aji_plus": ap50,
                "confidence": conf, "n": n, "elongation": elong}

    rows = [  # a sparse image the specialist gets right, a dense rods image, a dense compact one
        {"stem": "a", "view": "plain", "main": net(0.0, 0.5, n=1), "specialist": net(1.0, 0.9)},
        {"stem": "b", "view": "plain", "main": net(0.5, 0.5, n=30, elong=4.0),
         "specialist": net(0.7, 0.6, n=30)},
        {"stem": "c", "view": "plain", "main": net(0.9, 0.5, n=40), "specialist": net(0.1, 0.8)},
    ]
    rules = {(r["max_particles"], r["min_elongation"]): r for r in bench.score_rules(rows)}
    assert set(rules) == {(m, e) for m in bench.MAX_PARTICLES for e in bench.MIN_ELONGATION}
    assert rules[(0, None)]["taken"] == 0 and rules[(0, None)]["difference"] == 0.0
    assert rules[(1, None)]["taken"] == 1
    assert rules[(1, None)]["mean"]["score"] == pytest.approx((1.0 + 0.5 + 0.9) / 3)
    assert rules[(1, 3.0)]["taken"] == 2
    assert rules[(1, 3.0)]["difference"] == pytest.approx((1.0 + 0.2) / 3)
    assert rules[(20, None)]["taken"] == 1  # the dense images are not asked
    # an unsure specialist is never taken, whatever the rule
    rows[0]["specialist"]["confidence"] = 0.4
    assert bench.score_rules(rows)[0]["taken"] == 0
    assert max(r["taken"] for r in bench.score_rules(rows)) == 1
    # a take margin favours the specialist by that much: 0.4 + 0.2 > 0.5
    by_margin = {r["margin"]: r for r in bench.score_rules(rows, margins=(0.0, 0.05, 0.2))
                 if (r["max_particles"], r["min_elongation"], r["max_confidence"])
                 == (1, None, None)}
    assert [by_margin[m]["taken"] for m in (0.0, 0.05, 0.2)] == [0, 0, 1]
    assert by_margin[0.2]["difference"] == pytest.approx(1.0 / 3)


def test_specialist_rules_rescored_from_an_earlier_result(load_script, tmp_path, capsys):
    bench = load_script("benchmarks/bench_specialist.py")
    net = {"ap": 0.5, "ap50": 0.5, "ap75": 0.5, "mean_iou": 0.5, "aji_plus": 0.5,
           "confidence": 0.7, "n": 0, "elongation": None}
    rows = [{"stem": "a", "view": "plain", "main": net,
             "specialist": dict(net, ap50=1.0, aji_plus=1.0, confidence=0.69)}]
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"split": "val", "rows": rows, "networks_alone": {}}))
    out = tmp_path / "rescored.json"
    assert bench.main(["--rows-from", str(earlier), "--margins", "0,0.02",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["rows"] == rows and res["rows_from"] == str(earlier)
    taken = {r["margin"]: r["taken"] for r in res["rules"] if r["max_particles"] == 0
             and r["min_elongation"] is None and r["max_confidence"] is None}
    assert taken == {0.0: 0, 0.02: 1}
    # bad input: a clear message and exit 2, no traceback
    assert bench.main(["--rows-from", str(tmp_path / "missing.json"),
                       "--out", str(tmp_path / "x.json")]) == 2
    assert "not a bench_specialist result" in capsys.readouterr().err
    assert bench.main(["--rows-from", str(earlier)]) == 2  # no --out: nothing overwritten
    assert "needs --out" in capsys.readouterr().err
    assert bench.main(["--rows-from", str(earlier), "--margins", "x"]) == 2
    assert bench.main([]) == 2
    assert "--specialist is required" in capsys.readouterr().err


def test_sparse_scale_rules_play_the_backend_choice(load_script):
    bench = load_script("benchmarks/bench_sparse_scales.py")
    # the larger factors are tried only on images sparse enough for the rule
    assert bench.tried_factors(((2.0, 3.2), 5), 5)[-2:] == [2.0, 3.2]
    assert 2.0 not in bench.tried_factors(((2.0, 3.2), 5), 6)
    assert bench.tried_factors(bench.RULES["shipped"], 0) == [0.8, 1.0, 1.25, 0.64]
    # the scale found wins ties; a later factor must be strictly surer
    conf = {1.0: 0.9, 0.8: 0.9, 1.25: 0.95, 0.64: 0.97, 2.0: 0.97}
    assert bench.choose(conf, [0.8, 1.0, 1.25]) == 1.25
    assert bench.choose(conf, [0.8, 1.0, 1.25, 0.64, 2.0]) == 0.64
    assert bench.choose({1.0: -1.0, 0.8: -1.0}, [0.8, 1.0]) == 1.0

    def rules(**changed):  # every rule scores 0.5 at the scale found, except those named
        out = {n: {k: 0.5 for k in bench.METRICS} | {"factor": 1.0, "seconds": 1.0}
               for n in bench.RULES}
        for n, v in changed.items():
            out[n] = {k: v for k in bench.METRICS} | {"factor": 2.0, "seconds": 2.0}
        return out

    rows = [{"stem": "a", "rules": rules(**{"+2 @20": 1.0})},   # fixed by the closer look
            {"stem": "a", "rules": rules(**{"+2 @20": 0.9})},   # a second view of it
            {"stem": "b", "rules": rules(**{"+2 @20": 0.25})},  # spoiled by it
            {"stem": "c", "rules": rules()}]
    out = bench.summarise_rules(rows)
    assert out["shipped"]["difference"] == 0.0 and out["shipped"]["views_changed"] == 0
    got = out["+2 @20"]
    # per image, the mean over its views: a +0.45, b -0.25, c 0
    assert got["difference"] == pytest.approx((0.45 - 0.25) / 3)
    assert (got["images_better"], got["images_worse"], got["views_changed"]) == (1, 1, 3)
    assert got["ap50"] == pytest.approx((1.0 + 0.9 + 0.25 + 0.5) / 4)
    assert got["median_seconds"] == 2.0


def test_outline_threshold_summary_compares_each_threshold_with_the_first(load_script):
    bench = load_script("benchmarks/bench_outline_threshold.py")
    # 4 images x 2 thresholds x (ap, ap50, mean_iou, aji_plus)
    v = np.zeros((4, 2, 4))
    v[:, :, 1] = 1.0                              # AP50 1 everywhere
    v[:, 0, 3] = [0.80, 0.80, 0.90, 0.70]         # AJI+ at the first threshold
    v[:, 1, 3] = [0.84, 0.82, 0.90, 0.66]         # at the second: +0.04, +0.02, 0, -0.04
    s = bench.summarise(v, [0.5, 0.4])
    assert list(s) == ["0.5", "0.4"]
    assert s["0.5"]["vs_first"] == 0 and s["0.5"]["win_rate"] == 0.5
    assert s["0.4"]["aji_plus"] == pytest.approx(0.805)
    assert s["0.4"]["score"] == pytest.approx((1 + 0.805) / 2)
    assert s["0.4"]["vs_first"] == pytest.approx(0.0025)   # mean of +0.02, +0.01, 0, -0.02
    assert (s["0.4"]["better"], s["0.4"]["worse"]) == (2, 1)
    assert bench.main(["--thresholds", "0.5", "1.5", "--data", "/nonexistent"]) == 2


def test_rescorer_kinds_are_fitted_per_fold_and_compared_with_the_first(load_script):
    bench = load_script("benchmarks/bench_rescorer_kind.py")
    from imageextract.segment.bpartis.rescore import FEATURES

    rng = np.random.default_rng(0)
    props, stems = [], [f"img{i}" for i in range(12)]
    for stem in stems:  # real proposals (matched) have a high first feature
        matched = np.r_[np.ones(3), np.zeros(2)]
        x = rng.normal(size=(5, len(FEATURES)))
        x[:, 0] += 3 * matched
        props.append({"stem": stem, "truth": np.repeat(np.r_[1, 2, 3, 0, 0][:, None], 4, 1),
                      "labels": np.repeat(np.arange(1, 6)[:, None], 4, 1),
                      "features": x, "matched": matched, "uncertainty": np.zeros(5)})
    names = ["logistic-quadratic@0.7", "logistic-quadratic@0.4"]
    r = bench.fold_rescorers(props, names, 2, uncertainty_threshold=None,
                             cluster={"min_score": 0.6}, inputs={"mc_samples": 8})
    assert sorted(r) == sorted((n, f) for n in names for f in (0, 1))
    a, b = r[names[0], 0], r[names[1], 0]
    assert (a.threshold, b.threshold) == (0.7, 0.4)
    assert a.coef is b.coef  # one fit per kind and fold, thresholds on top
    assert not np.allclose(r[names[0], 0].coef, r[names[0], 1].coef)  # other images
    assert a.cluster == {"min_score": 0.6} and a.inputs == {"mc_samples": 8}
    x = props[0]["features"]
    assert (a.predict_proba(x)[:3] > 0.5).all() and (a.predict_proba(x)[3:] < 0.5).all()
    assert bench.main(["--kinds", "mlp", "--data", "/nonexistent"]) == 2
    assert bench.main(["--kinds", "mlp", "forest@0.5", "--data", "/nonexistent"]) == 2
    assert bench.main(["--kinds", "mlp", "mlp", "--data", "/nonexistent"]) == 2
    assert bench.main(["--kinds", "mlp", "mlp@0.5", "--data", "/nonexistent"]) == 2  # no data


def test_scale_coverage_replay_plays_the_backend_choice(load_script):
    bench = load_script("benchmarks/bench_scale_coverage.py")

    def factor(conf, covered, score, n=3):
        return {"confidence": conf, "covered": covered, "n": n, "ap50": score, "aji_plus": score}

    # a sure corner at 0.8 against most of the foreground at 1.0
    row = {"stem": "a", "elongated": True, "tried": [0.8, 1.0], "grown": None,
           "backend": {"ap50": 0.2, "aji_plus": 0.2},
           "factors": {"0.8": factor(0.95, 0.1, 0.2), "1.0": factor(0.85, 0.9, 0.8)}}
    assert bench.replay(row, 0.0) == "0.8"
    assert bench.replay(row, 0.05) == "0.8"   # 0.955 against 0.895
    assert bench.replay(row, 0.3) == "1.0"    # 0.98 against 1.12
    # ties keep the scale found; a factor not tried is never chosen
    tie = dict(row, factors={"0.8": factor(0.9, 0.5, 0.2), "1.0": factor(0.9, 0.5, 0.8),
                             "1.25": factor(0.99, 1.0, 1.0)})
    assert bench.replay(tie, 0.5) == "1.0"
    # the growth rule overrides the judge, as in the backend
    assert bench.replay(dict(row, grown=0.8), 1.0) == "0.8"
    compact = dict(row, stem="b", elongated=False,
                   factors={"0.8": factor(0.95, 0.9, 0.9), "1.0": factor(0.9, 0.95, 0.5)})
    out = bench.summarize_factors([row, compact], (0.3,))
    assert out["elongated"]["replayed_confidence"] == pytest.approx(0.2)
    assert out["elongated"]["weights"]["0.3"]["difference"] == pytest.approx(0.6)
    assert out["compact"]["weights"]["0.3"]["changed"] == 0   # 1.22 against 1.185
    assert out["all"]["weights"]["0.3"]["difference"] == pytest.approx(0.3)
    assert out["all"]["best_factor"] == pytest.approx(0.85)

    models = ["base", "cand"]
    rows = [{"stem": "a", "elongated": True, "base": {"ap50": 0.5, "aji_plus": 0.3},
             "cand": {"ap50": 0.7, "aji_plus": 0.5}},
            {"stem": "b", "elongated": False, "base": {"ap50": 1.0, "aji_plus": 0.8},
             "cand": {"ap50": 1.0, "aji_plus": 0.8}}]
    got = bench.summarize_models(rows, models)
    assert got["all"]["cand"]["difference"] == pytest.approx(0.1)
    assert got["elongated"]["cand"]["aji_plus"] == pytest.approx(0.5)
    assert got["compact"]["cand"]["changed"] == 0


def test_join_fragments_summary_pairs_images_per_set_and_shape(load_script):
    bench = load_script("benchmarks/bench_join_fragments.py")
    n = '{}'

    def row(s, key, rod, off, on, joined):
        return {"set": s, "key": key, "rod": rod, "off": off, n: on, "changed": {n: joined}}

    rows = [row("val-views", "val/a/plain", True, 0.2, 0.6, 2),
            row("val-views", "val/a/rot90", True, 0.4, 0.4, 0),   # image a: 0.3 -> 0.5
            row("val-views", "val/b/plain", False, 0.9, 0.9, 0),
            row("test", "test/c/plain", False, 0.5, 0.4, 1)]
    out = bench.summarize(rows, [n])
    assert set(out) == {"val-views", "test"}
    v = out["val-views"]
    assert v["all"]["n_images"] == 2 and v["all"]["n_views"] == 3
    assert v["elongated"]["off"] == pytest.approx(0.3)
    assert v["elongated"][n]["score"] == pytest.approx(0.5)
    assert v["elongated"][n]["changed_views"] == 1
    assert v["all"][n]["difference"]["mean"] == pytest.approx(0.1)  # (0.2 + 0) / 2
    assert v["compact"][n]["difference"]["mean"] == pytest.approx(0.0)
    assert "elongated" not in out["test"]
    assert out["test"]["compact"][n]["difference"]["mean"] == pytest.approx(-0.1)
    # refused before anything runs
    for bad in (["--set", "nope"], ["--set", "stretched-x"], ["--set", "stretched--1"],
                ["--set", "val-views", "--options", "[1]"],
                ["--set", "val-views", "--options", '{"max_angle": 95}'],
                ["--set", "val-views", "--step", "whole_rods", "--options", '{"gap": 2}'],
                ["--set", "val-views", "--step", "scale_bars", "--options", '{"min_flat": 2}'],
                ["--set", "val-views", "--step", "scale_bars", "--options", '{"gap": 2}'],
                ["--set", "val-views", "--step", "coarse_pass", "--options", '{"factor": 1}']):
        assert bench.main(bad + ["--data", "/nonexistent"]) == 2


def test_scale_merge_keeps_the_merges_and_summarises_against_the_first(load_script):
    import importlib

    bench = load_script("benchmarks/bench_scale_merge.py")
    inference = importlib.import_module("imageextract.segment.bpartis.inference")
    original = inference.merge_scales
    a = np.zeros((4, 8), np.int32)
    a[:, :3] = 1
    b = a.copy()
    b[:, 5:] = 2
    result = {"labels": a, "scores": np.array([0.9]), "uncertainty": np.zeros(1), "scale": 1.0,
              "mi": np.zeros((4, 8))}
    other = {"labels": b, "scores": np.array([0.95, 0.93]), "uncertainty": np.zeros(2)}
    store = []
    with bench.merges_kept(store):
        merged = inference.merge_scales(result, [other], min_score=0.9)
    assert inference.merge_scales is original   # put back
    assert merged["merged"] == 1                 # merged as usual
    kept, others = store[0]
    assert set(kept) == {"labels", "scores", "uncertainty", "scale"}   # what the replay needs
    assert others[0]["labels"] is b
    with pytest.raises(RuntimeError), bench.merges_kept(store):
        raise RuntimeError("a failing segmentation")
    assert inference.merge_scales is original

    assert bench._parse_grid(["0.95:0.05", "1.01:0.15"]) == ((0.95, 0.05), (1.01, 0.15))
    for bad in ("0.9", "a:b", "0.9:1.0"):
        with pytest.raises(SystemExit, match="grid"):
            bench._parse_grid([bad])

    def row(merged, **settings):
        return {"merged": merged, "settings": {k.replace("_", ":"): {"ap50": v[0], "aji_plus": v[1]}
                                                for k, v in settings.items()}}

    names = ["0.95:0.05", "0.8:0.05"]
    rows = [row(True, **{"0.95_0.05": (1.0, 0.8), "0.8_0.05": (0.9, 0.9)}),   # AP50 for AJI+
            row(True, **{"0.95_0.05": (1.0, 0.8), "0.8_0.05": (1.0, 0.7)}),
            row(False)]                                                       # nothing merged
    got = bench.summarize(rows, names)
    assert got["0.95:0.05"]["score"]["mean"] == 0 and got["0.95:0.05"]["better"] == 0
    assert got["0.8:0.05"]["ap50"] == pytest.approx(-0.1 / 3)
    assert got["0.8:0.05"]["aji_plus"] == pytest.approx(0.0)
    assert got["0.8:0.05"]["score"]["mean"] == pytest.approx(-0.05 / 3)   # 0.9 = 0.9, 0.85 < 0.9
    assert (got["0.8:0.05"]["better"], got["0.8:0.05"]["worse"]) == (0, 1)


def test_outline_match_compares_the_outlines_of_the_particles_both_find(load_script):
    bench = load_script("benchmarks/bench_outline_match.py")
    assert [bench.scale_bin(s) for s in (0.1, 0.35, 0.69, 0.99, 1.0, 2.5)] == [
        "0-0.35", "0.35-0.5", "0.5-0.7", "0.7-1", ">=1", ">=1"]

    gt = np.zeros((20, 40), np.int32)
    gt[2:12, 2:12] = 1       # 100 px
    gt[2:12, 20:30] = 2      # 100 px
    gt[14:18, 34:38] = 3     # only the peer finds it
    ours = np.zeros_like(gt)
    ours[2:12, 2:11] = 4     # 90 px inside particle 1: IoU 0.9
    ours[2:12, 20:30] = 5    # exact
    peer = gt.copy()         # exact everywhere
    row = bench.image_row(gt, {"ours": ours, "peer": peer})
    assert row["n_true"] == 3 and row["n_both"] == 2
    assert row["ours"]["n_matched"] == 2 and row["peer"]["n_matched"] == 3
    assert row["ours"]["iou"] == pytest.approx(0.95)      # the third is left out
    assert row["peer"]["iou"] == pytest.approx(1.0)
    assert row["ours"]["area_ratio"] == pytest.approx(0.95)   # median of 0.9 and 1
    assert row["peer"]["aji_plus"] == pytest.approx(1.0)
    assert row["ours"]["aji_plus"] == pytest.approx(190 / 216)

    none = bench.image_row(gt, {"ours": np.zeros_like(gt), "peer": peer})
    assert none["n_both"] == 0 and none["ours"]["iou"] is None

    rows = [{"scale": 0.3} | row, {"scale": 0.3} | row, {"scale": 1.5} | none]
    got = bench.summarise(rows)
    assert got["all"]["n_images"] == 2 and got["all"]["n_particles"] == 4
    assert got["all"]["iou_difference"]["mean"] == pytest.approx(-0.05)
    assert got["all"]["iou_difference"]["sum"] == pytest.approx(-0.1)
    assert got["by_scale"]["0-0.35"]["n_images"] == 2
    assert got["by_scale"][">=1"] == {"n_images": 0}   # no particle found by both
    # the AJI+ parts count every image: ours misses particle 3 (16 of 216 px)
    # and draws particle 1 10 px short; with nothing found, all is missed
    assert row["ours"]["aji_parts"]["missed"] == pytest.approx(16 / 216)
    assert row["ours"]["aji_parts"]["outline"] == pytest.approx(10 / 216)
    parts = got["aji_parts"]
    assert parts["all"]["n_images"] == 3
    assert parts["all"]["ours"]["missed"] == pytest.approx((2 * 16 / 216 + 1) / 3)
    assert parts["all"]["peer"]["aji_plus"] == pytest.approx(1.0)
    assert parts["by_scale"][">=1"]["ours"]["aji_plus"] == 0.0
    assert parts["by_scale"]["0.5-0.7"] == {"n_images": 0}


def test_bandwidth_counts_the_neighbours_the_clustering_cannot_separate(load_script):
    bench = load_script("benchmarks/bench_bandwidth.py")
    lab = np.zeros((40, 80), np.int32)
    lab[5:15, 5:15] = 1          # centroid (9.5, 9.5)
    lab[5:15, 20:30] = 2         # 15 px to the right of 1
    lab[28:38, 60:70] = 3        # far from both
    # sigma 4 px along y and 12 px along x everywhere (coord_scale 8)
    sig = np.array([4.0, 12.0]) / 8.0
    log_s = np.log(1.0 / (2.0 * sig ** 2))[:, None, None] * np.ones((2, 40, 80))
    ids, sigma = bench.particle_bandwidths(log_s, lab, coord_scale=8.0)
    assert ids.tolist() == [1, 2, 3] and np.allclose(sigma, [[4.0, 12.0]] * 3)
    row = bench.image_row(log_s, lab, coord_scale=8.0)
    # (15 / 12)^2 = 1.56 > 2 ln 2 = 1.39: separable along x at these bandwidths
    assert row["n"] == 3 and row["n_within_reach"] == 0
    wide = log_s.copy()
    wide[1] -= np.log(4.0)       # s_x / 4: sigma x 24 px
    row = bench.image_row(wide, lab, coord_scale=8.0)   # (15 / 24)^2 < 2 ln 2: 1 and 2 merge
    assert row["n_within_reach"] == 2 and row["sigma_x"] == [24.0] * 3
    # the same pair 15 px apart along y, where sigma is 4 px, stays apart
    assert bench.within_reach(np.array([[0.0, 0.0], [15.0, 0.0]]),
                              np.array([[4.0, 24.0]] * 2)).tolist() == [False, False]
    assert bench.within_reach(np.zeros((1, 2)), np.ones((1, 2))).tolist() == [False]
    empty = bench.image_row(log_s, np.zeros_like(lab), coord_scale=8.0)
    assert empty["n"] == 0

    rows = [{"stem": "a", "shape": "compact"} | bench.image_row(wide, lab, coord_scale=8.0),
            {"stem": "b", "shape": "elongated"} | bench.image_row(log_s, lab, coord_scale=8.0),
            {"stem": "c", "shape": "compact"} | empty]
    got = bench.summarise(rows)
    assert got["all"]["n_images"] == 2 and got["all"]["n_particles"] == 6
    assert got["all"]["share_within_reach"] == pytest.approx(2 / 6)
    assert got["all"]["crowded_images"] == [{"stem": "a", "share": 0.667}]
    assert got["compact"]["sigma_x_px_p10_50_90"] == [24.0, 24.0, 24.0]
    assert got["elongated"]["crowded_images"] == []
