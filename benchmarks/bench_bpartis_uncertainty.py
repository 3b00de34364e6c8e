"""Is the bpartis uncertainty useful?  Accuracy and instance precision on an
EMPS split as the most uncertain instances are removed, and the cost of the
MC-dropout samples.

    python benchmarks/bench_bpartis_uncertainty.py --split test
    python benchmarks/bench_bpartis_uncertainty.py --split test --samples 1,4,8,16 --limit 20
    python benchmarks/bench_bpartis_uncertainty.py --split test --uncertainty mi,consistency
    python benchmarks/bench_bpartis_uncertainty.py --split test --no-rescore

For each number of MC samples ``T`` the split is segmented once with the
installed model (``models/bpartis-emps``, as the backend runs it: working
scale, tiling) with no uncertainty filter; every threshold then only removes
instances whose uncertainty is above it (``--uncertainty``: ``mi``, the mean
mutual information of the seed inside the instance; ``consistency``, one minus
its mean best IoU with the instances of each MC sample clustered on its own;
default: the model's).  Rows give the paper
metrics (AP, AP50, AP75, mean IoU), AJI+, the share of instances kept and the
instance precision (share of kept instances that match a ground-truth
particle at IoU > 0.5, pooled over the images).  The thresholds are the
fixed values ``--thresholds``, the quantiles of the run's uncertainties that
keep ``--keep`` of the instances, and the model's tuned ``t_u``.  The
model's learned rescorer (``inference.rescore``) runs first, as in the
backend; ``--no-rescore`` turns it off (then ``_norescore`` ends the file
names).

Writes ``benchmarks/results/bpartis_uncertainty_<split>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--model", default="bpartis-emps")
    ap.add_argument("--samples", default="1,8", help="comma-separated T values")
    ap.add_argument("--thresholds", default="0.005,0.01,0.02,0.03,0.05,0.08,0.12,0.2")
    ap.add_argument("--keep", default="0.98,0.95,0.9,0.8",
                    help="also the thresholds that keep these shares of the instances")
    ap.add_argument("--uncertainty", help="comma-separated kinds: mi, consistency "
                                          "(default: the model's)")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-rescore", action="store_true",
                    help="turn the model's learned particle rescorer off")
    ap.add_argument("--out")
    args = ap.parse_args()
    if not (Path(args.data) / "test.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    import numpy as np
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.train import uncertainty_sweep

    stems = split_stems(args.data, args.split)[: args.limit]
    items = [(s, *load_item(args.data, s)) for s in stems]
    shipped = BPartIS(model=args.model, rescore=not args.no_rescore)
    tuned = shipped.uncertainty_threshold
    kinds = (args.uncertainty or shipped.uncertainty_kind).split(",")
    fixed = {float(t) for t in args.thresholds.split(",")} | {math.inf}
    keep = [float(q) for q in args.keep.split(",")] if args.keep else []
    result = {"split": args.split, "images": len(items), "model": args.model,
              "rescore": shipped.rescorer is not None,
              "tuned_threshold": tuned, "tuned_uncertainty": shipped.uncertainty_kind,
              "runs": [],
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "load_avg": list(os.getloadavg())}}
    runs = [(t, kind) for t in (int(v) for v in args.samples.split(","))
            for kind in (kinds if t > 1 else kinds[:1])]
    for t, kind in runs:
        backend = BPartIS(model=args.model, mc_samples=t, uncertainty_threshold=math.inf,
                          threads=args.threads, uncertainty=kind, rescore=not args.no_rescore)
        preds, wall, cpu = [], [], []
        for stem, rgb, gt in tqdm(items, desc=f"T={t} {kind}"):
            w0, c0 = time.perf_counter(), time.process_time()
            seg = backend.predict(rgb)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
            preds.append((gt, seg.labels, seg.scores, seg.uncertainty))
        allu = np.concatenate([p[3] for p in preds]) if preds else np.zeros(0)
        thresholds = set(fixed) | {float(np.quantile(allu, q)) for q in keep if allu.size}
        if tuned is not None and kind == shipped.uncertainty_kind:
            thresholds.add(tuned)
        rows = uncertainty_sweep(preds, sorted(thresholds) if t > 1 else [math.inf])
        result["runs"].append({"mc_samples": t, "mc_layers": list(backend.mc_layers),
                               "mc_maps": backend.mc_maps, "uncertainty": kind,
                               "wall_seconds_median": statistics.median(wall),
                               "wall_seconds_mean": statistics.fmean(wall),
                               "cpu_seconds_median": statistics.median(cpu),
                               "rows": rows})
    out = Path(args.out) if args.out else (ROOT / "benchmarks" / "results"
                                           / f"bpartis_uncertainty_{args.split}"
                                             f"{'_norescore' if args.no_rescore else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = [f"# bpartis: uncertainty filter on EMPS {args.split} ({len(items)} images)", "",
             f"`python benchmarks/bench_bpartis_uncertainty.py --split {args.split} "
             f"--samples {args.samples}"
             + (f" --uncertainty {args.uncertainty}" if args.uncertainty else "")
             + (" --no-rescore" if args.no_rescore else "")
             + f"`; tuned t_u = {tuned} ({shipped.uncertainty_kind}); learned rescorer "
             + ("on" if result["rescore"] else "off") + ".", ""]
    for run in result["runs"]:
        lines += [f"## T = {run['mc_samples']} ({'+'.join(run['mc_layers'])}"
                  + (f", {run['mc_maps']} maps, uncertainty {run['uncertainty']}"
                     if run["mc_samples"] > 1 else "") + "): "
                  f"{run['wall_seconds_median']:.2f} s wall / {run['cpu_seconds_median']:.2f} s CPU "
                  "per image (median)", "",
                  "| t_u | kept | instance precision | AP | AP50 | AP75 | mean IoU | AJI+ |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in run["rows"]:
            thr = "none" if r["uncertainty_threshold"] is None else f"{r['uncertainty_threshold']:g}"
            lines.append(f"| {thr} | {r['kept']:.3f} | {r['instance_precision']:.3f} | "
                         f"{r['ap']:.3f} | {r['ap50']:.3f} | {r['ap75']:.3f} | "
                         f"{r['mean_iou']:.3f} | {r['aji_plus']:.3f} |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
