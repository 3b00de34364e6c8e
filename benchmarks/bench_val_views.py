"""Compare two bpartis models on an EMPS split, each image seen five ways.

    python benchmarks/bench_val_views.py --candidate /work/runs/c10
    python benchmarks/bench_val_views.py --baseline models/bpartis-emps \\
        --candidate path/to/model --split val --out benchmarks/results/val_views.json

Why: the val split has 26 images, and single images flip between a good and
a bad result under changes a user would never notice (a mirror image, JPEG
quality 95).  One such flip moves the split's mean by 0.02, more than most
of the differences a shipping decision turns on.  Here every image is also
segmented mirrored left-right and top-bottom, rotated by 90 degrees and saved
as JPEG 95; the labels follow the image exactly, so the ground truth stays
the same.  The models are compared on each image's mean over its five views
(score = mean of AP50 and AJI+, the model-selection score), with the paired
bootstrap win rate over images
(:func:`~imageextract.segment.bpartis.train.paired_win_rate`).

Writes ``benchmarks/results/val_views.json``: per view and per image, both
models' metrics, and the summary.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The views of each image, in order (see :func:`view`).
VIEWS = ("plain", "mirror_lr", "mirror_tb", "rot90", "jpeg95")
METRICS = ("ap", "ap50", "ap75", "mean_iou", "aji_plus")


def score(m: dict) -> float:
    """The model-selection score: mean of AP50 and AJI+."""
    return (m["ap50"] + m["aji_plus"]) / 2


def view(name: str, rgb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image and its ground truth as seen in view ``name`` (one of
    :data:`VIEWS`).  Geometric views move the labels with the pixels; JPEG 95
    leaves them as they are."""
    if name == "jpeg95":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=95)
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB")), labels
    moves = {"plain": lambda a: a, "mirror_lr": lambda a: a[:, ::-1],
             "mirror_tb": lambda a: a[::-1], "rot90": np.rot90}
    if name not in moves:
        raise ValueError(f"view must be one of {VIEWS}, got {name!r}")
    return (np.ascontiguousarray(moves[name](rgb)), np.ascontiguousarray(moves[name](labels)))


def per_image(stems: list[str], values: list[float]) -> list[float]:
    """The mean of ``values`` over each image's views (``stems`` gives the
    image of each value), images in the order they first appear.

    >>> per_image(["a", "b", "a"], [1.0, 0.0, 0.0])
    [0.5, 0.0]
    """
    order = list(dict.fromkeys(stems))
    return [float(np.mean([v for st, v in zip(stems, values) if st == s])) for s in order]


def paired_difference(baseline: list[float], candidate: list[float]) -> dict:
    """Candidate minus baseline over paired per-image scores: the mean, its
    standard error and the paired bootstrap win rate of the candidate."""
    from imageextract.segment.bpartis.train import paired_win_rate

    diff = np.subtract(candidate, baseline)
    return {"mean": float(diff.mean()) if diff.size else float("nan"),
            "standard_error": float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1
            else float("nan"),
            "candidate_win_rate": paired_win_rate(candidate, baseline) if diff.size
            else float("nan")}


def summarise(rows: list[dict], names: tuple[str, str]) -> dict:
    """Means per view and over all views, and the paired comparison of each
    image's mean score over its views (``names``: baseline, candidate)."""
    out: dict = {"views": {}}
    for v in sorted({r["view"] for r in rows}, key=VIEWS.index):
        rr = [r for r in rows if r["view"] == v]
        out["views"][v] = {n: {k: float(np.mean([r[n][k] for r in rr])) for k in METRICS}
                           | {"score": float(np.mean([score(r[n]) for r in rr]))}
                           for n in names}
    out["all_views"] = {n: {k: float(np.mean([r[n][k] for r in rows])) for k in METRICS}
                        | {"score": float(np.mean([score(r[n]) for r in rows]))}
                        for n in names}
    stems = [r["stem"] for r in rows]
    per = {n: per_image(stems, [score(r[n]) for r in rows]) for n in names}
    out["per_image_mean_score"] = per
    out["difference"] = paired_difference(per[names[0]], per[names[1]])
    return out


def settings_id(model: str) -> str:
    """A fingerprint of ``model``'s ``inference`` settings (sha256 of its
    canonical JSON, 12 hex digits): two result files whose sides carry the
    same weights and fingerprint ran the same backend."""
    import hashlib

    from imageextract.weights import load_spec

    text = json.dumps(load_spec(model).config.get("inference", {}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stored_rows(spec: str, weights: str, *, split: str, settings: str) -> dict:
    """The metrics of one side of an earlier result file, by (stem, view).

    ``spec`` is ``FILE:SIDE`` (SIDE ``baseline`` or ``candidate``).  The
    file's split and that side's weights must be ``split`` and ``weights``,
    and its settings fingerprint (:func:`settings_id`) ``settings`` where the
    file records one (files written before 2026-12-03 do not), so rows of
    another model are not taken for this one's.
    """
    path, _, side = spec.rpartition(":")
    if side not in ("baseline", "candidate") or not path:
        raise ValueError(f"--baseline-rows must be FILE:baseline or FILE:candidate, "
                         f"got {spec!r}")
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--baseline-rows: cannot read {path}: {err}") from None
    info = old.get(side, {})
    if (old.get("split") != split or info.get("weights") != weights
            or info.get("settings", settings) != settings):
        raise ValueError(f"--baseline-rows: {path} holds split {old.get('split')!r}, "
                         f"{side} weights {info.get('weights')!r}, settings "
                         f"{info.get('settings')!r}; wanted split {split!r}, weights "
                         f"{weights!r}, settings {settings!r}")
    return {(r["stem"], r["view"]): r[side] for r in old["rows"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="bpartis-emps",
                    help="installed model name or model folder (default: the shipped one)")
    ap.add_argument("--candidate", required=True, help="model folder (config.json, weights.pt)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "val_views.json"))
    ap.add_argument("--baseline-rows", metavar="FILE:SIDE",
                    help="take the baseline's metrics from the rows of an earlier result file "
                         "(SIDE: its baseline or candidate) instead of segmenting again; the "
                         "model and weights there must be --baseline's")
    args = ap.parse_args(argv)
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.datasets import load_item, split_stems
    from imageextract.evaluation.harness import write_json
    from imageextract.evaluation.metrics import all_metrics
    from imageextract.segment.bpartis import BPartIS

    names = ("baseline", "candidate")
    models = dict(zip(names, (BPartIS(model=args.baseline, threads=args.threads),
                              BPartIS(model=args.candidate, threads=args.threads))))
    stems = split_stems(args.data, args.split)[:args.limit]
    stored = None
    if args.baseline_rows:
        try:
            stored = stored_rows(args.baseline_rows, models["baseline"].weights,
                                 split=args.split, settings=settings_id(args.baseline))
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
    rows = []
    t0 = time.time()
    for stem in tqdm(stems, desc="images"):
        rgb, truth = load_item(args.data, stem)
        for v in VIEWS:
            x, gt = view(v, rgb, truth)
            row = {"stem": stem, "view": v}
            for n, bp in models.items():
                if n == "baseline" and stored is not None:
                    if (stem, v) not in stored:
                        print(f"{args.baseline_rows} has no row for {stem} {v}",
                              file=sys.stderr)
                        return 2
                    row[n] = stored[stem, v]
                    continue
                m = all_metrics(gt, bp.segment_rgb(x)["labels"])
                row[n] = {k: float(m[k]) for k in METRICS}
            rows.append(row)
    res = {"split": args.split, "n_images": len(stems), "views": list(VIEWS),
           "baseline": {"model": args.baseline, "weights": models["baseline"].weights,
                        "settings": settings_id(args.baseline),
                        "rows_from": args.baseline_rows},
           "candidate": {"model": args.candidate, "weights": models["candidate"].weights,
                         "settings": settings_id(args.candidate)},
           "summary": summarise(rows, names), "rows": rows,
           "total_wall_seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    write_json(res, out)
    s = res["summary"]
    for v, m in s["views"].items():
        print(f"{v:10s} baseline {m['baseline']['score']:.4f}  candidate "
              f"{m['candidate']['score']:.4f}")
    d = s["difference"]
    print(f"all views: baseline {s['all_views']['baseline']['score']:.4f}, candidate "
          f"{s['all_views']['candidate']['score']:.4f}; per-image difference "
          f"{d['mean']:+.4f} (s.e. {d['standard_error']:.4f}), candidate wins "
          f"{d['candidate_win_rate']:.1%} of paired resamples -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
