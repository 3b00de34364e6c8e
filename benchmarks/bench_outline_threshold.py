"""The outline refiner's probability threshold: score at each of several.

    python benchmarks/bench_outline_threshold.py --split train-fit --thresholds 0.5 0.45 0.4 \\
        --out benchmarks/results/outline_threshold_train-fit.json

Why: the refiner gives each pixel of a band around an outline the
probability that it belongs to the particle, and the pixel joins it above
``threshold`` (0.5 as fitted).  A pixel-wise calibrated 0.5 is not
necessarily the best threshold for the metrics, which score whole
particles: on EMPS val the shipped model's particles come out about 2 % too
small in area (median over images of the matched particles' area ratio).

Each image is segmented once by the model as configured but without outline
refinement and without the specialist (plain view), as the backend does
before its last step; then the refiner runs with its configured passes at
each threshold.  Every result is scored (paper AP, AP50, mean IoU, AJI+; the
model-selection score is the mean of AP50 and AJI+) and compared per image
with the first threshold given (standard error, paired bootstrap win rate).
On ``train-fit`` the refiner was fitted on every third image, so the other
two thirds are also summarised alone (``out_of_fit``); images are also split
by particle shape.
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

#: Metrics kept per image and threshold, in this order.
METRICS = ("ap", "ap50", "mean_iou", "aji_plus")


def summarise(values: np.ndarray, thresholds: list[float]) -> dict:
    """``values`` (images, thresholds, len(METRICS)): per threshold the means
    and the paired comparison of the score (mean of AP50 and AJI+) with the
    first threshold.

    >>> v = np.array([[[0.7, 1.0, 0.8, 0.8], [0.7, 1.0, 0.8, 0.9]]] * 3)
    >>> s = summarise(v, [0.5, 0.4])
    >>> round(s["0.4"]["vs_first"], 3), s["0.4"]["better"]
    (0.05, 3)
    """
    from bench_val_views import paired_difference

    i50, iaji = METRICS.index("ap50"), METRICS.index("aji_plus")
    scores = (values[:, :, i50] + values[:, :, iaji]) / 2
    out = {}
    for k, t in enumerate(thresholds):
        d = scores[:, k] - scores[:, 0]
        paired = paired_difference(scores[:, 0], scores[:, k])
        out[f"{t:g}"] = {
            "images": int(values.shape[0]),
            **{m: float(values[:, k, j].mean()) for j, m in enumerate(METRICS)},
            "score": float(scores[:, k].mean()), "vs_first": paired["mean"],
            "standard_error": paired["standard_error"],
            "better": int((d > 1e-9).sum()), "worse": int((d < -1e-9).sum()),
            "win_rate": paired["candidate_win_rate"] if k else 0.5}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bpartis-emps", help="model name or folder")
    ap.add_argument("--split", default="train-fit")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.45, 0.4])
    ap.add_argument("--every", type=int, default=3,
                    help="the refiner was fitted on every N-th train-fit image")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    if not all(0 < t < 1 for t in args.thresholds):
        print(f"--thresholds must lie in (0, 1), got {args.thresholds}", file=sys.stderr)
        return 2
    from bench_outline_passes import image_groups
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import write_json
    from imageextract.evaluation.metrics import aji_plus, is_elongated, paper_metrics
    from imageextract.segment.bpartis import BPartIS

    backend = BPartIS(model=args.model)
    refiner = backend.outline
    if refiner is None:
        print(f"model {args.model} has no outline refiner", file=sys.stderr)
        return 2
    shipped = refiner.threshold
    all_stems = split_stems(args.data, args.split)
    fitted = set(all_stems[::args.every]) if args.split == "train-fit" else set()
    stems = all_stems[:args.limit]
    rows, shapes = [], []
    t0 = time.time()
    for stem in tqdm(stems, desc="images"):
        rgb, truth = load_item(args.data, stem)
        res = backend.segment_rgb(rgb, outline=None, specialist=None)
        per = []
        for t in args.thresholds:
            refiner.threshold = t
            lab = refiner.refine(rgb, res["labels"], res["seed"], scale=res["scale"])
            pm = paper_metrics(truth, lab)
            per.append([float(pm["ap"]), float(pm["ap50"]), float(pm["mean_iou"]),
                        float(aji_plus(truth, lab))])
        refiner.threshold = shipped
        rows.append(per)
        shapes.append("elongated" if is_elongated(truth) else "compact")
    values = np.asarray(rows, float).reshape(len(stems), len(args.thresholds), len(METRICS))
    groups = image_groups(stems, shapes, fitted)
    out_res = {"model": args.model, "weights": backend.weights, "split": args.split,
               "passes": refiner.passes, "shipped_threshold": shipped,
               "thresholds": args.thresholds, "n_images": len(stems),
               "summary": {g: summarise(values[m], args.thresholds) for g, m in groups.items()
                           if m.sum() > 1},
               "rows": [{"stem": s, "shape": sh, "fitted_on": s in fitted,
                         "metrics_by_threshold": r} for s, sh, r in zip(stems, shapes, rows)],
               "metrics": list(METRICS), "total_wall_seconds": round(time.time() - t0, 1)}
    out = Path(args.out or ROOT / "benchmarks" / "results" /
               f"outline_threshold_{args.split}.json")
    write_json(out_res, out)
    for g, table in out_res["summary"].items():
        print(g)
        for t, m in table.items():
            print(f"  threshold {t}: AP {m['ap']:.4f} AP50 {m['ap50']:.4f} mean IoU "
                  f"{m['mean_iou']:.4f} AJI+ {m['aji_plus']:.4f} score {m['score']:.4f}  vs "
                  f"first {m['vs_first']:+.4f} (s.e. {m['standard_error']:.4f}; "
                  f"{m['better']} better, {m['worse']} worse)")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
