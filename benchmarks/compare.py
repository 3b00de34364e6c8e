"""Compare our segmentation backends with ImageDataExtractor 2.0.4 on EMPS.

Runs each of our backends (default ``classical`` and ``bpartis``; a backend
that does not load, e.g. for want of trained weights, is recorded as skipped)
and the peer, ImageDataExtractor 2.0.4's BPartIS segmenter, on the same EMPS
test images, scores everything with :func:`imageextract.evaluation.harness.run_evaluation`
(the metrics of ``docs/METRICS.md``) and writes

- ``benchmarks/results/compare.json`` -- settings, machine, per method the
  metric means, wall-clock and CPU seconds per image (median and mean) and
  the per-image rows; plus every method's means on the peer's images alone;
- ``benchmarks/results/compare.md`` -- the same as markdown tables.

Both also split the images by particle shape (``by_shape``): *elongated*
where the median ground-truth aspect ratio is above
:data:`ELONGATED_ASPECT` (rods, wires, fibres), *compact* otherwise, with
every method's means on each group.  Elongated particles are where the
backends differ most, so the split says where a change helped.

The peer runs in its own virtualenv (``benchmarks/.peer-venv``, created on
first use: ``torch==2.13.0``, then ``imagedataextractor==2.0.4`` without its
dependencies, then ``numpy`` and ``pillow``, which are all its segmenter
needs) through ``benchmarks/peer_worker.py``, which writes 16-bit PNG label
maps and per-image timings to ``benchmarks/.peer-work/predictions``.  Images
already done there with the same settings are reused (``--fresh-peer`` redoes
them): the peer takes minutes per image on a small CPU.

The methods take turns: ``--rounds K`` (default 9) rounds, each on every
K-th image (ours, then the peer), so that their timings spread over the
whole run and a slower stretch of a shared machine weighs on all of them
alike (one method on all images, then the next, as ``--rounds 1`` does, let
such a stretch move the speed ratio by 20 % on 2026-12-04).

Usage (from the project root, project virtualenv active)::

    python benchmarks/compare.py --peer-limit 20          # ours on all 99, peer on 20
    python benchmarks/compare.py --limit 5 --no-peer      # quick look
    python benchmarks/compare.py --fresh-peer --rounds 9  # side by side, taking turns
                                                          # (9 is the default)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from imageextract.datasets import split_stems  # noqa: E402
from imageextract.errors import ImageExtractError  # noqa: E402
from imageextract.evaluation.harness import read_label_png, run_evaluation  # noqa: E402
from imageextract.evaluation.metrics import ELONGATED_ASPECT, is_elongated  # noqa: E402

logger = logging.getLogger("compare")

PEER_NAME = "imagedataextractor-2.0.4"
PEER_PIP_STEPS = (
    ["torch==2.13.0"],
    ["--no-deps", "imagedataextractor==2.0.4"],
    ["numpy", "pillow"],
)
METRICS = ("ap", "ap50", "ap75", "mean_iou", "aji_plus", "coco_ap", "pq")


# --------------------------------------------------------------------------
# helpers


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": load,
    }


def _timing_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    wall = [r["seconds"] for r in rows]
    cpu = [r.get("cpu_seconds", float("nan")) for r in rows]
    return {
        "wall_seconds_median": statistics.median(wall),
        "wall_seconds_mean": statistics.fmean(wall),
        "cpu_seconds_median": statistics.median(cpu),
        "cpu_seconds_mean": statistics.fmean(cpu),
    }


def _means(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.fmean(r[k] for r in rows) for k in METRICS}


def _method_entry(name: str, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    rows = result["per_image"]
    entry = {
        "method": name,
        "status": "ok",
        "n_images": len(rows),
        "mean": {k: result["mean"][k] for k in METRICS},
        **_timing_summary(rows),
        **extra,
        "per_image": rows,
    }
    return entry


def shape_groups(data: Path, stems: list[str], *,
                 threshold: float = ELONGATED_ASPECT) -> dict[str, str]:
    """``{stem: "elongated" | "compact"}`` by the median aspect ratio of
    each image's ground-truth particles (:func:`is_elongated`)."""
    return {stem: "elongated" if is_elongated(read_label_png(data / "segmaps" / f"{stem}.png"),
                                              threshold=threshold) else "compact"
            for stem in stems}


#: The particle shapes ``--shape`` selects (see :func:`shape_groups`).
SHAPES = ("all", "compact", "elongated")


def select_stems(data: Path, stems: list[str], *, shape: str = "all",
                 limit: int | None = None) -> list[str]:
    """The first ``limit`` of ``stems`` whose particles have ``shape``
    ("all", "compact" or "elongated"; see :func:`shape_groups`)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be all, compact or elongated, got {shape!r}")
    if shape != "all":
        groups = shape_groups(data, stems)
        stems = [s for s in stems if groups[s] == shape]
    return stems[:limit] if limit is not None else stems


def by_shape(methods: list[dict[str, Any]], groups: dict[str, str]) -> dict[str, Any]:
    """Every ok method's means on each shape group (on the images it ran on)."""
    out: dict[str, Any] = {}
    for group in ("compact", "elongated"):
        keep = {s for s, g in groups.items() if g == group}
        entry: dict[str, Any] = {"n_images": len(keep), "methods": {}}
        for m in methods:
            rows = [r for r in m.get("per_image", []) if r["stem"] in keep]
            if m["status"] == "ok" and rows:
                entry["methods"][m["method"]] = {"n_images": len(rows), "mean": _means(rows)}
        out[group] = entry
    return out


# --------------------------------------------------------------------------
# our backends


def run_ours(name: str, data: Path, split: str, stems: list[str], progress: bool) -> dict[str, Any]:
    logger.info("backend %s on %d images", name, len(stems))
    t0 = time.perf_counter()
    try:
        result = run_evaluation(data, split=split, backend=name, stems=stems, progress=progress)
    except ImageExtractError as err:
        logger.warning("backend %s skipped: %s", name, err)
        return {"method": name, "status": "skipped", "reason": str(err)}
    return _method_entry(name, result, weights=result.get("weights", "none"),
                         total_seconds=time.perf_counter() - t0)


def interleaved_slices(stems: list[str], rounds: int) -> list[list[str]]:
    """``stems`` dealt into ``rounds`` slices (round r takes every
    ``rounds``-th image from the r-th), empty ones left out.

    >>> interleaved_slices(["a", "b", "c", "d", "e"], 2)
    [['a', 'c', 'e'], ['b', 'd']]
    >>> interleaved_slices(["a"], 3)
    [['a']]
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return [part for r in range(rounds) if (part := stems[r::rounds])]


def merge_entries(entries: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
    """One method's entries of several rounds (:func:`run_ours` /
    :func:`run_peer` on slices of the images) as one entry: the per-image
    rows of all rounds in the order of ``order``, their means and timing
    medians, the rounds' total seconds summed, reused peer rows counted
    together.  A round that did not run makes the whole entry that round's."""
    if len(entries) == 1:
        return entries[0]
    failed = [e for e in entries if e.get("status") != "ok"]
    if failed:
        return failed[0]
    rank = {stem: i for i, stem in enumerate(order)}
    rows = sorted((r for e in entries for r in e["per_image"]), key=lambda r: rank[r["stem"]])
    merged = {k: v for k, v in entries[0].items() if k != "per_image"}
    merged.update(n_images=len(rows), mean=_means(rows), **_timing_summary(rows),
                  total_seconds=sum(e.get("total_seconds", 0.0) for e in entries),
                  rounds=len(entries))
    if "reused" in entries[0]:
        parts = [e["reused"] for e in entries if e.get("reused")]
        when = sorted(w for r in parts for w in (r["predicted_from"], r["predicted_to"]) if w)
        merged["reused"] = ({"images": sum(r["images"] for r in parts),
                             "predicted_from": when[0] if when else None,
                             "predicted_to": when[-1] if when else None} if parts else None)
    merged["per_image"] = rows
    return merged


# --------------------------------------------------------------------------
# the peer


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _peer_ready(py: Path) -> bool:
    if not py.is_file():
        return False
    probe = ("import importlib.util, torch, numpy, PIL; "
             "assert importlib.util.find_spec('imagedataextractor')")
    return subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0


def ensure_peer_venv(venv: Path) -> Path:
    """Create the peer's virtualenv if needed; return its interpreter."""
    py = _venv_python(venv)
    if _peer_ready(py):
        return py
    if not py.is_file():
        logger.info("creating peer virtualenv %s", venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for args in PEER_PIP_STEPS:
        logger.info("peer venv: pip install %s", " ".join(args))
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *args], check=True)
    if not _peer_ready(py):
        raise RuntimeError(f"peer virtualenv {venv} still cannot import torch/imagedataextractor")
    return py


def _peer_versions(py: Path) -> dict[str, str]:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('imagedataextractor', 'torch', 'numpy', 'pillow')}))")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def run_peer(data: Path, split: str, stems: list[str], *, venv: Path, work: Path,
             fresh: bool, n_samples: int, progress: bool) -> dict[str, Any]:
    try:
        py = ensure_peer_venv(venv)
    except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
        logger.error("cannot set up the peer: %s", err)
        return {"method": PEER_NAME, "status": "failed",
                "reason": f"setting up its virtualenv: {err}"}
    pred_dir = work / "predictions"
    work.mkdir(parents=True, exist_ok=True)
    listing = work / "images.tsv"
    listing.write_text("".join(f"{s}\t{(data / 'images' / f'{s}.png').resolve()}\n" for s in stems))
    cmd = [str(py), str(HERE / "peer_worker.py"), "--list", str(listing), "--out", str(pred_dir),
           "--n-samples", str(n_samples)]
    if fresh:
        cmd.append("--fresh")
    logger.info("peer on %d images: %s", len(stems), " ".join(cmd))
    log_path = work / "worker.log"
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, stdout=None if progress else log,
                              stderr=subprocess.STDOUT if not progress else None)
    if proc.returncode != 0:
        return {"method": PEER_NAME, "status": "failed",
                "reason": f"peer_worker.py exited with {proc.returncode}; see {log_path}"}
    timings = json.loads((pred_dir / "timings.json").read_text())
    by_stem = {r["stem"]: r for r in timings["images"]}
    result = run_evaluation(data, split=split, predictions=pred_dir, stems=stems, progress=False)
    for row in result["per_image"]:
        row["seconds"] = float(by_stem[row["stem"]]["seconds"])
        row["cpu_seconds"] = float(by_stem[row["stem"]]["cpu_seconds"])
    settings = {k: timings.get(k)
                for k in ("bayesian", "n_samples", "tu", "torch_threads", "load_seconds")}
    return _method_entry(PEER_NAME, result,
                         weights="imagedataextractor/models/seg-model.pt (bundled)",
                         peer_settings=settings, peer_versions=_peer_versions(py),
                         total_seconds=time.perf_counter() - t0,
                         reused=reuse_summary([by_stem[s] for s in stems]))


def reuse_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How many of the peer's timing ``rows`` (``timings.json`` of
    ``peer_worker.py``) were reused from an earlier run rather than measured
    in this one, and when those were predicted (None: none reused).

    >>> reuse_summary([{"stem": "a", "reused": True, "predicted_at": "2026-12-04 14:20:01"},
    ...                {"stem": "b", "reused": True, "predicted_at": "2026-12-04 14:14:30"},
    ...                {"stem": "c"}])
    {'images': 2, 'predicted_from': '2026-12-04 14:14:30', 'predicted_to': '2026-12-04 14:20:01'}
    >>> reuse_summary([{"stem": "c"}]) is None
    True
    """
    old = [r for r in rows if r.get("reused")]
    if not old:
        return None
    when = sorted(r["predicted_at"] for r in old if r.get("predicted_at"))
    return {"images": len(old), "predicted_from": when[0] if when else None,
            "predicted_to": when[-1] if when else None}


# --------------------------------------------------------------------------
# report


def _fmt_row(name: str, n: int, mean: dict[str, float], timing: dict[str, float] | None) -> str:
    cells = [name, str(n)] + [f"{mean[k]:.3f}" for k in METRICS]
    if timing is not None:
        cells += [f"{timing['wall_seconds_median']:.2f} / {timing['wall_seconds_mean']:.2f}",
                  f"{timing['cpu_seconds_median']:.2f} / {timing['cpu_seconds_mean']:.2f}"]
    return "| " + " | ".join(cells) + " |"


def write_markdown(report: dict[str, Any], path: Path) -> None:
    head = "| method | images | AP | AP50 | AP75 | mean IoU | AJI+ | COCO AP | PQ |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    lines = [
        f"# {report['split']} split of EMPS"
        + (f" ({report['shape']} particles only)" if report.get("shape", "all") != "all" else "")
        + ": our backends vs ImageDataExtractor 2.0.4",
        "",
        f"Generated by `benchmarks/compare.py` on {report['date']} "
        f"({report['machine']['cpu']}, {report['machine']['cpu_count']} cores, "
        f"load average at start {report['machine']['load_average_1_5_15']}). "
        "Metrics as in `docs/METRICS.md`; seconds are per image, segmentation only "
        "(model loading excluded), median / mean."
        + (f" The methods ran in {report['rounds']} rounds, each on one image in "
           f"{report['rounds']} of the list (ours, then the peer), so that a slower stretch "
           "of the machine weighs on all of them alike."
           if report.get("rounds", 1) > 1 else ""),
        "",
        "## Each method on the images it ran on",
        "",
        head + " wall s (median / mean) | CPU s (median / mean) |",
        sep + "---:|---:|",
    ]
    skipped = []
    for m in report["methods"]:
        if m["status"] == "ok":
            lines.append(_fmt_row(m["method"], m["n_images"], m["mean"], m))
        else:
            skipped.append(f"- `{m['method']}` {m['status']}: {m['reason']}")
    subset = report.get("peer_subset")
    if subset:
        lines += ["", f"## All methods on the peer's {len(subset['stems'])} images", "", head, sep]
        for name, mean in subset["means"].items():
            lines.append(_fmt_row(name, len(subset["stems"]), mean, None))
    shapes = report.get("by_shape")
    if shapes:
        lines += ["", "## By particle shape", "",
                  f"Elongated: median ground-truth aspect ratio above {ELONGATED_ASPECT} "
                  "(rods, wires); compact: the rest. Each method on its own images."]
        for group, entry in shapes.items():
            n = entry["n_images"]
            lines += ["", f"**{group}** ({n} image{'' if n == 1 else 's'})", "", head, sep]
            for name, m in entry["methods"].items():
                lines.append(_fmt_row(name, m["n_images"], m["mean"], None))
    if skipped:
        lines += ["", "## Not run", "", *skipped]
    notes = list(report.get("notes") or [])
    for m in report["methods"]:
        r = m.get("reused")
        if r:
            span = (f", predicted {r['predicted_from']} to {r['predicted_to']}"
                    if r.get("predicted_from") else ", predicted before this was recorded")
            notes.append(f"`{m['method']}`: the labels and timings of {r['images']} of its "
                         f"{m['n_images']} images come from an earlier run on this machine "
                         f"(`benchmarks/.peer-work`{span}); `--fresh-peer` measures them "
                         "again in this run.")
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "emps"),
                        help="EMPS folder (default ../shared/data/emps)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N images (default: all)")
    parser.add_argument("--shape", choices=SHAPES, default="all",
                        help="only the images of this particle shape (see by_shape)")
    parser.add_argument("--peer-limit", type=int, default=None,
                        help="the peer on only the first N of those (it takes minutes per image)")
    parser.add_argument("--backends", default="classical,bpartis",
                        help="comma-separated names of ours")
    parser.add_argument("--no-peer", action="store_true", help="skip ImageDataExtractor")
    parser.add_argument("--peer-venv", default=str(HERE / ".peer-venv"))
    parser.add_argument("--peer-work", default=str(HERE / ".peer-work"))
    parser.add_argument("--peer-samples", type=int, default=30,
                        help="MC-dropout samples (peer default 30)")
    parser.add_argument("--fresh-peer", action="store_true", help="redo peer images already done")
    parser.add_argument("--rounds", type=int, default=9, metavar="K",
                        help="run the methods in K rounds, each on every K-th image, ours then "
                             "the peer, so that a slow stretch of a shared machine weighs on "
                             "every method alike (default %(default)s; 1: each method on all "
                             "images in turn)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    data = Path(args.data).resolve()
    stems = split_stems(data, args.split)
    stems = select_stems(data, stems, shape=args.shape, limit=args.limit)
    peer_stems = stems[: args.peer_limit] if args.peer_limit is not None else stems
    progress = not args.no_progress
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "data": str(data),
        "split": args.split,
        "shape": args.shape,
        "n_images": len(stems),
        "machine": _machine(),
        "command": " ".join([Path(sys.argv[0]).name,
                             *(argv if argv is not None else sys.argv[1:])]),
        "methods": [],
    }
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    runs: dict[str, list[dict[str, Any]]] = {}
    in_peer = set(peer_stems)
    for r, part in enumerate(interleaved_slices(stems, args.rounds)):
        if args.rounds > 1:
            logger.info("round %d of %d: %d images", r + 1, args.rounds, len(part))
        for name in names:
            runs.setdefault(name, []).append(run_ours(name, data, args.split, part, progress))
        peer_part = [st for st in part if st in in_peer]
        if not args.no_peer and peer_part:
            runs.setdefault(PEER_NAME, []).append(run_peer(
                data, args.split, peer_part, venv=Path(args.peer_venv),
                work=Path(args.peer_work), fresh=args.fresh_peer,
                n_samples=args.peer_samples, progress=progress))
    report["rounds"] = args.rounds
    report["methods"] = [merge_entries(entries, stems) for entries in runs.values()]
    report["machine"]["load_average_at_end"] = _machine()["load_average_1_5_15"]

    ok = [m for m in report["methods"] if m["status"] == "ok"]
    peer_ok = any(m["method"] == PEER_NAME for m in ok)
    if not args.no_peer and len(peer_stems) < len(stems) and peer_ok:
        keep = set(peer_stems)
        report["peer_subset"] = {
            "stems": peer_stems,
            "means": {m["method"]: _means([r for r in m["per_image"] if r["stem"] in keep])
                      for m in ok},
        }
    report["by_shape"] = by_shape(report["methods"], shape_groups(data, stems))
    report["notes"] = [
        "The machine is shared (2 cores, other jobs running), so wall-clock seconds include "
        "waiting for a core; CPU seconds (process_time, all threads) are steadier.",
        "The peer predicts with its defaults: Bayesian (30 Monte-Carlo dropout passes at "
        "512x512, torch seed 0 per image), uncertainty filter tu = 0.0125; RGB input.",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "compare.md")
    print((out / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
