"""The bpartis size model's particle diameter on EMPS images and on larger
fields of view of the same particles.

    python benchmarks/bench_size_probe.py                     # val + test, 4 x 4 mosaics
    python benchmarks/bench_size_probe.py --splits test --tiles 2

A micrograph's particle size does not depend on how much of the sample it
shows, but the size model reads the whole image shrunk to ``probe_px``: on a
large micrograph of small particles they are a few pixels across there.  For
each image this benchmark estimates the median particle diameter (native px)
on the image itself and on a ``tiles`` x ``tiles`` mirrored mosaic of it (the
same particles in a field of view ``tiles`` times wider), with the zoom-in
of :func:`imageextract.segment.bpartis.size.estimate_diameter` off and on,
and compares them with the ground truth's median diameter.  Only encoder
passes run (no segmentation), so it takes a few minutes.

Writes ``benchmarks/results/bpartis_size_probe.json``.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def mosaic(rgb, tiles: int):
    """``rgb`` mirrored into a ``tiles`` x ``tiles`` mosaic (no seams)."""
    import numpy as np

    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, (tiles - 1) * h), (0, (tiles - 1) * w), (0, 0)), mode="symmetric")


def summarise(err):
    import numpy as np

    e = np.abs(np.asarray(err))
    return {"n": int(e.size), "median_abs_log_error": float(np.median(e)),
            "within_25pct": float(np.mean(e < math.log(1.25))),
            "within_50pct": float(np.mean(e < math.log(1.5))),
            "within_2x": float(np.mean(e < math.log(2.0)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--model", default="bpartis-emps", help="installed bpartis model name")
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--probe-px", type=int, default=512)
    ap.add_argument("--zoom-below", type=float, default=None,
                    help="zoom in below this many px at the probe scale (default: the shipped)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--limit", type=int, default=0, help="first N images per split (0 = all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"
                                         / "bpartis_size_probe.json"))
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"EMPS not found at {args.data}", file=sys.stderr)
        return 2
    import numpy as np
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import write_json
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.inference import median_diameter
    from imageextract.segment.bpartis.size import ZOOM_BELOW, estimate_diameter

    bp = BPartIS(model=args.model, threads=args.threads)
    zoom_below = ZOOM_BELOW if args.zoom_below is None else args.zoom_below
    rows = []
    t0 = time.perf_counter()
    for split in args.splits:
        stems = split_stems(args.data, split)
        stems = stems[:args.limit] if args.limit else stems
        for stem in tqdm(stems, desc=split):
            rgb, gt = load_item(args.data, stem)
            truth = median_diameter(gt)
            if not np.isfinite(truth):
                continue
            row = {"stem": stem, "split": split, "shape": list(gt.shape), "truth_px": truth}
            for view, img in (("image", rgb), ("mosaic", mosaic(rgb, args.tiles))):
                s0 = min(1.0, args.probe_px / max(img.shape[:2]))
                for zoom, below in (("off", 0.0), ("on", zoom_below)):
                    d = estimate_diameter(bp.net, bp.size_model, img, scale=s0,
                                          zoom_below=below, device=bp.device) / s0
                    row[f"{view}_zoom_{zoom}_px"] = d
            rows.append(row)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
           "weights": bp.weights, "splits": args.splits, "tiles": args.tiles,
           "zoom_below": zoom_below, "seconds": round(time.perf_counter() - t0, 1),
           "machine": platform.platform(), "summary": {}, "per_image": rows}
    for key in ("image_zoom_off", "image_zoom_on", "mosaic_zoom_off", "mosaic_zoom_on"):
        err = [math.log(r[f"{key}_px"] / r["truth_px"]) for r in rows]
        res["summary"][key] = summarise(err)
    write_json(res, args.out)
    for key, v in res["summary"].items():
        print(f"{key:16s} n {v['n']:3d}  median |log err| {v['median_abs_log_error']:.3f}  "
              f"within 25% {v['within_25pct']:.2f}  50% {v['within_50pct']:.2f}  "
              f"2x {v['within_2x']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
