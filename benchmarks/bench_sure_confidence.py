"""Skip the other working scales where the scale found is already sure?

    python benchmarks/bench_sure_confidence.py --split train-fit --oof-folds 5 \\
        --out benchmarks/results/sure_confidence_train_fit.json
    python benchmarks/bench_sure_confidence.py --split train-fit --oof-folds 5 \\
        --thresholds 0.98 0.97 0.95 0.93 0.9 --out F

Why: the ``bpartis`` backend segments every image at 0.8, 1 and 1.25 times
the scale the size model found (``scale_factors``) and keeps the surest
result.  ``inference.sure_confidence`` skips 0.8 and 1.25 where the result
at the scale found is already at least that sure (the sparse rules still
run), which saves two network passes there.  Each image is segmented as
shipped and, where its confidence at the scale found is at least the
lowest threshold, again with ``sure_confidence`` at that threshold; every
threshold (``--thresholds``, default :data:`THRESHOLDS`) is then played
offline (a threshold skips where the
confidence is at least it, so its result there is the gated one).  With
``--oof-folds K`` the size model is refitted K times without one fold of
``train-fit`` and each image is read by the one that did not see it (see
``bench_sparse_scales.py``): the shipped size model was fitted on
``train-fit`` and ``val``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sparse_scales import fold_of, oof_size_models  # noqa: E402
from bench_val_views import paired_difference, score  # noqa: E402

#: The thresholds played by default.
THRESHOLDS = (0.99, 0.98, 0.97, 0.95)


def play(rows: list[dict], threshold: float) -> dict:
    """Score, time and paired difference against the shipped backend of
    gating at ``threshold`` (rows: ``conf1``, ``full``, ``t_full`` and,
    where gated, ``gate`` and ``t_gate``).

    >>> rows = [{"conf1": 0.99, "full": {"ap50": 1, "aji_plus": .8}, "t_full": 2.0,
    ...          "gate": {"ap50": 1, "aji_plus": .7}, "t_gate": 1.0},
    ...         {"conf1": 0.5, "full": {"ap50": 1, "aji_plus": .9}, "t_full": 2.0}]
    >>> r = play(rows, 0.98); r["skipped"], round(r["difference"], 3), r["mean_seconds"]
    (1, -0.025, 1.5)
    """
    gated = [r.get("gate") is not None and r["conf1"] >= threshold for r in rows]
    base = [score(r["full"]) for r in rows]
    cand = [score(r["gate"]) if g else score(r["full"]) for r, g in zip(rows, gated)]
    secs = [r["t_gate"] if g else r["t_full"] for r, g in zip(rows, gated)]
    d = paired_difference(base, cand)
    diff = np.subtract(cand, base)
    return {"threshold": threshold, "skipped": int(sum(gated)), "score": float(np.mean(cand)),
            "difference": d["mean"], "standard_error": d["standard_error"],
            "win_rate": d["candidate_win_rate"], "better": int((diff > 1e-9).sum()),
            "worse": int((diff < -1e-9).sum()), "median_seconds": float(np.median(secs)),
            "mean_seconds": float(np.mean(secs))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bpartis-emps")
    ap.add_argument("--split", default="train-fit")
    ap.add_argument("--oof-folds", type=int, default=0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS),
                    help="sure_confidence values played (default "
                         f"{' '.join(map(str, THRESHOLDS))})")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "sure_confidence.json"))
    args = ap.parse_args(argv)
    thresholds = sorted(set(args.thresholds), reverse=True)
    if not thresholds or not all(0 < t <= 1 for t in thresholds):
        print(f"--thresholds must be numbers in (0, 1], got {args.thresholds}", file=sys.stderr)
        return 2
    lowest = thresholds[-1]
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import write_json
    from imageextract.evaluation.metrics import all_metrics
    from imageextract.segment.bpartis import BPartIS

    bp = BPartIS(model=args.model)
    stems = split_stems(args.data, args.split)[:args.limit]
    items = [(s, *load_item(args.data, s)) for s in stems]
    models = {}
    if args.oof_folds:
        val = [(s, *load_item(args.data, s)) for s in split_stems(args.data, "val")]
        models = oof_size_models(bp, items, val, args.oof_folds)
    shipped = bp.size_model
    rows, t0 = [], time.time()
    for stem, rgb, gt in tqdm(items, desc="images"):
        bp.size_model = models[fold_of(stem, args.oof_folds)] if models else shipped
        t = time.perf_counter()
        full = bp.segment_rgb(rgb)
        row = {"stem": stem, "conf1": full.get("scale_confidence", {}).get(1.0),
               "t_full": time.perf_counter() - t}
        m = all_metrics(gt, full["labels"])
        row["full"] = {k: float(m[k]) for k in ("ap", "ap50", "aji_plus")}
        if row["conf1"] is not None and row["conf1"] >= lowest:
            t = time.perf_counter()
            gated = bp.segment_rgb(rgb, sure_confidence=lowest)
            row["t_gate"] = time.perf_counter() - t
            m = all_metrics(gt, gated["labels"])
            row["gate"] = {k: float(m[k]) for k in ("ap", "ap50", "aji_plus")}
        rows.append(row)
    summary = [play(rows, c) for c in thresholds]
    res = {"split": args.split, "n_images": len(rows), "model": args.model,
           "weights": bp.weights, "oof_folds": args.oof_folds,
           "shipped": {"score": float(np.mean([score(r["full"]) for r in rows])),
                       "median_seconds": float(np.median([r["t_full"] for r in rows])),
                       "mean_seconds": float(np.mean([r["t_full"] for r in rows]))},
           "thresholds": summary, "rows": rows, "total_wall_seconds": round(time.time() - t0, 1)}
    write_json(res, args.out)
    for s in summary:
        print(f"sure_confidence {s['threshold']}: skipped {s['skipped']}, "
              f"{s['difference']:+.4f} (s.e. {s['standard_error']:.4f}, wins "
              f"{s['win_rate']:.0%}; +{s['better']}/-{s['worse']}), median "
              f"{s['median_seconds']:.2f} s, mean {s['mean_seconds']:.2f} s")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
