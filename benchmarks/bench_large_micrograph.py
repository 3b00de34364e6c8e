"""A 2048×2048 micrograph through a backend at full resolution: particle
count, sizes and time against the known truth.

    python benchmarks/bench_large_micrograph.py --backend bpartis
    python benchmarks/bench_large_micrograph.py --backend classical

The image is synthetic (``imageextract.data.synthetic_micrograph``: dark
discs of radius 10–18 px on a noisy, uneven background, so the true
diameters are known); it is segmented as ``imageextract analyze`` would, and
the matched particles' equivalent diameters are compared with the truth.
Also records the process's peak resident memory (``peak_rss_mb``; Linux and
macOS) before and after the segmentation.  Writes ``benchmarks/results/large_<backend>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, MB (None where the
    ``resource`` module is missing)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e6 if sys.platform == "darwin" else 1e3), 1)  # bytes / KiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="bpartis")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--particles", type=int, default=900)
    ap.add_argument("--save-image", help="also write the micrograph here (PNG)")
    ap.add_argument("--out")
    args = ap.parse_args()
    import numpy as np
    from PIL import Image

    import imageextract as ie
    from imageextract.data import synthetic_micrograph
    from imageextract.evaluation.harness import write_json
    from imageextract.evaluation.metrics import aji_plus, paper_metrics

    img, truth = synthetic_micrograph((args.size, args.size), n_particles=args.particles,
                                      radius_px=(10.0, 18.0), dark_particles=True, seed=7)
    if args.save_image:
        Image.fromarray(img).save(args.save_image)
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    seg = ie.segment(img, backend=args.backend)
    secs = time.perf_counter() - t0
    m = paper_metrics(truth, seg.labels)
    true_d = np.sqrt(4 * np.bincount(truth.ravel())[1:] / np.pi)
    pred_d = np.sqrt(4 * np.bincount(seg.labels.ravel())[1:] / np.pi)
    res = {"backend": args.backend, "weights": seg.weights, "shape": list(img.shape),
           "true_particles": int(truth.max()), "found_particles": int(seg.labels.max()),
           "labels_shape": list(seg.labels.shape), "seconds": round(secs, 2),
           "true_median_ecd_px": float(np.median(true_d)),
           "found_median_ecd_px": float(np.median(pred_d)) if pred_d.size else None,
           **{k: float(v) for k, v in m.items() if k in ("ap", "ap50", "ap75", "mean_iou")},
           "aji_plus": float(aji_plus(truth, seg.labels)),
           "peak_rss_mb_before": rss_before, "peak_rss_mb": _peak_rss_mb(),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "load_avg": list(os.getloadavg())}}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"large_{args.backend}.json"
    write_json(res, out)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
