"""How tightly a bpartis network collapses each particle's pixel embeddings,
axis by axis.

    python benchmarks/bench_embedding_axes.py
    python benchmarks/bench_embedding_axes.py --model path/to/model --split val \\
        --out benchmarks/results/embedding_axes.json

Each pixel's embedding is its coordinate plus the predicted offset; a
perfect network sends every pixel of a particle to one point.  For each
true particle (at least ``--min-area`` px at the working scale) this takes
the interquartile range of the embeddings along y and along x, divided by
the interquartile range of the pixel coordinates along the same axis: 0 is
a collapsed particle, 1 is no offset at all.  Every image runs at the scale
its ground truth says (the particles' median diameter brought to the
training size, as in training's validation), once as it is and once
turned a quarter turn (the particle lists then swap axes): an asymmetry
that follows the network's output channels rather than the image content
shows up in both.

Why: the 2026-12-02 weights collapse y tighter than x on all 26 val images
(25 of 26 turned; per image 0.117 against 0.201, over all particles 0.196
against 0.474), and their learned sigma is 14 px along y and 24 px along x in every
image; rods lying along x come apart, and a rod image turned a quarter turn
often scores quite differently.  A retrained network should bring the two axes together.

Writes ``benchmarks/results/embedding_axes.json``: per view the median and
mean ratios per axis over all particles, the median over images of each
image's median (a few dense images hold most of the particles), the number
of images whose x ratio is above their y ratio, the median sigma (px) per
axis inside the particles, and the particle count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def iqr(values: np.ndarray) -> float:
    """Interquartile range of ``values``."""
    q75, q25 = np.percentile(values, [75, 25])
    return float(q75 - q25)


def axis_spread(offsets: np.ndarray, labels: np.ndarray, *, coord_scale: float,
                min_area: int = 50) -> np.ndarray:
    """``(K, 2)`` IQR of the embeddings over IQR of the coordinates, along y
    and x, for each particle of ``labels`` with at least ``min_area`` pixels
    (``offsets`` (2, H, W) in embedding units, as the network gives them).

    >>> lab = np.zeros((20, 20), int); lab[2:12, 4:14] = 1
    >>> yy, xx = np.mgrid[:20, :20].astype(float)
    >>> off = np.stack([(7 - yy) / 8.0, np.zeros((20, 20))])  # y collapsed, x untouched
    >>> axis_spread(off, lab, coord_scale=8.0).round(3).tolist()
    [[0.0, 1.0]]
    """
    from scipy import ndimage

    rows = []
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is None:
            continue
        ys, xs = np.nonzero(labels[box] == i)
        if ys.size < min_area:
            continue
        ys, xs = ys + box[0].start, xs + box[1].start
        ey = offsets[0][ys, xs] * coord_scale + ys
        ex = offsets[1][ys, xs] * coord_scale + xs
        rows.append([iqr(ey) / max(iqr(ys), 1.0), iqr(ex) / max(iqr(xs), 1.0)])
    return np.asarray(rows, np.float64).reshape(-1, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bpartis-emps", help="model name or folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--min-area", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "embedding_axes.json"))
    a = ap.parse_args(argv)

    from imageextract.evaluation.harness import write_json
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.cluster import sigma_px
    from imageextract.segment.bpartis.inference import (
        network_maps, resize_labels, resize_rgb, scaled_shape)
    from imageextract.segment.bpartis.train import base_scale, load_split

    t0 = time.time()
    backend = BPartIS(model=a.model, threads=a.threads)
    coord = backend.model_config.coord_scale
    items = load_split(a.data, a.split)
    out = {"model": a.model, "weights": backend.weights, "split": a.split,
           "n_images": len(items), "min_area": a.min_area, "views": {}}
    for view, k in (("plain", 0), ("rot90", 1)):
        spread, sig = [], []
        for _, rgb, truth in items:
            scale = base_scale(truth, backend.target_diameter or 48.0)
            rgb, truth = np.rot90(rgb, k), np.rot90(truth, k)
            shape = scaled_shape(truth.shape, scale)
            lab = resize_labels(np.ascontiguousarray(truth), shape)
            maps = network_maps(backend.net, resize_rgb(np.ascontiguousarray(rgb), shape),
                                tile=backend.tile_px, overlap=backend.overlap_px,
                                canvas=backend.canvas_px)
            spread.append(axis_spread(maps["offsets"], lab, coord_scale=coord,
                                      min_area=a.min_area))
            fg = lab > 0
            if fg.any():
                sig.append([np.median(sigma_px(maps["log_s"][c][fg], coord_scale=coord))
                            for c in (0, 1)])
        s = np.concatenate(spread)
        # a few dense images hold most particles: also each image's median, then their median
        per = np.array([np.median(v, 0) for v in spread if len(v)])
        out["views"][view] = {
            "particles": int(len(s)),
            "median_ratio": {"y": float(np.median(s[:, 0])), "x": float(np.median(s[:, 1]))},
            "per_image_median_ratio": {"y": float(np.median(per[:, 0])),
                                       "x": float(np.median(per[:, 1]))},
            "images_x_above_y": int(np.sum(per[:, 1] > per[:, 0])),
            "mean_ratio": {"y": float(s[:, 0].mean()), "x": float(s[:, 1].mean())},
            "median_sigma_px": {"y": float(np.median([v[0] for v in sig])),
                                "x": float(np.median([v[1] for v in sig]))}}
        r = out["views"][view]
        print(f"{view:6s} {r['particles']} particles: IQR ratio y {r['median_ratio']['y']:.3f} "
              f"x {r['median_ratio']['x']:.3f} (per image y {r['per_image_median_ratio']['y']:.3f}"
              f" x {r['per_image_median_ratio']['x']:.3f}, x above y on "
              f"{r['images_x_above_y']} of {len(per)}); sigma y {r['median_sigma_px']['y']:.1f}"
              f" px, x {r['median_sigma_px']['x']:.1f} px")
    out["total_wall_seconds"] = round(time.time() - t0, 1)
    write_json(out, a.out)
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
