"""A second, specialised network for the images the main one finds few particles in.

    python benchmarks/bench_specialist.py --specialist models/bpartis-emps-rods
    python benchmarks/bench_specialist.py --specialist DIR --split train-fit \\
        --stems held_out.txt --out benchmarks/results/specialist_held_out.json
    python benchmarks/bench_specialist.py --specialist DIR --split test --views plain
    python benchmarks/bench_specialist.py --rows-from benchmarks/results/specialist_val.json \
        --margins 0,0.01,0.03 --out OUT.json   # the rules again, no segmentation

Why: the shipped network misses single rods and wires (test AP50 0.47 on
rods against 0.97 on compact particles), and a network trained with rods
drawn five times as often finds them but loses on compact particles.
``inference.specialist`` lets both work: where the main network keeps at
most ``max_particles`` particles (or elongated ones), the specialist
segments the image too, and the result whose particles are surer
(:func:`~imageextract.segment.bpartis.inference.scale_confidence`: mean
score times one minus uncertainty) is kept.

Every image (in each of ``--views``, as in ``bench_val_views.py``) is
segmented by both networks, each with its own size model, rescorer and
outline refiner and with the specialist option off; both are scored
(mean of AP50 and AJI+, the model-selection score).  Then each rule of a
grid (``max_particles`` x ``min_elongation`` x ``max_confidence``) is
scored offline: it takes the specialist's result where it would ask the
specialist and that result is surer (with each of ``--margins`` added to
the specialist's confidence: does favouring it pay?).  A rule is compared
with the main network alone per image (mean over views), with the paired
bootstrap win rate.

Writes ``benchmarks/results/specialist.json``: per view, both networks'
metrics, confidences, particle counts and elongations; per rule, the means
of AP, AP50, AJI+ and the score, how many results it took from the
specialist, and the paired comparison.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_val_views import (METRICS, VIEWS, paired_difference, per_image, score,  # noqa: E402
                             summarise, view)

#: The rules scored: ``max_particles`` and ``min_elongation`` (None: off),
#: and ``max_confidence`` (None: asked whatever the main network's confidence).
MAX_PARTICLES = (0, 1, 2, 3, 5, 10, 20)
MIN_ELONGATION = (None, 2.0, 3.0)
MAX_CONFIDENCE = (None, 0.99, 0.97, 0.95, 0.93, 0.9)


def takes_specialist(row: dict, max_particles: int, min_elongation: float | None,
                     max_confidence: float | None = None, *, margin: float = 0.0) -> bool:
    """Would the rule ``(max_particles, min_elongation, max_confidence)``
    keep the specialist's result for ``row`` (one image view: the main
    network's particle count ``n``, median elongation ``elongation`` and
    both confidences)?  The backend's own test decides whether it asks
    (:func:`~imageextract.segment.bpartis.asks_specialist`); the backend
    takes the specialist's result where its confidence is higher
    (``margin`` 0), and a ``margin`` > 0 favours the specialist by that much.

    >>> row = {"main": {"n": 2, "elongation": 1.1, "confidence": 0.6},
    ...        "specialist": {"confidence": 0.8}}
    >>> takes_specialist(row, 3, None), takes_specialist(row, 1, None)
    (True, False)
    >>> unsure = dict(row, specialist={"confidence": 0.5})
    >>> takes_specialist(row, 1, 1.05), takes_specialist(unsure, 3, None)
    (True, False)
    >>> takes_specialist(row, 3, None, 0.6), takes_specialist(row, 3, None, 0.7)
    (False, True)
    >>> [takes_specialist(unsure, 3, None, margin=m) for m in (0.05, 0.2)]
    [False, True]
    """
    m = row["main"]
    return (_asks(m, max_particles, min_elongation, max_confidence)
            and row["specialist"]["confidence"] + margin > m["confidence"])


def _asks(main: dict, max_particles: int, min_elongation: float | None,
          max_confidence: float | None) -> bool:
    """Does the rule ask the specialist on a view whose main result is ``main``?"""
    from imageextract.segment.bpartis import asks_specialist

    rule = {"max_particles": max_particles, "min_elongation": min_elongation,
            "max_confidence": max_confidence}
    return asks_specialist(main["n"], main["elongation"], rule, main["confidence"])


def asked(rows: list[dict], max_particles: int, min_elongation: float | None,
          max_confidence: float | None = None) -> int:
    """How many of ``rows`` the rule asks the specialist on (its cost)."""
    return int(sum(_asks(r["main"], max_particles, min_elongation, max_confidence)
                   for r in rows))


def score_rules(rows: list[dict], *, margins: tuple[float, ...] = (0.0,)) -> list[dict]:
    """Every rule of the grid, with each take ``margin`` of ``margins``, on
    ``rows`` (see :func:`takes_specialist`)."""
    stems = [r["stem"] for r in rows]
    base = per_image(stems, [score(r["main"]) for r in rows])
    out = []
    for mp, me, mc in itertools.product(MAX_PARTICLES, MIN_ELONGATION, MAX_CONFIDENCE):
        n_asked = asked(rows, mp, me, mc)
        for mg in margins:
            picked = [r["specialist"] if takes_specialist(r, mp, me, mc, margin=mg)
                      else r["main"] for r in rows]
            scores = [score(p) for p in picked]
            d = paired_difference(base, per_image(stems, scores))
            out.append({"max_particles": mp, "min_elongation": me, "max_confidence": mc,
                        "margin": mg, "asked": n_asked,
                        "taken": int(sum(p is r["specialist"] for p, r in zip(picked, rows))),
                        "mean": {k: float(np.mean([p[k] for p in picked])) for k in METRICS}
                        | {"score": float(np.mean(scores))},
                        "difference": d["mean"], "standard_error": d["standard_error"],
                        "win_rate": d["candidate_win_rate"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", default="bpartis-emps",
                    help="installed model name or model folder (default: the shipped one)")
    ap.add_argument("--specialist", help="model name or folder (required unless --rows-from)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--views", default=",".join(VIEWS),
                    help=f"comma-separated, among {','.join(VIEWS)} (default: all five)")
    ap.add_argument("--stems", help="file of stems (one per line) to keep from the split")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--margins", default="0",
                    help="comma-separated take margins to score each rule with (default 0: "
                         "the backend's rule, the surer result is kept)")
    ap.add_argument("--rows-from", metavar="JSON",
                    help="score the rules on the rows of an earlier result file instead of "
                         "segmenting again (--specialist, --split, --views, --stems ignored)")
    ap.add_argument("--out", help="result file (default benchmarks/results/specialist.json; "
                    "required with --rows-from, so that a re-scoring never overwrites it)")
    args = ap.parse_args(argv)
    try:
        margins = tuple(float(m) for m in args.margins.split(",") if m)
    except ValueError:
        margins = ()
    if not margins or not all(np.isfinite(margins)):
        print(f"--margins must be comma-separated numbers, got {args.margins!r}",
              file=sys.stderr)
        return 2
    if args.rows_from:
        if not args.out:
            print("--rows-from needs --out (the file to write the re-scored rules to)",
                  file=sys.stderr)
            return 2
        try:
            res = json.loads(Path(args.rows_from).read_text())
            rows = res["rows"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"--rows-from {args.rows_from}: not a bench_specialist result ({err})",
                  file=sys.stderr)
            return 2
        res = dict(res, rules=score_rules(rows, margins=margins), rows_from=args.rows_from)
        return report(res, Path(args.out))
    if not args.specialist:
        print("--specialist is required (a model name or folder) unless --rows-from is given",
              file=sys.stderr)
        return 2
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    views = tuple(v for v in args.views.split(",") if v)
    if not views or any(v not in VIEWS for v in views):
        print(f"--views must name some of {','.join(VIEWS)}, got {args.views!r}",
              file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.metrics import all_metrics
    from imageextract.segment.bpartis import BPartIS
    from imageextract.segment.bpartis.inference import particle_axes, scale_confidence
    from imageextract.segment.bpartis.train import read_stems

    nets = {"main": BPartIS(model=args.main, threads=args.threads),
            "specialist": BPartIS(model=args.specialist, threads=args.threads)}
    stems = split_stems(args.data, args.split)
    if args.stems:
        keep = set(read_stems(args.stems))
        stems = [s for s in stems if s in keep]
    rows = []
    t0 = time.time()
    for stem in tqdm(stems, desc="images"):
        rgb, truth = load_item(args.data, stem)
        for v in views:
            x, gt = view(v, rgb, truth)
            row = {"stem": stem, "view": v}
            for name, net in nets.items():
                res = net.segment_rgb(x, specialist=None)
                m = all_metrics(gt, res["labels"])
                elong = particle_axes(res["labels"])[1]
                row[name] = {k: float(m[k]) for k in METRICS} | {
                    "confidence": scale_confidence(res), "n": int(res["scores"].size),
                    "elongation": None if np.isnan(elong) else float(elong)}
            rows.append(row)
    rules = score_rules(rows, margins=margins)
    res = {"split": args.split, "n_images": len(stems), "views": list(views),
           "main": {"model": args.main, "weights": nets["main"].weights},
           "specialist": {"model": args.specialist, "weights": nets["specialist"].weights},
           "networks_alone": summarise(rows, tuple(nets))["all_views"],
           "rules": rules, "rows": rows, "total_wall_seconds": round(time.time() - t0, 1)}
    return report(res, Path(args.out or ROOT / "benchmarks" / "results" / "specialist.json"))


def report(res: dict, out: Path) -> int:
    """Write the result ``res`` to ``out`` and print its summary."""
    from imageextract.evaluation.harness import write_json

    write_json(res, out)
    for n, m in res["networks_alone"].items():
        print(f"{n:10s} alone: AP {m['ap']:.4f} AP50 {m['ap50']:.4f} AJI+ {m['aji_plus']:.4f} "
              f"score {m['score']:.4f}")
    for r in res["rules"]:
        m = r["mean"]
        print(f"max_particles {r['max_particles']:2d} min_elongation {r['min_elongation']!s:4s} "
              f"max_confidence {r['max_confidence']!s:4s} margin {r.get('margin', 0.0):g}: "
              f"asked {r['asked']}, "
              f"AP {m['ap']:.4f} AP50 {m['ap50']:.4f} AJI+ {m['aji_plus']:.4f} "
              f"score {m['score']:.4f} ({r['difference']:+.4f}, s.e. "
              f"{r['standard_error']:.4f}, wins {r['win_rate']:.0%}; {r['taken']} taken)")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
