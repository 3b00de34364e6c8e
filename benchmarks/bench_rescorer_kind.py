"""Which kind of particle rescorer, judged end to end out of fold?

    python benchmarks/bench_rescorer_kind.py --split train-fit --folds 5 \\
        --out benchmarks/results/rescorer_kind_train_fit.json
    python benchmarks/bench_rescorer_kind.py --kinds logistic-quadratic \\
        logistic-quadratic@0.6 logistic-quadratic@0.8 --out F

Why: the ``bpartis`` rescorer (``inference.rescore``) is fitted on the
network's proposals on ``train-fit`` and its threshold chosen by
cross-validation over those proposals (``rescore_fit.py``), scored at one
working scale without the outline refiner.  The backend as shipped runs it
on up to six scales, keeps the surest and refines the outlines, so that
cross-validation is only a proxy.  Here every image of ``--split`` is
segmented end to end as shipped, once per rescorer kind
(:data:`~imageextract.segment.bpartis.rescore.KINDS`), each time by a
rescorer that did not see it: the proposals are split into ``--folds``
folds by image (``bench_sparse_scales.fold_of``); for each fold every kind
is fitted on the other folds with its threshold chosen by the same inner
cross-validation as ``rescore_fit.py``.  The size model is refitted out of
fold too (``bench_sparse_scales.oof_size_models``), since the shipped one
saw ``train-fit``.  ``--factors`` fits every kind on proposals at those
multiples of the working scale found instead of the scale found alone (the
backend rescores at 0.8 and 1.25 x too).  Scores (mean of AP50 and AJI+)
are paired per image against the first kind, over all images and over the
compact and elongated ones (``is_elongated`` of the ground truth).  A kind written ``KIND@T``
keeps threshold ``T`` in every fold instead of the inner cross-validation's
choice (the cross-validation scores proposals at one scale without the
outline refiner; end to end another threshold may do better).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sparse_scales import fold_of, oof_size_models  # noqa: E402
from bench_val_views import paired_difference, score  # noqa: E402

#: The kinds compared by default (the first is the baseline).
KINDS = ("logistic-quadratic", "mlp")


def parse_kind(name: str) -> tuple[str, float | None]:
    """``"KIND"`` or ``"KIND@T"`` -> (kind, fixed threshold or None).

    >>> parse_kind("mlp"), parse_kind("logistic-quadratic@0.6")
    (('mlp', None), ('logistic-quadratic', 0.6))
    """
    kind, _, t = name.partition("@")
    return kind, (float(t) if t else None)


def fold_rescorers(props: list[dict], kinds, folds: int, *,
                   uncertainty_threshold: float | None, cluster: dict, inputs: dict) -> dict:
    """``{(name, fold): rescorer}`` for each ``name`` in ``kinds``
    (:func:`parse_kind`): each fitted on the proposals of the images outside
    ``fold``, its threshold fixed by the name or chosen by inner
    cross-validation over those images."""
    from imageextract.segment.bpartis.rescore_fit import cross_validate, fit_kind, stack_proposals

    out, fitted = {}, {}
    for f in range(folds):
        train = [p for p in props if fold_of(p["stem"], folds) != f]
        x, y, w = stack_proposals(train)
        for name in kinds:
            kind, best = parse_kind(name)
            if best is None:
                cv = cross_validate(train, uncertainty_threshold=uncertainty_threshold,
                                    kind=kind)
                best = max(cv, key=lambda t: cv[t]["score"])
                print(f"fold {f}: {kind} threshold {best}, inner CV {cv[best]['score']:.4f}",
                      flush=True)
            if kind not in fitted:  # one fit per kind and fold; thresholds vary
                fitted[kind] = fit_kind(kind, x, y, w)
            r = copy.copy(fitted[kind])
            r.threshold, r.cluster, r.inputs = float(best), dict(cluster), dict(inputs)
            out[name, f] = r
        fitted.clear()
    return out


def compare_kinds(rows: list[dict], kinds) -> dict:
    """Mean score per kind, and each later kind paired against the first,
    over all images and the compact and elongated ones.

    >>> rows = [{"elongated": False, "a": {"ap50": 1, "aji_plus": .8},
    ...          "b": {"ap50": 1, "aji_plus": .9}},
    ...         {"elongated": True, "a": {"ap50": .5, "aji_plus": .5},
    ...          "b": {"ap50": .7, "aji_plus": .5}}]
    >>> r = compare_kinds(rows, ("a", "b"))
    >>> round(r["b"]["all"]["difference"], 3), round(r["b"]["elongated"]["difference"], 3)
    (0.075, 0.1)
    """
    groups = {"all": rows, "compact": [r for r in rows if not r["elongated"]],
              "elongated": [r for r in rows if r["elongated"]]}
    out = {}
    for kind in kinds:
        out[kind] = {}
        for g, rr in groups.items():
            s = [score(r[kind]) for r in rr]
            entry = {"images": len(rr), "score": float(np.mean(s)) if s else float("nan")}
            if kind != kinds[0] and rr:
                d = paired_difference([score(r[kinds[0]]) for r in rr], s)
                entry.update(difference=d["mean"], standard_error=d["standard_error"],
                             win_rate=d["candidate_win_rate"])
            out[kind][g] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bpartis-emps")
    ap.add_argument("--split", default="train-fit")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS),
                    help="rescorer kinds (KIND or KIND@THRESHOLD), the first the baseline "
                         f"(default {' '.join(KINDS)})")
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0],
                    help="fit every kind on proposals at these multiples of the working scale "
                         "found (default: 1, as rescore_fit.py)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "rescorer_kind.json"))
    args = ap.parse_args(argv)
    from imageextract.segment.bpartis.rescore import KINDS as ALL_KINDS

    try:
        bad = [k for k in args.kinds if parse_kind(k)[0] not in ALL_KINDS]
    except ValueError:
        bad = args.kinds
    if bad or len(args.kinds) < 2 or len(set(args.kinds)) < len(args.kinds):
        print(f"--kinds needs two or more different KIND or KIND@THRESHOLD, KIND one of "
              f"{list(ALL_KINDS)}; got {args.kinds}", file=sys.stderr)
        return 2
    if args.folds < 2:
        print(f"--folds must be at least 2, got {args.folds}", file=sys.stderr)
        return 2
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import write_json
    from imageextract.evaluation.metrics import all_metrics, is_elongated
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.rescore_fit import collect_proposals

    bp = BPartIS(model=args.model)
    if bp.rescorer is None:
        print(f"{args.model} has no rescorer to compare against", file=sys.stderr)
        return 2
    shipped = bp.rescorer
    stems = split_stems(args.data, args.split)[:args.limit]
    items = [(s, *load_item(args.data, s)) for s in stems]
    t0 = time.time()
    plain = BPartIS(model=args.model, rescore=False)
    props = collect_proposals(plain, items, factors=args.factors)
    t_u = plain.uncertainty_threshold if plain.mc_samples > 1 else None
    rescorers = fold_rescorers(props, args.kinds, args.folds, uncertainty_threshold=t_u,
                               cluster=shipped.cluster, inputs=shipped.inputs)
    val = [(s, *load_item(args.data, s)) for s in split_stems(args.data, "val")]
    sizes = oof_size_models(bp, items, val, args.folds)
    rows = []
    for stem, rgb, gt in tqdm(items, desc="images"):
        f = fold_of(stem, args.folds)
        bp.size_model = sizes[f]
        row = {"stem": stem, "fold": f, "elongated": is_elongated(gt)}
        for kind in args.kinds:
            bp.rescorer = rescorers[kind, f]
            t = time.perf_counter()
            lab = bp.segment_rgb(rgb)["labels"]
            m = all_metrics(gt, lab)
            row[kind] = {k: float(m[k]) for k in ("ap", "ap50", "aji_plus")}
            row[kind]["seconds"] = time.perf_counter() - t
        rows.append(row)
    summary = compare_kinds(rows, tuple(args.kinds))
    res = {"split": args.split, "n_images": len(rows), "model": args.model,
           "weights": bp.weights, "folds": args.folds, "kinds": args.kinds,
           "factors": args.factors,
           "thresholds": {f"{k}/{f}": r.threshold for (k, f), r in rescorers.items()},
           "summary": summary, "rows": rows, "total_wall_seconds": round(time.time() - t0, 1)}
    write_json(res, args.out)
    for kind, groups in summary.items():
        print(kind + ": " + "; ".join(
            f"{g} ({e['images']}) {e['score']:.4f}"
            + (f" {e['difference']:+.4f} (s.e. {e['standard_error']:.4f})"
               if "difference" in e else "") for g, e in groups.items()))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
