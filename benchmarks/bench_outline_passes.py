"""How many passes of the outline refiner: score after each pass.

    python benchmarks/bench_outline_passes.py --split train-fit
    python benchmarks/bench_outline_passes.py --split val \\
        --out benchmarks/results/outline_passes_val.json
    python benchmarks/bench_outline_passes.py --model models/bpartis-emps-rods --split train-fit \\
        --stems models/bpartis-emps-rods/held_out.txt

Why: one pass of the refiner re-decides a band a few pixels wide around each
outline, so it cannot reach an outline that lies further inside the particle
(on some dense images the network leaves a crescent of every particle out).
Applying it again to its own result moves the outline on.

Each image is segmented once by the model as configured but without outline
refinement and without the specialist (plain view); then the refiner is
applied 1, 2, ... ``--max-passes`` times, each pass from the previous one's
outlines, and every stage is scored (mean of AP50 and AJI+, the
model-selection score).  The comparison is per image against one pass, with
the standard error and the paired bootstrap win rate.  On ``train-fit`` the
refiner was fitted on every third image (``outline_fit``'s ``every``), so the
other two thirds are also summarised alone (``out_of_fit``); images are also
split by particle shape (rods, wires and fibres: ``elongated``).

Writes ``benchmarks/results/outline_passes_<split>.json``.
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


def summarise(scores: np.ndarray, metrics: np.ndarray) -> dict:
    """Per number of passes (``scores`` (images, passes + 1): column 0
    unrefined, column k after k passes; ``metrics`` (images, passes + 1, 2)
    AP50 and AJI+): the means and the paired comparison with one pass
    (:func:`bench_val_views.paired_difference`)."""
    from bench_val_views import paired_difference

    out = {}
    n = scores.shape[0]
    for k in range(scores.shape[1]):
        d = scores[:, k] - scores[:, 1]
        paired = paired_difference(scores[:, 1], scores[:, k])
        out[str(k)] = {
            "images": n, "ap50": float(metrics[:, k, 0].mean()),
            "aji_plus": float(metrics[:, k, 1].mean()), "score": float(scores[:, k].mean()),
            "vs_one_pass": paired["mean"], "standard_error": paired["standard_error"],
            "better": int((d > 1e-9).sum()), "worse": int((d < -1e-9).sum()),
            "win_rate": paired["candidate_win_rate"] if k != 1 else 0.5}
    return out


def image_groups(stems: list[str], shapes: list[str], fitted: set[str]) -> dict:
    """Boolean masks over ``stems``: ``all``, ``out_of_fit`` (the images not
    in ``fitted``, when any are) and each particle shape of ``shapes``.

    >>> g = image_groups(["a", "b", "c"], ["compact", "elongated", "compact"], {"a"})
    >>> g["out_of_fit"].tolist(), g["compact"].tolist()
    ([False, True, True], [True, False, True])
    """
    groups = {"all": np.ones(len(stems), bool)}
    if fitted:
        groups["out_of_fit"] = np.array([s not in fitted for s in stems])
    for shape in ("compact", "elongated"):
        groups[shape] = np.array([s == shape for s in shapes])
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bpartis-emps", help="model name or folder")
    ap.add_argument("--split", default="train-fit")
    ap.add_argument("--stems", help="file of stems (one per line) to keep from the split")
    ap.add_argument("--max-passes", type=int, default=6)
    ap.add_argument("--every", type=int, default=3,
                    help="the refiner's fitting images were every N-th of train-fit")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    if args.max_passes < 1:
        print(f"--max-passes must be >= 1, got {args.max_passes}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import write_json
    from imageextract.evaluation.metrics import aji_plus, is_elongated, paper_metrics
    from imageextract.segment.bpartis import BPartIS

    backend = BPartIS(model=args.model, threads=args.threads)
    refiner = backend.outline
    if refiner is None:
        print(f"model {args.model} has no outline refiner", file=sys.stderr)
        return 2
    refiner.passes = 1
    all_stems = split_stems(args.data, args.split)
    fitted = set(all_stems[::args.every]) if args.split == "train-fit" else set()
    stems = all_stems
    if args.stems:
        keep = set(Path(args.stems).read_text().split())
        stems = [s for s in stems if s in keep]
    stems = stems[:args.limit]
    rows, shapes = [], []
    t0 = time.time()
    for stem in tqdm(stems, desc="images"):
        rgb, truth = load_item(args.data, stem)
        res = backend.segment_rgb(rgb, outline=None, specialist=None)
        lab, per = res["labels"], []
        for k in range(args.max_passes + 1):
            per.append((paper_metrics(truth, lab)["ap50"], aji_plus(truth, lab)))
            if k < args.max_passes:
                lab = refiner.refine(rgb, lab, res["seed"], scale=res["scale"])
        rows.append(per)
        shapes.append("elongated" if is_elongated(truth) else "compact")
    metrics = np.asarray(rows, float).reshape(len(stems), args.max_passes + 1, 2)
    scores = metrics.mean(2)
    groups = image_groups(stems, shapes, fitted)
    res = {"model": args.model, "weights": backend.weights, "split": args.split,
           "stems_file": args.stems, "n_images": len(stems), "max_passes": args.max_passes,
           "summary": {g: summarise(scores[m], metrics[m]) for g, m in groups.items()
                       if m.sum() > 1},
           "rows": [{"stem": s, "shape": sh, "fitted_on": s in fitted,
                     "ap50_aji_plus_by_passes": r} for s, sh, r in zip(stems, shapes, rows)],
           "total_wall_seconds": round(time.time() - t0, 1)}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"outline_passes_{args.split}.json")
    write_json(res, out)
    for g, table in res["summary"].items():
        print(g)
        for k, m in table.items():
            print(f"  {k} pass(es): AP50 {m['ap50']:.4f} AJI+ {m['aji_plus']:.4f} score "
                  f"{m['score']:.4f}  vs one pass {m['vs_one_pass']:+.4f} (s.e. "
                  f"{m['standard_error']:.4f}; {m['better']} better, {m['worse']} worse)")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
