"""How sure must another scale's particle be to be merged in?

    python benchmarks/bench_scale_merge.py --split val --views \\
        --out benchmarks/results/scale_merge_val.json
    python benchmarks/bench_scale_merge.py --split train-fit \\
        --out benchmarks/results/scale_merge_train_fit.json

Why: the ``bpartis`` backend segments most images at a few multiples of the
working scale it finds (``scale_factors``), keeps the surest result, and
then adds the particles that only the other scales found when the rescorer
gives them at least ``min_score`` and at most ``max_overlap`` of their pixels
are already taken (``inference.scale_merge``, :func:`~imageextract.segment.
bpartis.inference.merge_scales`).  A lower ``min_score`` finds more of the
particles the chosen scale missed (AJI+) and lets in more false ones (AP50).

Each image of the split (with ``--views``, also mirrored left-right and
top-bottom, turned by 90 degrees and saved as JPEG 95, as in
``bench_val_views.py``) is segmented once by the backend as shipped, and
the results it merges are kept.  The merge and the outline refinement that
follows it are then replayed for each ``--grid`` setting, and each setting is
compared, image by image, with the shipped one.  Images where the backend
merged nothing (one scale tried: the scale found was sure) count as
unchanged.  The steps after the outline refinement (specialist, join,
whole rods, scale bars) are left out of the replay: they mostly concern
rods, so by default only compact images are scored (``--shape``).

score = mean of AP50 and AJI+, per image (per view with ``--views``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scale_coverage import SHAPES, items_of_shape, selection_metrics  # noqa: E402
from bench_val_views import VIEWS, paired_difference, score, view  # noqa: E402

from imageextract.evaluation.harness import write_json  # noqa: E402

#: ``(min_score, max_overlap)`` settings replayed by default; the first
#: is the shipped one and the baseline; ``min_score`` above 1 merges nothing.
GRID = ((0.95, 0.05), (0.9, 0.05), (0.85, 0.05), (0.8, 0.05), (0.95, 0.15),
        (0.9, 0.15), (0.99, 0.05), (1.01, 0.05))
KEPT = ("labels", "scores", "uncertainty", "seed_scores", "seed", "scale")


@contextlib.contextmanager
def merges_kept(store: list):
    """While open, every call of the backend's ``merge_scales`` appends its
    ``(result, others)`` (the arrays the merge and the outline use) to
    ``store`` and then merges as usual."""
    inference = importlib.import_module("imageextract.segment.bpartis.inference")
    original = inference.merge_scales

    def keep(result, others, **kw):
        store.append(({k: result[k] for k in KEPT if k in result},
                      [{k: o[k] for k in KEPT if k in o} for o in others]))
        return original(result, others, **kw)

    inference.merge_scales = keep
    try:
        yield
    finally:
        inference.merge_scales = original


def summarize(rows: list[dict], names: list[str]) -> dict:
    """Per setting of ``names`` (the first is the baseline): the paired
    score difference to the baseline over all rows, the mean AP50 and AJI+
    differences, and how many rows got better or worse.  Rows where nothing
    was merged are the same under every setting (difference 0)."""
    base_name = names[0]
    summary = {}
    for n in names:
        def diff(key, r):
            if not r["merged"]:
                return 0.0
            a, b = r["settings"][n], r["settings"][base_name]
            return score(a) - score(b) if key == "score" else a[key] - b[key]

        d = np.array([diff("score", r) for r in rows])
        means = {k: float(np.mean([diff(k, r) for r in rows])) for k in ("ap50", "aji_plus")}
        summary[n] = {"score": paired_difference(np.zeros(d.size), d), **means,
                      "better": int((d > 1e-9).sum()), "worse": int((d < -1e-9).sum())}
    return summary


def _parse_grid(values) -> tuple[tuple[float, float], ...]:
    grid = []
    for v in values:
        try:
            a, b = (float(x) for x in v.split(":"))
        except ValueError:
            raise SystemExit(f"--grid takes MIN_SCORE:MAX_OVERLAP, got {v!r}") from None
        if not 0.0 <= b < 1.0:
            raise SystemExit(f"--grid: max_overlap must be in [0, 1), got {b}")
        grid.append((a, b))
    return tuple(grid)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="val", help="val, train-fit, train or test")
    ap.add_argument("--views", action="store_true",
                    help="each image also seen the four other ways of bench_val_views.py")
    ap.add_argument("--shape", choices=SHAPES, default="compact")
    ap.add_argument("--grid", nargs="+", metavar="MIN_SCORE:MAX_OVERLAP",
                    help="settings to replay; the first is the baseline "
                         "(default: the shipped 0.95:0.05 and seven others)")
    ap.add_argument("--model", default="bpartis-emps")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_merge.json"))
    args = ap.parse_args(argv)
    grid = _parse_grid(args.grid) if args.grid else GRID

    from tqdm import tqdm

    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.inference import merge_scales

    data = Path(args.data)
    if not data.is_dir():
        print(f"EMPS not found at {data}", file=sys.stderr)
        return 2
    items = items_of_shape(data, args.split, args.shape)[:args.limit]
    backend = BPartIS(model=args.model, threads=args.threads)
    if backend.scale_merge is None or backend.outline is None:
        print(f"model {args.model} merges no scales or has no outline refiner", file=sys.stderr)
        return 2
    views = VIEWS if args.views else ("plain",)
    rows = []
    t0 = time.perf_counter()
    for stem, rgb, gt, _ in tqdm(items, desc="images"):
        for name in views:
            img, truth = view(name, rgb, gt)
            store: list = []
            with merges_kept(store):
                backend.segment_rgb(img)
            row = {"stem": stem, "view": name, "merged": bool(store), "settings": {}}
            if store:
                result, others = store[0]
                for min_score, max_overlap in grid:
                    m = merge_scales(result, others, min_score=min_score, max_overlap=max_overlap)
                    labels = backend.outline.refine(img, m["labels"], m["seed"], scale=m["scale"])
                    row["settings"][f"{min_score}:{max_overlap}"] = selection_metrics(truth, labels)
            rows.append(row)
    seconds = time.perf_counter() - t0

    names = [f"{a}:{b}" for a, b in grid]
    n_merged = sum(r["merged"] for r in rows)
    summary = summarize(rows, names)
    for n, v in summary.items():
        print(f"{n:>10}: score {v['score']['mean']:+.4f} (s.e. "
              f"{v['score']['standard_error']:.4f}), AP50 {v['ap50']:+.4f}, "
              f"AJI+ {v['aji_plus']:+.4f}; better {v['better']}, worse {v['worse']}")
    out = {"split": args.split, "views": list(views), "shape": args.shape, "model": args.model,
           "weights": backend.weights, "n_views": len(rows), "n_merged": n_merged,
           "baseline": names[0], "seconds": round(seconds, 1),
           "command": "python benchmarks/bench_scale_merge.py " + " ".join(sys.argv[1:]
                                                                            if argv is None
                                                                            else argv),
           "summary": summary, "rows": rows}
    print(f"{len(rows)} views, {n_merged} with a merge, {seconds:.0f} s -> "
          f"{write_json(out, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
