"""Accuracy and speed of one segmentation backend on an EMPS split.

    python benchmarks/bench_backend.py --backend classical --split test
    python benchmarks/bench_backend.py --backend bpartis --split test --limit 20

Writes ``benchmarks/results/<backend>_<split>.json`` in the ``evaluate
--json`` format plus machine information and median seconds per image
(wall-clock seconds of segmentation; model loading excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imageextract.evaluation.harness import format_summary, run_evaluation  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="classical")
    ap.add_argument("--split", default="test")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="result file (default benchmarks/results/<backend>_<split>.json)")
    args = ap.parse_args()
    if not (Path(args.data) / "test.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    from imageextract.config import parse_value

    opts = {k: parse_value(v) for k, v in (o.split("=", 1) for o in args.option)}
    t0 = time.time()
    res = run_evaluation(args.data, split=args.split, backend=args.backend, limit=args.limit,
                         backend_options=opts, progress=True)
    secs = [p["seconds"] for p in res["per_image"]]
    res["median_seconds_per_image"] = statistics.median(secs) if secs else None
    res["backend_options"] = opts
    res["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                      "cpu_count": os.cpu_count(), "processor": platform.processor()}
    res["total_wall_seconds"] = time.time() - t0
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{args.backend}_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(format_summary(res))
    print(f"median {res['median_seconds_per_image']:.3f} s/image → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
