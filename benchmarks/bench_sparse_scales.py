"""Larger working scales for sparse images: does looking closer help when the
size model reads the particles too large?

    python benchmarks/bench_sparse_scales.py --split train-fit --oof-folds 5 \\
        --out benchmarks/results/sparse_scales_train_fit.json
    python benchmarks/bench_sparse_scales.py --split val \\
        --out benchmarks/results/sparse_scales_val.json
    python benchmarks/bench_sparse_scales.py --split test --views plain \\
        --out benchmarks/results/sparse_scales_test.json

Why: the ``bpartis`` backend works at the scale where the size model says
the particles are 48 px across, and also tries 0.8 and 1.25 times that scale
(0.64 as well where it keeps at most 20 particles); the result whose
particles it is surest of is kept (``scale_confidence``).  When the size model
reads particles five times too large (EMPS test fc2851e6d3: 345 px read for
101 px particles), none of those scales is near the right one, and a whole
image of small particles comes back as one or two blobs.  Such images are
sparse at the scale found, and a closer look is cheap there: the image was
shrunk.  This benchmark scores rules that add larger factors (2 and 3.2) for
sparse images.

The size model was fitted on ``train-fit`` and ``val``, so on those images
it is far more accurate than on new ones (test: 11 of 99 estimates off by
more than 1.8x).  With ``--oof-folds K`` the size model is refitted K times
(the shipped recipe: ridge on pooled encoder features of every image at
three random scales, the shipped alpha), each time without one fold of
``train-fit`` images, and each image is read by the model that did not see
it: an honest stand-in for new images on which to choose a rule.

Every image (view) is segmented once at each factor it could need, with
the shipped rescorer and without the outline refiner and the specialist:
the shipped ones (:data:`SHIPPED_BASE`, :data:`SHIPPED_SPARSE`) and the
larger ones (:data:`LARGE`), these only where the scale found keeps at most
20 particles and shows the whole image at most :data:`SMALL_PX` long, and
never beyond native resolution (where a closer look is cheap; elsewhere
every rule plays the shipped one, and the view is marked ``skipped``;
the rules are played with the same limits); each rule of :data:`RULES` is then
played offline exactly as :func:`~imageextract.segment.bpartis.inference.segment_image`
plays it (surest scale, scale merge, outline refiner) and scored.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_val_views import (METRICS, VIEWS, paired_difference, per_image, score,  # noqa: E402
                             view)

#: The rule shipped before the closer look ("+2,3.2 @5", shipped 2026-12-03):
#: these factors of the scale found everywhere, and SHIPPED_SPARSE's where the
#: scale found keeps at most its number of particles.
SHIPPED_BASE = (0.8, 1.0, 1.25)
SHIPPED_SPARSE = ((0.64,), 20)
#: The larger factors the rules add.
LARGE = (2.0, 3.2)
#: The larger factors are run only where the image at the scale found is at
#: most this long (px: it was shrunk well below the canvas the network
#: works on), and never beyond native resolution.
SMALL_PX = 256
#: Rules: name -> (larger factors, tried where the scale found keeps at most
#: this many particles[, growth limit of the larger factors, see
#: :func:`~imageextract.segment.bpartis.inference.grown_factor`]); on top of
#: the shipped rule.
RULES = {
    "shipped": ((), 0),
    "+2 @20": ((2.0,), 20),
    "+2,3.2 @20": ((2.0, 3.2), 20),
    "+2 @5": ((2.0,), 5),
    "+2,3.2 @5": ((2.0, 3.2), 5),
    "+2,3.2 @2": ((2.0, 3.2), 2),
    "+2,3.2 @5 grow 6/4x": ((2.0, 3.2), 5, {"min_particles": 6, "min_ratio": 4}),
    "+2,3.2 @5 grow 4/3x": ((2.0, 3.2), 5, {"min_particles": 4, "min_ratio": 3}),
}


assert all(r[1] <= SHIPPED_SPARSE[1] for r in RULES.values())


def tried_factors(rule: tuple, n_found: int) -> list[float]:
    """The factors ``segment_image`` tries under ``rule`` (see :data:`RULES`)
    when the scale found keeps ``n_found`` particles, in the order it tries
    them (:func:`~imageextract.segment.bpartis.inference.sparse_scale_factors`
    with two rules: the shipped 0.64, then the larger factors).

    >>> tried_factors(((2.0,), 5), 3)
    [0.8, 1.0, 1.25, 0.64, 2.0]
    >>> tried_factors(((2.0,), 5), 6)
    [0.8, 1.0, 1.25, 0.64]
    >>> tried_factors(((2.0,), 5), 21)
    [0.8, 1.0, 1.25]
    """
    from imageextract.segment.bpartis.inference import sparse_scale_factors

    large, max_n = rule[:2]
    rules = [{"factors": SHIPPED_SPARSE[0], "max_particles": SHIPPED_SPARSE[1]}]
    if large:
        rules.append({"factors": large, "max_particles": max_n})
    # the side and native-resolution limits are applied by run_image
    return [*SHIPPED_BASE, *sparse_scale_factors(rules, n_found=n_found, scale=0.0,
                                                 side_px=0.0, exclude=SHIPPED_BASE)]


def choose(conf: dict[float, float], order: list[float]) -> float:
    """The factor ``segment_image`` keeps: the scale found (1.0) unless a
    later factor's confidence is strictly higher than the best so far.

    >>> choose({1.0: 0.5, 0.8: 0.7, 1.25: 0.7}, [0.8, 1.0, 1.25])
    0.8
    """
    best, kept = conf[1.0], 1.0
    for f in order:
        if f != 1.0 and conf[f] > best:
            best, kept = conf[f], f
    return kept


def fold_of(stem: str, k: int) -> int:
    """A fixed fold in ``range(k)`` from the stem's hash."""
    return int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16) % k


def oof_size_models(bp, items: list[tuple], val: list[tuple], k: int) -> dict:
    """The backend ``bp``'s size model refitted ``k`` times (its probes and
    alpha), each time on the samples of ``items`` ``[(stem, rgb, labels)]``
    outside one fold (:func:`fold_of`) plus all of ``val``: fold -> model.
    Each image is then read by the model that did not see it."""
    from imageextract.segment.bpartis.size import SizeModel, size_samples

    probes = bp.size_model.probes
    x, y, st = size_samples(bp.net, items, np.random.default_rng(0), probes=probes)
    xv, yv, _ = size_samples(bp.net, val, np.random.default_rng(1), probes=probes)
    folds = np.array([fold_of(s, k) for s in st])
    return {i: SizeModel.fit(np.concatenate([x[folds != i], xv]),
                             np.concatenate([y[folds != i], yv]),
                             alpha=bp.size_model.alpha, probes=probes) for i in range(k)}


def run_image(bp, rgb, gt, size_model) -> dict:
    """Segment one image at every factor and play every rule."""
    from imageextract.evaluation.metrics import all_metrics
    from imageextract.segment.bpartis.inference import (grown_factor, median_diameter,
                                                        merge_scales, scale_confidence)
    from imageextract.segment.bpartis.size import ZOOM_BELOW, estimate_diameter

    h, w = rgb.shape[:2]
    s0 = min(1.0, 512 / max(h, w))
    d = estimate_diameter(bp.net, size_model, rgb, scale=s0, zoom_below=ZOOM_BELOW,
                          device=bp.device)
    lo, hi = bp.scale_limits
    s = float(np.clip(s0 * bp.target_diameter / d, lo, hi))
    d_true = median_diameter(gt)
    row = {"scale_found": s, "scale_true": s0 * bp.target_diameter / d_true
           if np.isfinite(d_true) else None, "shape": [h, w]}
    results, seconds = {}, {}

    def key(f: float) -> float:  # the working scale of factor f, as segment_image rounds it
        return round(float(np.clip(s * f, lo, hi)), 4)

    def at(f: float):
        if key(f) not in results:
            t = time.perf_counter()
            results[key(f)] = bp.segment_rgb(rgb, scale=float(np.clip(s * f, lo, hi)),
                                             outline=None, specialist=None, turn_rods=None)
            seconds[key(f)] = time.perf_counter() - t
        return results[key(f)]

    row["side_px"] = side = max(h, w) * s
    large = [f for f in LARGE if s * f <= 1.0]
    if side > SMALL_PX or not large:
        row["skipped"] = True  # every rule plays the shipped one here
        return row
    n_found = int(at(1.0)["scores"].size)
    row["n_found"] = n_found
    if n_found > SHIPPED_SPARSE[1]:  # no rule asks for more there
        row["skipped"] = True
        return row
    run_f = [*SHIPPED_BASE, *SHIPPED_SPARSE[0], *large]
    conf = {f: scale_confidence(at(f)) for f in run_f}
    row["confidence"] = {str(f): conf[f] for f in run_f}
    row["n"] = {str(f): int(at(f)["scores"].size) for f in run_f}
    # median particle diameter (native px) and the share of the image covered
    row["diameter"] = {str(f): float(median_diameter(at(f)["labels"])) for f in run_f}
    row["coverage"] = {str(f): float(np.mean(at(f)["labels"] > 0)) for f in run_f}
    row["seconds"] = {str(f): seconds[key(f)] for f in run_f}
    row["alone"] = {}
    for f in run_f:  # each scale alone, before the outline refiner
        m = all_metrics(gt, at(f)["labels"])
        row["alone"][str(f)] = {k: float(m[k]) for k in ("ap50", "aji_plus")}
    row["rules"] = {}
    finals: dict[tuple, dict] = {}
    for name, rule in RULES.items():
        order = [f for f in tried_factors(rule, n_found) if f in run_f]
        # factors clipped onto the scale found are not run again
        order = [f for f in order if f == 1.0 or key(f) != round(s, 4)]
        kept = choose(conf, order)
        if len(rule) > 2:  # a growth limit on the larger factors
            grown = grown_factor({f: row["n"][str(f)] for f in [1.0, *order]},
                                 {f: rule[2] for f in rule[0]})
            kept = kept if grown is None else grown
        played = (kept, tuple(sorted(set(order))))
        if played not in finals:
            chosen = out = at(kept)
            if bp.scale_merge is not None:
                others = [at(f) for f in dict.fromkeys(order) if at(f) is not chosen]
                out = merge_scales(chosen, others, **bp.scale_merge)
            lab = out["labels"]
            if bp.outline is not None:
                lab = bp.outline.refine(rgb, lab, out["seed"], scale=out["scale"])
            m = all_metrics(gt, lab)
            finals[played] = {k: float(m[k]) for k in METRICS}
        row["rules"][name] = dict(finals[played], factor=kept,
                                  seconds=sum(row["seconds"][str(f)] for f in
                                              dict.fromkeys([1.0, *order])))
    return row


def summarise_rules(rows: list[dict]) -> dict:
    """Mean metrics of each rule, and each rule against ``shipped`` per image
    (mean over its views), with the paired bootstrap win rate, over the
    views where some rule could differ (``skipped`` rows, where every rule
    plays the shipped one, are left out)."""
    rows = [r for r in rows if not r.get("skipped")]
    if not rows:
        return {}
    stems = [r["stem"] for r in rows]
    per = {n: per_image(stems, [score(r["rules"][n]) for r in rows]) for n in RULES}
    out = {}
    for n in RULES:
        diff = np.subtract(per[n], per["shipped"])
        paired = paired_difference(per["shipped"], per[n])
        out[n] = {k: float(np.mean([r["rules"][n][k] for r in rows])) for k in METRICS}
        out[n]["score"] = float(np.mean([score(r["rules"][n]) for r in rows]))
        out[n]["median_seconds"] = float(np.median([r["rules"][n]["seconds"] for r in rows]))
        out[n]["views_changed"] = int(sum(r["rules"][n]["factor"] != r["rules"]["shipped"]
                                          ["factor"] for r in rows))
        out[n]["difference"] = paired["mean"]
        out[n]["standard_error"] = paired["standard_error"]
        out[n]["win_rate"] = paired["candidate_win_rate"]
        out[n]["images_better"] = int((diff > 1e-9).sum())
        out[n]["images_worse"] = int((diff < -1e-9).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bpartis-emps")
    ap.add_argument("--split", default="val")
    ap.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS)
    ap.add_argument("--oof-folds", type=int, default=0,
                    help="read each image with a size model refitted without its fold")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "sparse_scales.json"))
    args = ap.parse_args(argv)
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import write_json
    from imageextract.segment.bpartis import BPartIS

    bp = BPartIS(model=args.model, threads=args.threads)
    if bp.max_passes or bp.max_halvings:
        print("this benchmark plays the scale search of max_passes = max_halvings = 0 only",
              file=sys.stderr)
        return 2
    stems = split_stems(args.data, args.split)[:args.limit]
    t0 = time.time()
    models = {}
    if args.oof_folds:
        items = [(s, *load_item(args.data, s)) for s in stems]
        val = [(s, *load_item(args.data, s)) for s in split_stems(args.data, "val")]
        models = oof_size_models(bp, items, val, args.oof_folds)
        del items, val
    rows = []

    def save(partial: bool) -> dict:
        res = {"split": args.split, "n_images": len(stems), "views": args.views,
               "model": args.model, "weights": bp.weights, "oof_folds": args.oof_folds,
               "rules": {n: {"larger_factors": r[0], "max_particles": r[1],
                             **({"growth": r[2]} if len(r) > 2 else {})}
                         for n, r in RULES.items()},
               "small_px": SMALL_PX, "partial": partial,
               "summary": summarise_rules(rows), "rows": rows,
               "total_wall_seconds": round(time.time() - t0, 1)}
        played = [r for r in rows if not r.get("skipped")]
        for n, m in res["summary"].items():  # the other views are unchanged
            m["difference_all_views"] = float(sum(score(r["rules"][n]) -
                                                  score(r["rules"]["shipped"])
                                                  for r in played) / max(len(rows), 1))
        res["views_played"] = len(played)
        errs = [abs(math.log(r["scale_found"] / r["scale_true"])) for r in rows
                if r["scale_true"]]
        res["scale_error"] = {"n": len(errs),
                              "off_by_more_than_1.8x": int(sum(e > math.log(1.8)
                                                               for e in errs)),
                              "median_abs_log": float(np.median(errs)) if errs else None}
        write_json(res, args.out)
        return res

    for i, stem in enumerate(tqdm(stems, desc="images")):
        if i and i % 20 == 0:
            save(partial=True)
        rgb, truth = load_item(args.data, stem)
        size_model = models[fold_of(stem, args.oof_folds)] if models else bp.size_model
        for v in args.views:
            x_img, gt = view(v, rgb, truth)
            row = {"stem": stem, "view": v, **run_image(bp, x_img, gt, size_model)}
            rows.append(row)
    res = save(partial=False)
    print(f"scale found vs truth: {res['scale_error']}; rules played on "
          f"{res['views_played']} of {len(rows)} views")
    for n, m in res["summary"].items():
        print(f"{n:24s} AP {m['ap']:.3f} AP50 {m['ap50']:.3f} AJI+ {m['aji_plus']:.3f} "
              f"score {m['score']:.4f} diff {m['difference']:+.4f} (s.e. "
              f"{m['standard_error']:.4f}, wins {m['win_rate']:.0%}) "
              f"+{m['images_better']}/-{m['images_worse']} changed {m['views_changed']} "
              f"over all views {m['difference_all_views']:+.4f} "
              f"median {m['median_seconds']:.2f} s")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
