"""The bpartis backend's last steps (join, whole rods, scale bars, coarse look): what each changes.

    python benchmarks/bench_join_fragments.py --set val-views --set train-fit \\
        --set stretched-3 --out benchmarks/results/join_fragments.json
    python benchmarks/bench_join_fragments.py --set test \\
        --out benchmarks/results/join_fragments_test.json   # reported only
    python benchmarks/bench_join_fragments.py --step whole_rods --set val-views \\
        --set stretched-3 --out benchmarks/results/whole_rods.json
    python benchmarks/bench_join_fragments.py --step scale_bars --set val-views \\
        --set train-fit --out benchmarks/results/scale_bars.json
    python benchmarks/bench_join_fragments.py --step coarse_pass --set val-views \\
        --set train-fit --out benchmarks/results/coarse_pass.json

Why: shown a rod or wire longer than those it was trained on, the
``bpartis`` backend often returns it as a few pieces lying end to end
(``inference.join_fragments``, :mod:`imageextract.segment.bpartis.fragments`).

Each image of each ``--set`` is segmented once by ``--model`` as a user would
run it (specialist included) with the join off; then each option set of
``--options`` (JSON objects, ``{}``: the defaults) joins the final particles
offline, which is what the backend does last.  Scores (mean of AP50 and
AJI+) are paired per image against the join off, per set and per shape
(rods: median ground-truth aspect ratio above 2.5).

``--step whole_rods`` judges the step before the join instead
(``inference.whole_rods``, :func:`~imageextract.segment.bpartis.fragments.whole_rods`:
a rod whose pieces were found apart made whole from the network's
foreground): each image is segmented with both steps off, the baseline is
the model's own join (as shipped) and each option set of ``--options`` is
a ``whole_rods`` run before that join.

``--step scale_bars`` judges the step after the join
(``inference.drop_scale_bars``, :func:`~imageextract.segment.bpartis.off_scale_bars`:
particles lying on a scale bar drawn on the image dropped): each image is
segmented as shipped with that step off, which is the baseline, and each
option set of ``--options`` is an ``off_scale_bars`` run on its result.

``--step coarse_pass`` judges the very last step (``inference.coarse_pass``,
:meth:`~imageextract.segment.bpartis.BPartIS.coarse_look`: the image
segmented again at a smaller working scale and the large, sure particles
found there added): each image is segmented as shipped with that step off,
the baseline, and each option set is a coarse look on its result.

Sets:

- ``val-views``: the 26 val images, each seen five ways (``bench_val_views.py``);
- ``train-fit``: the 340 train-fit images (the networks were trained on them);
- ``stretched-N``: the rod images of val and train-fit stretched N times along
  their rods and also turned a quarter turn (``bench_stretched_rods.py``):
  rods longer than any the networks were trained on;
- ``test``: the 99 test images, reported only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_val_views import VIEWS, paired_difference, score, view  # noqa: E402

from imageextract.evaluation.harness import write_json  # noqa: E402
from imageextract.evaluation.metrics import all_metrics  # noqa: E402


def set_views(data: Path, name: str):
    """``(key, rgb, truth, rod)`` of every view of set ``name``."""
    from bench_stretched_rods import stretch

    from imageextract.segment.bpartis.train import elongated_images, load_split

    if name.startswith("stretched-"):
        factor = float(name.split("-", 1)[1])
        for split in ("val", "train-fit"):
            items = load_split(data, split)
            for (stem, rgb, gt), rod in zip(items, elongated_images(items)):
                if rod:
                    x, g = stretch(rgb, gt, factor)
                    yield f"{split}/{stem}/plain", x, g, True
                    yield (f"{split}/{stem}/rot90", np.ascontiguousarray(np.rot90(x)),
                           np.ascontiguousarray(np.rot90(g)), True)
        return
    split = "val" if name == "val-views" else name
    items = load_split(data, split)
    for (stem, rgb, gt), rod in zip(items, elongated_images(items)):
        for v in VIEWS if name == "val-views" else ("plain",):
            x, g = view(v, rgb, gt)
            yield f"{split}/{stem}/{v}", x, g, bool(rod)


def summarize(rows: list[dict], names: list[str]) -> dict:
    """Per set and shape: the mean score with the join off and with each
    option set, paired per image (views of one image averaged)."""
    out = {}
    for s in dict.fromkeys(r["set"] for r in rows):
        out[s] = {}
        for shape in ("all", "compact", "elongated"):
            rr = [r for r in rows if r["set"] == s
                  and (shape == "all" or (shape == "elongated") == r["rod"])]
            if not rr:
                continue
            images = list(dict.fromkeys(r["key"].rsplit("/", 1)[0] for r in rr))

            def per_image(col: str) -> list[float]:
                return [float(np.mean([r[col] for r in rr
                                       if r["key"].rsplit("/", 1)[0] == i])) for i in images]

            off = per_image("off")
            out[s][shape] = {"n_images": len(images), "n_views": len(rr),
                             "off": float(np.mean(off))}
            for n in names:
                on = per_image(n)
                out[s][shape][n] = {"score": float(np.mean(on)),
                                    "changed_views": sum(r["changed"][n] > 0 for r in rr),
                                    "difference": paired_difference(off, on)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bpartis-emps", help="model name or folder")
    ap.add_argument("--set", action="append", dest="sets", required=True,
                    help="val-views, train-fit, stretched-N (N a factor, e.g. 3) or test; "
                         "repeat for several")
    ap.add_argument("--step", choices=("join", "whole_rods", "scale_bars", "coarse_pass"),
                    default="join",
                    help="the step judged: join_fragments (default), whole_rods (before "
                         "the model's own join), scale_bars (drop_scale_bars, after the "
                         "join) or coarse_pass (last)")
    ap.add_argument("--options", action="append", default=None,
                    help='a JSON object of the step\'s options (default: \'{}\', the '
                         'defaults); repeat for several')
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "join_fragments.json"))
    args = ap.parse_args(argv)
    for s in args.sets:
        ok = s in ("val-views", "train-fit", "test")
        if s.startswith("stretched-"):
            try:
                ok = float(s.split("-", 1)[1]) > 0
            except ValueError:
                ok = False
        if not ok:
            print(f"--set must be val-views, train-fit, stretched-N or test, got {s!r}",
                  file=sys.stderr)
            return 2
    try:
        options = [json.loads(o) for o in (args.options or ["{}"])]
        if not all(isinstance(o, dict) for o in options):
            raise ValueError("not an object")
    except ValueError as err:
        print(f"--options must be JSON objects: {err}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from imageextract.segment.bpartis import BPartIS, off_scale_bars, step_options
    from imageextract.segment.bpartis.fragments import join_fragments, whole_rods

    config_key = {"join": "join_fragments", "whole_rods": "whole_rods",
                  "scale_bars": "drop_scale_bars", "coarse_pass": "coarse_pass"}[args.step]
    try:
        checked = [step_options(config_key, o) for o in options]
    except ValueError as err:
        print(f"--options: {err}", file=sys.stderr)
        return 2
    if not (Path(args.data) / "train.csv").is_file():
        print(f"EMPS data not found at {args.data}", file=sys.stderr)
        return 2
    names = [json.dumps(o, sort_keys=True) for o in options]
    bp = BPartIS(model=args.model, threads=args.threads)
    join = bp.join_fragments if args.step == "whole_rods" else None  # the shipped join after
    # the steps the images are segmented without: the one judged and, for
    # whole_rods, the join that follows it
    off_steps = {"join": {"join_fragments": None},
                 "whole_rods": {"join_fragments": None, "whole_rods": None},
                 "scale_bars": {"drop_scale_bars": None},
                 "coarse_pass": {"coarse_pass": None}}[args.step]

    def apply(res: dict, rgb: np.ndarray, opts: dict) -> tuple[dict, int]:
        """The judged step on ``res``: its result and how many particles it changed."""
        if args.step == "join":
            j = join_fragments(res, **opts)
            return j, j["joined"]
        if args.step == "scale_bars":
            j = off_scale_bars(rgb, res, **opts)
            return j, int(np.size(res["scores"]) - np.size(j["scores"]))
        if args.step == "coarse_pass":
            j = bp.coarse_look(rgb, res, opts)
            return j, j["coarse_added"]
        j = whole_rods(res, **opts)
        return (join_fragments(j, **join) if j["whole_rods"] and join is not None else j,
                j["whole_rods"])

    def scored(gt, labels) -> float:
        return float(score(all_metrics(gt, labels)))

    rows = []
    t0 = time.time()
    for s in args.sets:
        for key, rgb, gt, rod in tqdm(list(set_views(Path(args.data), s)), desc=s):
            res = bp.segment_rgb(rgb, **off_steps)
            base = res if join is None else join_fragments(res, **join)
            off = scored(gt, base["labels"])
            row = {"set": s, "key": key, "rod": rod, "off": off, "changed": {}}
            for n, opts in zip(names, checked):
                j, row["changed"][n] = apply(res, rgb, opts)
                row[n] = scored(gt, j["labels"]) if row["changed"][n] else off
            rows.append(row)
    summary = summarize(rows, names)
    res = {"model": args.model, "weights": bp.weights, "step": args.step,
           "after": join, "options": dict(zip(names, checked)),
           "summary": summary, "rows": rows, "total_wall_seconds": round(time.time() - t0, 1)}
    write_json(res, Path(args.out))
    for s, by_shape in summary.items():
        for shape, v in by_shape.items():
            for n in names:
                d = v[n]["difference"]
                print(f"{s:12s} {shape:9s} {v['n_images']:3d} images  off {v['off']:.4f}  {n}: "
                      f"{v[n]['score']:.4f} ({d['mean']:+.4f}, s.e. {d['standard_error']:.4f}; "
                      f"{v[n]['changed_views']} views changed)")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
