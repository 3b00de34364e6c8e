"""Plain against quarter-turned: which way up should rods be segmented?

    python benchmarks/bench_turn_rods.py
    python benchmarks/bench_turn_rods.py --model path/to/model \\
        --out benchmarks/results/turn_rods.json

Why: the shipped bpartis weights collapse a particle's pixel embeddings
less tightly along x than along y (``bench_embedding_axes.py``), so rods
lying along x come apart into pieces.  This segments every image of three
sets as it is and turned a quarter turn (``np.rot90``; the result turned
back), scores both (mean of AP50 and AJI+, the model-selection score), and
scores the rule ``inference.turn_rods`` applies: turn the image when at
least ``min_along_x`` of the particles found in the plain pass (by area)
lie along x and their median elongation is at least ``min_elongation``
(:func:`~imageextract.segment.bpartis.inference.particle_axes`), for a grid
of both.

The sets: the train-fit images of rods, wires and fibres (the network has
seen them, in both orientations, as training turns its crops at random);
the whole val split; every sixth train-fit image of compact particles (to
see what the rule costs where it should do nothing).  The test split is
not used to choose anything; ``--split test`` reports it.

Writes ``benchmarks/results/turn_rods.json``: per set and image, both
scores and the plain pass's particle axes; per rule, the mean score per set
and how many images it turned.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The rules scored: (min_along_x, min_elongation).
RULES = [(a, e) for a in (0.5, 0.6, 0.7, 0.8) for e in (1.0, 1.3, 1.5, 2.0)]


def image_sets(data: str, split: str | None) -> dict[str, list[tuple]]:
    """``{name: [(stem, rgb, labels), ...]}`` of the sets described above
    (or the whole of ``split`` when given)."""
    from imageextract.segment.bpartis.train import elongated_images, load_split

    if split:
        return {split: load_split(data, split)}
    fit = load_split(data, "train-fit")
    rods = elongated_images(fit)
    return {"train-fit rods": [it for it, e in zip(fit, rods) if e],
            "val": load_split(data, "val"),
            "train-fit compact (every 6th)": [it for it, e in zip(fit, rods) if not e][::6]}


def score_rules(sets: dict[str, list[dict]], rules) -> list[dict]:
    """For each ``(min_along_x, min_elongation)`` of ``rules``, the mean
    score per set when the images the rule turns take their ``turned``
    score and the rest their ``plain`` one, and how many it turns (rows as
    :func:`main` writes them; an image without particles is never turned).

    >>> rows = [{"plain": 0.5, "turned": 1.0, "along_x": 0.9, "elongation": 3.0},
    ...         {"plain": 0.75, "turned": 0.5, "along_x": 0.2, "elongation": 3.0}]
    >>> score_rules({"rods": rows}, [(0.6, 1.3)])
    [{'min_along_x': 0.6, 'min_elongation': 1.3, 'rods': {'score': 0.875, 'turned': 1}}]
    """
    out = []
    for a, e in rules:
        rule: dict = {"min_along_x": a, "min_elongation": e}
        for name, rows in sets.items():
            use = [r["along_x"] >= a and r["elongation"] >= e for r in rows]
            rule[name] = {"score": float(np.mean([r["turned"] if u else r["plain"]
                                                  for r, u in zip(rows, use)])),
                          "turned": int(sum(use))}
        out.append(rule)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bpartis-emps",
                    help="installed model name or model folder (default: the shipped one)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--split", help="score this split whole instead of the three sets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "turn_rods.json"))
    args = ap.parse_args(argv)
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.evaluation.harness import write_json
    from imageextract.evaluation.metrics import aji_plus, paper_metrics
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.inference import particle_axes, turned_back

    def score(gt, pred) -> float:
        return (paper_metrics(gt, pred)["ap50"] + aji_plus(gt, pred)) / 2

    bp = BPartIS(model=args.model, threads=args.threads)
    t0 = time.time()
    sets = {}
    for name, items in image_sets(args.data, args.split).items():
        rows = []
        for stem, rgb, truth in tqdm(items, desc=name):
            plain = bp.segment_rgb(rgb, turn_rods=None, specialist=None)
            turned = turned_back(bp.segment_rgb(np.ascontiguousarray(np.rot90(rgb)),
                                                turn_rods=None, specialist=None))
            frac, elong = particle_axes(plain["labels"])
            rows.append({"stem": stem, "plain": score(truth, plain["labels"]),
                         "turned": score(truth, turned["labels"]),
                         "along_x": frac, "elongation": elong})
        sets[name] = rows
    rules = score_rules(sets, RULES)
    summary = {name: {"n": len(rows), "plain": float(np.mean([r["plain"] for r in rows])),
                      "turned": float(np.mean([r["turned"] for r in rows])),
                      "best_of_both": float(np.mean([max(r["plain"], r["turned"])
                                                     for r in rows]))}
               for name, rows in sets.items()}
    res = {"model": args.model, "weights": bp.weights, "summary": summary, "rules": rules,
           "sets": sets, "total_wall_seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    write_json(res, out)
    for name, s in summary.items():
        print(f"{name}: {s['n']} images, plain {s['plain']:.4f}, turned {s['turned']:.4f}, "
              f"best of both {s['best_of_both']:.4f}")
    for r in rules:
        print(f"turn when along x >= {r['min_along_x']:.1f} and elongation >= "
              f"{r['min_elongation']:.1f}: " + ", ".join(
                  f"{n} {r[n]['score']:.4f} ({r[n]['turned']} turned)" for n in sets))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
