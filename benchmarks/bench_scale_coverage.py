"""Judge the working scale by confidence and by the foreground covered.

    python benchmarks/bench_scale_coverage.py factors --split train-fit \\
        --out benchmarks/results/scale_coverage_factors_train_fit.json
    python benchmarks/bench_scale_coverage.py models --split train-fit --shape elongated \\
        --model models/bpartis-emps --model RUN/candidate \\
        --out benchmarks/results/scale_coverage_models_train_fit_rods.json

Why: among the scale factors it tries, the ``bpartis`` backend keeps the
result whose particles are surest (mean rescorer probability).  On dense
rods read at the wrong size the rescorer keeps only the few particles it is
sure of, so the mean can be high while most particles are missing.
``inference.scale_coverage`` adds a weight times the share of the
network's foreground the kept particles cover
(:func:`~imageextract.segment.bpartis.inference.scale_score`), optionally
only where the particles at the scale found are elongated
(``inference.scale_coverage_min_elongation``).

``factors`` segments every image of the split at the scale the backend
finds and at each multiple of it that the backend tried there, main
network only, and stores per factor the confidence, the covered share and
the metrics; it then replays the backend's choice offline for each weight
of ``--weights`` (the growth rule as the backend has it; no merge of other
scales, no elongation gate) and reports the paired difference to
confidence alone, per shape (rods: median ground-truth aspect ratio above
2.5).

``models`` segments each image of the split with each ``--model`` folder
as a user would (specialist included) and reports each one's paired
difference to the first.

score = mean of AP50 and AJI+, per image.
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

from bench_val_views import paired_difference, score  # noqa: E402

from imageextract.evaluation.harness import write_json  # noqa: E402
from imageextract.evaluation.metrics import aji_plus, paper_metrics  # noqa: E402

WEIGHTS = (0.1, 0.2, 0.3, 0.5, 1.0)
SHAPES = ("all", "compact", "elongated")


def items_of_shape(data: Path, split: str, shape: str) -> list:
    """``(stem, rgb, labels, elongated)`` of the split's images of ``shape``
    (one of :data:`SHAPES`; rods: median ground-truth aspect ratio above 2.5)."""
    from imageextract.segment.bpartis.train import elongated_images, load_split

    items = load_split(data, split)
    rods = elongated_images(items)
    return [(s, rgb, gt, bool(e)) for (s, rgb, gt), e in zip(items, rods)
            if shape == "all" or (shape == "elongated") == bool(e)]


def collect_factors(bp, items) -> list[dict]:
    """Per image: the backend's own choice, and per factor the main
    network's kept particles' confidence, covered share and metrics."""
    from tqdm import tqdm

    from imageextract.segment.bpartis.inference import covered_foreground, scale_confidence

    fg_t = bp.cluster_options.get("fg_threshold", 0.5)
    rows = []
    for stem, rgb, gt, rod in tqdm(items, desc="images"):
        r = bp.segment_rgb(rgb, specialist=None)
        conf = r.get("scale_confidence", {1.0: 0.0})
        chosen = r.get("grown") or max(conf, key=lambda f: (conf[f], f == 1.0))
        s0 = r["scale"] / chosen
        row = {"stem": stem, "elongated": rod, "scale_found": s0, "tried": sorted(conf),
               "grown": r.get("grown"), "backend": selection_metrics(gt, r["labels"]),
               "factors": {}}
        for f in sorted(conf):
            q = bp.segment_rgb(rgb, specialist=None, scale=s0 * f, outline=None)
            lab = q["labels"]
            st = {"n": int(q["scores"].size), "confidence": scale_confidence(q),
                  "covered": covered_foreground(q, fg_threshold=fg_t)}
            if bp.outline is not None and q["scores"].size:
                lab = bp.outline.refine(rgb, lab, q["seed"], scale=q["scale"])
            row["factors"][str(float(f))] = st | selection_metrics(gt, lab)
        rows.append(row)
    return rows


def selection_metrics(gt: np.ndarray, labels: np.ndarray) -> dict:
    """The two metrics of the model-selection score: AP50 and AJI+."""
    return {"ap50": float(paper_metrics(gt, labels)["ap50"]),
            "aji_plus": float(aji_plus(gt, labels))}


def replay(row: dict, weight: float) -> str:
    """The factor the backend would keep for ``row`` with coverage ``weight``
    (among the factors it tried: the ``sure_confidence`` skip and the sparse
    rules depend on the scale found alone)."""
    if row["grown"]:
        return str(float(row["grown"]))
    fs = row["factors"]

    def judged(f: str) -> tuple:
        v = fs[f]
        return (v["confidence"] + (weight * v["covered"] if v["n"] else 0.0), f == "1.0")

    return max((str(float(f)) for f in row["tried"]), key=judged)


def paired(base: np.ndarray, cand: np.ndarray) -> dict:
    """Candidate against baseline per image (:func:`paired_difference`),
    with the candidate's mean score and the images whose score changed."""
    d = paired_difference(base, cand)
    return {"images": int(cand.size), "score": float(cand.mean()), "difference": d["mean"],
            "standard_error": d["standard_error"], "win_rate": d["candidate_win_rate"],
            "changed": int(np.sum(np.abs(cand - base) > 1e-9))}


def summarize_factors(rows: list[dict], weights) -> dict:
    out = {}
    for shape in SHAPES:
        sel = [r for r in rows if shape == "all" or (shape == "elongated") == r["elongated"]]
        if not sel:
            continue
        base = np.array([score(r["factors"][replay(r, 0.0)]) for r in sel])
        out[shape] = {
            "images": len(sel),
            "backend": float(np.mean([score(r["backend"]) for r in sel])),
            "replayed_confidence": float(base.mean()),
            "best_factor": float(np.mean([max(score(v) for v in r["factors"].values())
                                          for r in sel])),
            "weights": {str(w): paired(base, np.array(
                [score(r["factors"][replay(r, w)]) for r in sel]))
                for w in weights}}
    return out


def run_models(models: list[str], items, *, threads: int) -> list[dict]:
    from tqdm import tqdm

    from imageextract.segment.bpartis import BPartIS

    bps = {m: BPartIS(model=m, threads=threads) for m in models}
    rows = []
    for stem, rgb, gt, rod in tqdm(items, desc="images"):
        row = {"stem": stem, "elongated": rod}
        for m, bp in bps.items():
            t = time.perf_counter()
            r = bp.segment_rgb(rgb)
            row[m] = selection_metrics(gt, r["labels"]) | {
                "n": int(r["scores"].size), "scale": float(r["scale"]),
                "seconds": time.perf_counter() - t, "weights": r.get("weights", "main")}
        rows.append(row)
    return rows


def summarize_models(rows: list[dict], models: list[str]) -> dict:
    out = {}
    for shape in SHAPES:
        sel = [r for r in rows if shape == "all" or (shape == "elongated") == r["elongated"]]
        if not sel:
            continue
        base = np.array([score(r[models[0]]) for r in sel])
        out[shape] = {m: paired(base, np.array([score(r[m]) for r in sel]))
                      | {k: float(np.mean([r[m][k] for r in sel])) for k in ("ap50", "aji_plus")}
                      for m in models}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("factors", "models"))
    ap.add_argument("--split", default="train-fit")
    ap.add_argument("--shape", choices=SHAPES, default="all")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--model", action="append",
                    help="model folder (factors: one, default bpartis-emps; models: two or more, "
                    "the first is the baseline)")
    ap.add_argument("--weights", default=",".join(map(str, WEIGHTS)),
                    help="coverage weights replayed by 'factors' (comma-separated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "train.csv").exists():
        print(f"EMPS not found at {data} (expected train.csv there)", file=sys.stderr)
        return 2
    try:
        weights = tuple(float(w) for w in args.weights.split(",") if w)
    except ValueError:
        weights = ()
    if not weights or not all(np.isfinite(w) and w >= 0 for w in weights):
        print(f"--weights must be comma-separated numbers >= 0, got {args.weights!r}",
              file=sys.stderr)
        return 2
    models = args.model or ["bpartis-emps"]
    if args.mode == "models" and len(models) < 2:
        print("models needs at least two --model folders (the first is the baseline)",
              file=sys.stderr)
        return 2
    items = items_of_shape(data, args.split, args.shape)
    t0 = time.perf_counter()
    res = {"mode": args.mode, "split": args.split, "shape": args.shape, "n_images": len(items)}
    if args.mode == "factors":
        from imageextract.segment.bpartis import BPartIS

        bp = BPartIS(model=models[0], threads=args.threads)
        rows = collect_factors(bp, items)
        res |= {"model": models[0], "weights_tag": bp.weights,
                "summary": summarize_factors(rows, weights)}
    else:
        rows = run_models(models, items, threads=args.threads)
        res |= {"models": models, "summary": summarize_models(rows, models)}
    res |= {"rows": rows, "total_wall_seconds": round(time.perf_counter() - t0, 1)}
    out = write_json(res, args.out)
    for shape, s in res["summary"].items():
        if args.mode == "factors":
            ws = ", ".join(f"w {w}: {v['difference']:+.4f} (s.e. {v['standard_error']:.4f})"
                           for w, v in s["weights"].items())
            print(f"{shape:9s} {s['images']:3d} images: backend {s['backend']:.4f}, replayed "
                  f"{s['replayed_confidence']:.4f}, best factor {s['best_factor']:.4f}; {ws}")
        else:
            for m, v in s.items():
                print(f"{shape:9s} {v['images']:3d} images {m}: score {v['score']:.4f} "
                      f"(AP50 {v['ap50']:.3f}, AJI+ {v['aji_plus']:.3f}), "
                      f"{v['difference']:+.4f} (s.e. {v['standard_error']:.4f})")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
