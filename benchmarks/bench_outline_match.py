"""How well are the particles found outlined, ours against the peer's?

    python benchmarks/bench_outline_match.py --split test \\
        --out benchmarks/results/outline_match_test.json

Why: AJI+ falls both for the particles a method misses and for the pixels
it draws wrong around the particles it finds.  This benchmark looks at the
second part alone.  Each image of the split is segmented by the ``bpartis``
backend as shipped; the peer's label maps are read from the PNGs that
``compare.py`` left in ``benchmarks/.peer-work/predictions`` (run it first).
A ground-truth particle counts when both methods match it at IoU above 0.5
(:func:`~imageextract.evaluation.metrics.matched_pairs`); on those
particles the benchmark gives each method's mean IoU and the median ratio
of its area to the true one, per image and by our working scale (the
network sees a particle about 48 px across: scales below 1 shrink the
image, and the outline is drawn back at full size from the smaller map).

The gap here is an upper bound on what better outlines alone could add to
AJI+: an image's AJI+ moves by less than its matched IoU, since missed and
false particles stay in its union.

On every image, each method's AJI+ union is also split into its parts
(:func:`~imageextract.evaluation.metrics.aji_plus_parts`): the intersections
(AJI+ itself), the outlines of the particles found (pairs above IoU 0.5),
weak pairs (merged, split or badly drawn), missed and false particles; the
summary gives their means, overall and by working scale.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imageextract.evaluation.harness import write_json  # noqa: E402

#: Upper edges of the working-scale bins (the last is open).
SCALE_EDGES = (0.35, 0.5, 0.7, 1.0)
METHODS = ("ours", "peer")


def scale_bin(scale: float) -> str:
    """The label of the working-scale bin of ``scale``, e.g. ``"0.35-0.5"``."""
    lo = 0.0
    for hi in SCALE_EDGES:
        if scale < hi:
            return f"{lo:g}-{hi:g}"
        lo = hi
    return f">={lo:g}"


def image_row(gt: np.ndarray, labels: dict[str, np.ndarray]) -> dict:
    """Per method, on the true particles that every method matches: the
    mean IoU and the median ratio of the matched area to the true one; and
    how many true particles each method matches."""
    from imageextract.evaluation.metrics import aji_plus, aji_plus_parts, matched_pairs

    pairs = {m: matched_pairs(gt, lab) for m, lab in labels.items()}
    both = set.intersection(*(set(p["gt_id"].tolist()) for p in pairs.values()))
    row: dict = {"n_true": int(np.unique(gt[gt > 0]).size), "n_both": len(both)}
    for m, p in pairs.items():
        keep = np.isin(p["gt_id"], sorted(both))
        row[m] = {"n_matched": int(p["gt_id"].size),
                  "aji_plus": float(aji_plus(gt, labels[m])),
                  "aji_parts": aji_plus_parts(gt, labels[m]),
                  "iou": float(p["iou"][keep].mean()) if both else None,
                  "area_ratio": float(np.median(p["pred_area"][keep] / p["gt_area"][keep]))
                  if both else None}
    return row


def summarise(rows: list[dict]) -> dict:
    """Means over the images with a particle that every method matches,
    overall and per working-scale bin: the mean IoU of each method, the
    mean of the per-image IoU differences (ours minus the peer's) and its
    sum over the bin's images."""
    def block(rr: list[dict]) -> dict:
        rr = [r for r in rr if r["n_both"]]
        if not rr:
            return {"n_images": 0}
        diff = np.array([r["ours"]["iou"] - r["peer"]["iou"] for r in rr])
        out = {"n_images": len(rr), "n_particles": int(sum(r["n_both"] for r in rr))}
        for m in METHODS:
            out[m] = {"iou": float(np.mean([r[m]["iou"] for r in rr])),
                      "area_ratio": float(np.median([r[m]["area_ratio"] for r in rr]))}
        out["iou_difference"] = {
            "mean": float(diff.mean()),
            "standard_error": float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1
            else float("nan"),
            "sum": float(diff.sum()), "ours_better": int((diff > 0).sum())}
        return out

    def parts(rr: list[dict]) -> dict:
        if not rr:
            return {"n_images": 0}
        return {"n_images": len(rr)} | {
            m: {k: float(np.mean([r[m]["aji_parts"][k] for r in rr]))
                for k in rr[0][m]["aji_parts"]} for m in METHODS}

    bins = [scale_bin(lo) for lo in (0.0, *SCALE_EDGES)]
    in_bin = {b: [r for r in rows if scale_bin(r["scale"]) == b] for b in bins}
    return {"all": block(rows), "by_scale": {b: block(rr) for b, rr in in_bin.items()},
            "aji_parts": {"all": parts(rows), "by_scale": {b: parts(rr)
                                                          for b, rr in in_bin.items()}}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="test", help="the split compare.py ran the peer on")
    ap.add_argument("--model", default="bpartis-emps")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--peer", default=str(ROOT / "benchmarks" / ".peer-work" / "predictions"),
                    help="the peer's label PNGs, one per image")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out",
                    default=str(ROOT / "benchmarks" / "results" / "outline_match_test.json"))
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import read_label_png
    from imageextract.segment.base import to_rgb_uint8
    from imageextract.segment.bpartis import BPartIS

    data, peer = Path(args.data), Path(args.peer)
    if not data.is_dir():
        print(f"EMPS not found at {data}", file=sys.stderr)
        return 2
    stems = split_stems(data, args.split)[:args.limit]
    missing = [s for s in stems if not (peer / f"{s}.png").is_file()]
    if missing:
        print(f"no peer label map for {len(missing)} images in {peer} (first: {missing[0]}); "
              "run benchmarks/compare.py first", file=sys.stderr)
        return 2
    backend = BPartIS(model=args.model, threads=args.threads)
    rows = []
    t0 = time.perf_counter()
    for stem in tqdm(stems, desc="images"):
        rgb, gt = load_item(data, stem)
        res = backend.segment_rgb(to_rgb_uint8(rgb))
        labels = {"ours": res["labels"], "peer": read_label_png(peer / f"{stem}.png")}
        rows.append({"stem": stem, "scale": float(res["scale"])} | image_row(gt, labels))
    summary = summarise(rows)
    for name, v in [("all", summary["all"]), *summary["by_scale"].items()]:
        if not v["n_images"]:
            continue
        d = v["iou_difference"]
        print(f"{name:>9}: {v['n_images']:3d} images, {v['n_particles']:5d} particles; "
              f"IoU ours {v['ours']['iou']:.3f}, peer {v['peer']['iou']:.3f}, "
              f"difference {d['mean']:+.3f} (s.e. {d['standard_error']:.3f}, sum {d['sum']:+.2f})")
    for name, v in [("all", summary["aji_parts"]["all"]),
                    *summary["aji_parts"]["by_scale"].items()]:
        if v["n_images"]:
            print(f"{name:>9}: AJI+ union, " + "; ".join(
                f"{m} " + " ".join(f"{k} {x:.4f}" for k, x in v[m].items()) for m in METHODS))
    out = {"split": args.split, "model": args.model, "weights": backend.weights,
           "peer_predictions": str(peer), "n_images": len(rows),
           "seconds": round(time.perf_counter() - t0, 1),
           "command": "python benchmarks/bench_outline_match.py " + " ".join(sys.argv[1:]),
           "summary": summary, "rows": rows}
    write_json(out, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
