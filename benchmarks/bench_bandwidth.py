"""Can the clustering tell neighbouring particles apart with the bandwidth
the network learned?

    python benchmarks/bench_bandwidth.py --split test \\
        --out benchmarks/results/bandwidth_test.json

Why: the clustering grows a particle from its seed pixel with that pixel's
bandwidth ``sigma`` (per axis): every unclaimed pixel whose embedding lies
where ``phi = exp(-sum (e - c)^2 / (2 sigma^2)) > 0.5`` joins it.  The loss
pulls each particle's embeddings towards its centroid, so a neighbour whose
centroid lies inside that ellipse is claimed with it however well the
network places the embeddings.  This benchmark runs the network once on
each image of the split at the training scale (the image's median true
particle brought to the model's ``target_diameter``), reads each true
particle's median sigma (px, per axis) and counts the particles whose
nearest neighbour's centroid lies inside their ``phi > 0.5`` ellipse:
particles the clustering cannot separate from that neighbour with these
bandwidths.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imageextract.evaluation.harness import write_json  # noqa: E402

#: An image counts as crowded for its bandwidth when more than this share of
#: its particles has a neighbour within reach.
CROWDED_SHARE = 0.25


def particle_bandwidths(log_s: np.ndarray, labels: np.ndarray, *,
                        coord_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled particle's median bandwidth in px, per axis.

    Parameters
    ----------
    log_s : (2, M, N) array
        ``log(1 / (2 sigma^2))`` per axis (y, x), in embedding units.
    labels : (M, N) int array
        Particles 1..K (0 background).
    coord_scale : float
        Pixels per embedding unit.

    Returns
    -------
    ids : (K,) int array
        The labels present, ascending.
    sigma : (K, 2) float array
        Median sigma (y, x) in px over each particle's pixels.

    Examples
    --------
    >>> lab = np.zeros((4, 4), int); lab[:2] = 1
    >>> ls = np.full((2, 4, 4), math.log(1 / (2 * 0.25 ** 2)))  # sigma 0.25 units
    >>> particle_bandwidths(ls, lab, coord_scale=8.0)[1].tolist()
    [[2.0, 2.0]]
    """
    from scipy import ndimage

    from imageextract.segment.bpartis.cluster import sigma_px

    ids = np.unique(labels[labels > 0])
    sigma = sigma_px(np.asarray(log_s, np.float64), coord_scale=coord_scale)
    out = np.array([ndimage.median(sigma[c], labels, ids) for c in (0, 1)], float)
    return ids, out.reshape(2, ids.size).T


def within_reach(centroids: np.ndarray, sigma: np.ndarray, *,
                 phi_threshold: float = 0.5) -> np.ndarray:
    """Whether each particle's nearest neighbour (by the particle's own
    elliptical distance) has its centroid where the particle's ``phi``
    exceeds ``phi_threshold``.

    Parameters
    ----------
    centroids : (K, 2) array
        Centroids (y, x) in px.
    sigma : (K, 2) array
        Each particle's bandwidth (y, x) in px.

    Returns
    -------
    (K,) bool array (all False for fewer than two particles)

    Examples
    --------
    >>> c = np.array([[0.0, 0.0], [0.0, 20.0], [40.0, 100.0]])
    >>> s = np.array([[15.0, 26.0]] * 3)
    >>> within_reach(c, s).tolist()  # 20 px along x: (20 / 26)^2 < 2 ln 2
    [True, True, False]
    """
    c = np.asarray(centroids, float)
    if len(c) < 2:
        return np.zeros(len(c), bool)
    s = np.asarray(sigma, float)
    d = c[None, :, :] - c[:, None, :]  # (K, K, 2): row a, neighbour b
    q = ((d / s[:, None, :]) ** 2).sum(2)
    np.fill_diagonal(q, np.inf)
    return q.min(1) < 2.0 * math.log(1.0 / phi_threshold)


def image_row(log_s: np.ndarray, labels: np.ndarray, *, coord_scale: float) -> dict:
    """One image at the training scale: its particles' bandwidths and how
    many have a neighbour within reach."""
    from scipy import ndimage

    ids, sigma = particle_bandwidths(log_s, labels, coord_scale=coord_scale)
    if ids.size == 0:
        return {"n": 0, "n_within_reach": 0, "sigma_y": [], "sigma_x": []}
    cents = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, ids))
    close = within_reach(cents, sigma)
    return {"n": int(ids.size), "n_within_reach": int(close.sum()),
            "sigma_y": sigma[:, 0].round(2).tolist(), "sigma_x": sigma[:, 1].round(2).tolist()}


def summarise(rows: list[dict]) -> dict:
    """Over the images of ``rows`` (each with ``shape``): the bandwidth
    percentiles, the share of particles with a neighbour within reach and
    the images where more than :data:`CROWDED_SHARE` of them have one; also
    per particle shape."""
    def block(rr: list[dict]) -> dict:
        rr = [r for r in rr if r["n"]]
        if not rr:
            return {"n_images": 0}
        sy = np.concatenate([r["sigma_y"] for r in rr])
        sx = np.concatenate([r["sigma_x"] for r in rr])
        n, close = sum(r["n"] for r in rr), sum(r["n_within_reach"] for r in rr)
        share = [r["n_within_reach"] / r["n"] for r in rr]
        crowded = sorted(((s, r["stem"]) for s, r in zip(share, rr) if s > CROWDED_SHARE),
                         reverse=True)
        return {"n_images": len(rr), "n_particles": n,
                "sigma_y_px_p10_50_90": np.percentile(sy, [10, 50, 90]).round(1).tolist(),
                "sigma_x_px_p10_50_90": np.percentile(sx, [10, 50, 90]).round(1).tolist(),
                "share_within_reach": close / n,
                "mean_image_share_within_reach": float(np.mean(share)),
                "crowded_images": [{"stem": s, "share": round(v, 3)} for v, s in crowded]}

    out = {"all": block(rows)}
    for shape in sorted({r["shape"] for r in rows}):
        out[shape] = block([r for r in rows if r["shape"] == shape])
    return out


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.metrics import is_elongated
    from imageextract.segment.base import to_rgb_uint8
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.inference import (network_maps, resize_labels,
                                                        resize_rgb, scaled_shape)
    from imageextract.segment.bpartis.train import base_scale

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    p.add_argument("--split", default="val")
    p.add_argument("--model", default="bpartis-emps", help="model name or folder")
    p.add_argument("--limit", type=int, help="first N images")
    p.add_argument("--out")
    args = p.parse_args(argv)
    t0 = time.time()
    backend = BPartIS(model=args.model, mc_samples=1)
    coord = float(backend.model_config.coord_scale)
    stems = split_stems(args.data, args.split)[: args.limit]
    rows = []
    for stem in tqdm(stems, desc="images"):
        rgb, truth = load_item(args.data, stem)
        scale = base_scale(truth, backend.target_diameter)
        shape = scaled_shape(truth.shape, scale)
        maps = network_maps(backend.net, resize_rgb(to_rgb_uint8(rgb), shape),
                            tile=backend.tile_px, overlap=backend.overlap_px,
                            canvas=backend.canvas_px)
        row = image_row(maps["log_s"], resize_labels(truth, shape), coord_scale=coord)
        rows.append({"stem": stem, "scale": round(float(scale), 4),
                     "shape": "elongated" if is_elongated(truth) else "compact"} | row)
    res = {"model": args.model, "weights": backend.weights, "split": args.split,
           "n_images": len(stems), "phi_threshold": 0.5,
           "summary": summarise(rows), "rows": rows,
           "total_wall_seconds": round(time.time() - t0, 1)}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"bandwidth_{args.split}.json")
    write_json(res, out)
    for g, b in res["summary"].items():
        if b["n_images"]:
            print(f"{g}: {b['n_images']} images, {b['n_particles']} particles; sigma px y "
                  f"{b['sigma_y_px_p10_50_90']} x {b['sigma_x_px_p10_50_90']} (p10/50/90); "
                  f"a neighbour within reach: {b['share_within_reach']:.3f} of the particles, "
                  f"{len(b['crowded_images'])} image(s) above {CROWDED_SHARE:g}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
