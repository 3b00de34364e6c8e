"""Rods longer than any the networks were trained on: held-out rod images stretched along their rods.

    python benchmarks/bench_stretched_rods.py --specialist models/bpartis-emps-rods \\
        --specialist /path/to/run --out benchmarks/results/stretched_rods.json

Why: the test split holds single rods and wires of aspect ratio 10-19; the
training images' rods reach a median aspect ratio of about 7, and the rods
specialist is judged on 11 rod images held out of its training
(``models/bpartis-emps-rods/held_out.txt``), whose rods are no longer.  Here
every held-out image is stretched ``--factor`` times along the axis its rods
mostly lie along (the labels with it, nearest neighbour), so that the same
rods come out about twice as long, and segmented as it is and turned by 90
degrees (the network is not symmetric in x and y).  A stretched image is new
to every network; no number here is used to train anything.

For each ``--specialist`` (a model name or folder), both the main backend
with that specialist in place of its own (``full``: the backend as shipped,
the specialist asked by its rule) and the specialist alone are scored (mean
of AP50 and AJI+, the model-selection score).  Writes per view and per model
the scores, and per model the means.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stretch(rgb: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` (bilinear) and ``labels`` (nearest) stretched ``factor`` times
    along x when most of the particles (median of ``|sin(orientation)|``
    above 1/sqrt(2)) lie nearer the x axis, else along y.

    >>> lab = np.zeros((20, 30), np.int32); lab[8:11, 5:25] = 1  # a rod along x
    >>> rgb = np.zeros((20, 30, 3), np.uint8)
    >>> [a.shape[:2] for a in stretch(rgb, lab, 2.0)]
    [(20, 60), (20, 60)]
    >>> int((stretch(rgb, lab, 2.0)[1] == 1).sum())  # 3 x 40 px
    120
    """
    from skimage.measure import regionprops
    from skimage.transform import resize

    props = regionprops(labels)
    along_x = bool(props) and np.median([abs(np.sin(p.orientation)) for p in props]) > 0.7071
    h, w = labels.shape
    shape = (h, int(round(w * factor))) if along_x else (int(round(h * factor)), w)
    out = resize(rgb, shape + rgb.shape[2:], order=1, preserve_range=True)
    lab = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), lab.astype(labels.dtype)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", default="bpartis-emps", help="the main model (name or folder)")
    ap.add_argument("--specialist", action="append", required=True,
                    help="a rods specialist to judge (name or folder; repeat for several)")
    ap.add_argument("--stems", default=str(ROOT / "models" / "bpartis-emps-rods" / "held_out.txt"))
    ap.add_argument("--split", default="train-fit")
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stretched_rods.json"))
    args = ap.parse_args(argv)
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    if not args.factor > 0:
        print(f"--factor must be > 0, got {args.factor}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import write_json
    from imageextract.evaluation.metrics import all_metrics
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.train import read_stems

    wanted = set(read_stems(args.stems))
    stems = [s for s in split_stems(args.data, args.split) if s in wanted]
    main_backend = BPartIS(model=args.main, threads=args.threads)
    if main_backend.specialist is None:
        print(f"{args.main} asks no specialist (inference.specialist)", file=sys.stderr)
        return 2
    specs = {name: BPartIS(model=name, threads=args.threads) for name in args.specialist}

    def score(gt, labels) -> float:
        m = all_metrics(gt, labels)
        return float((m["ap50"] + m["aji_plus"]) / 2)

    rows = []
    t0 = time.time()
    for stem in tqdm(stems, desc="images"):
        rgb, truth = load_item(args.data, stem)
        x, gt = stretch(rgb, truth, args.factor)
        for view in ("plain", "rot90"):
            xv, gv = (x, gt) if view == "plain" else (np.ascontiguousarray(np.rot90(x)),
                                                      np.ascontiguousarray(np.rot90(gt)))
            row = {"stem": stem, "view": view}
            for name, spec in specs.items():
                rule = {**main_backend.specialist, "model": name}
                full = main_backend.segment_rgb(xv, specialist=rule)
                alone = spec.segment_rgb(xv, specialist=None)
                row[name] = {"full": score(gv, full["labels"]),
                             "alone": score(gv, alone["labels"]),
                             "took_specialist": "weights" in full}
            rows.append(row)
    summary = {name: {"full": float(np.mean([r[name]["full"] for r in rows])),
                      "alone": float(np.mean([r[name]["alone"] for r in rows])),
                      "taken": int(sum(r[name]["took_specialist"] for r in rows)),
                      "weights": spec.weights}
               for name, spec in specs.items()}
    res = {"split": args.split, "stems": stems, "factor": args.factor, "main": args.main,
           "main_weights": main_backend.weights, "summary": summary, "rows": rows,
           "total_wall_seconds": round(time.time() - t0, 1)}
    write_json(res, Path(args.out))
    for name, s in summary.items():
        print(f"{name}: with {args.main} {s['full']:.4f} (specialist taken {s['taken']} of "
              f"{len(rows)}), alone {s['alone']:.4f}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
