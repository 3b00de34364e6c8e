"""Is the bpartis uncertainty useful?  Accuracy and instance precision on an
EMPS split as the most uncertain instances are removed, and the cost of the
MC-dropout samples.

    python benchmarks/bench_bpartis_uncertainty.py --split test
    python benchmarks/bench_bpartis_uncertainty.py --split test --samples 1,4,8,16 --limit 20

For each number of MC samples ``T`` the split is segmented once with the
installed model (``models/bpartis-emps``, as the backend runs it: working
scale, tiling) with no uncertainty filter; every threshold then only removes
instances whose mean mutual information is above it.  Rows give the paper
metrics (AP, AP50, AP75, mean IoU), AJI+, the share of instances kept and the
instance precision (share of kept instances that match a ground-truth
particle at IoU > 0.5, pooled over the images).  The thresholds are the
fixed values ``--thresholds`` plus the model's tuned ``t_u``.

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
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
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
    tuned = BPartIS(model=args.model).uncertainty_threshold
    thresholds = sorted({float(t) for t in args.thresholds.split(",")}
                        | ({tuned} if tuned is not None else set()) | {math.inf})
    result = {"split": args.split, "images": len(items), "model": args.model,
              "tuned_threshold": tuned, "runs": [],
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "load_avg": list(os.getloadavg())}}
    for t in (int(v) for v in args.samples.split(",")):
        backend = BPartIS(model=args.model, mc_samples=t, uncertainty_threshold=math.inf,
                          threads=args.threads)
        preds, wall, cpu = [], [], []
        for stem, rgb, gt in tqdm(items, desc=f"T={t}"):
            w0, c0 = time.perf_counter(), time.process_time()
            seg = backend.predict(rgb)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
            preds.append((gt, seg.labels, seg.scores, seg.uncertainty))
        rows = uncertainty_sweep(preds, thresholds if t > 1 else [math.inf])
        result["runs"].append({"mc_samples": t, "mc_layers": list(backend.mc_layers),
                               "mc_maps": backend.mc_maps,
                               "wall_seconds_median": statistics.median(wall),
                               "wall_seconds_mean": statistics.fmean(wall),
                               "cpu_seconds_median": statistics.median(cpu),
                               "rows": rows})
    out = Path(args.out) if args.out else (ROOT / "benchmarks" / "results"
                                           / f"bpartis_uncertainty_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = [f"# bpartis: uncertainty filter on EMPS {args.split} ({len(items)} images)", "",
             f"`python benchmarks/bench_bpartis_uncertainty.py --split {args.split} "
             f"--samples {args.samples}`; tuned t_u = {tuned}.", ""]
    for run in result["runs"]:
        lines += [f"## T = {run['mc_samples']} ({'+'.join(run['mc_layers'])}"
                  + (f", {run['mc_maps']} maps" if run["mc_samples"] > 1 else "") + "): "
                  f"{run['wall_seconds_median']:.2f} s wall / {run['cpu_seconds_median']:.2f} s CPU "
                  "per image (median)", "",
                  "| t_u (nats) | kept | instance precision | AP | AP50 | AP75 | mean IoU | AJI+ |",
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
