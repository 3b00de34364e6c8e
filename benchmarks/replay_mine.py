"""Time `imageextract mine` over replayed publisher APIs (no network).

Starts the replay server of the tests (``tests/fixtures/publishers``) on
127.0.0.1, points every source at it with ``IMAGEEXTRACT_<SOURCE>_URL``, sets
test keys, and runs ``mine`` over 5 invented articles from 3 sources
(Elsevier ×2, Europe PMC ×2, Springer Nature ×1) plus one Crossref-resolved
article, then re-runs the Elsevier batch to time the resume::

    python benchmarks/replay_mine.py [--out DIR] [--faults] [--backend classical] [--json FILE]

``--faults`` injects what the tests check: a truncated image (resumed with a
Range request), a 429 with ``Retry-After: 1`` and a 500.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "publishers"))

from pubreplay import ReplayServer  # noqa: E402

from imageextract.mining import mine  # noqa: E402

BATCHES = [
    ("elsevier", dict(dois=["10.1016/j.replay.2024.100001", "10.1016/j.replay.2024.100002"])),
    ("europepmc", dict(dois=["PMC9000001", "10.3390/nano.replay.0002"])),
    ("springer", dict(query="silver")),
    ("crossref", dict(dois=["10.1016/j.replay.2024.100001"])),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="results folder (default: a fresh temporary folder)")
    p.add_argument("--faults", action="store_true", help="inject 429/500/truncation faults")
    p.add_argument("--backend", default="classical")
    p.add_argument("--json", help="write the timings as JSON here")
    args = p.parse_args(argv)
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="replay-mine-"))
    if base.exists():
        shutil.rmtree(base)
    rows = []
    with ReplayServer() as srv:
        os.environ.update(srv.env())
        if args.faults:
            srv.fail("gr1_lrg.jpg", "truncate")
            srv.fail("/content/article/doi/10.1016/j.replay.2024.100002", "429")
            srv.fail("PMC9000001/fullTextXML", "500")
        for source, what in BATCHES + [("elsevier (re-run)", BATCHES[0][1])]:
            name = source.split()[0]
            out = base / ("crossref" if name == "crossref" else "main")
            n0 = len(srv.requests)
            t0 = time.perf_counter()
            res = mine(source=name, out_dir=out, backend=args.backend, progress=False, **what)
            wall = time.perf_counter() - t0
            rows.append({"source": source, "articles": res.n_articles, "micrographs": res.n_done,
                         "skipped": res.n_skipped, "non_micrograph_figures": res.n_non_micrograph,
                         "failed": res.n_failed, "requests": len(srv.requests) - n0,
                         "wall_s": round(wall, 2), "stages_s": res.seconds})
    with sqlite3.connect(base / "main" / "results.sqlite") as con:
        n_particles = con.execute("SELECT COUNT(*) FROM particles").fetchone()[0]
        summary = con.execute(
            "SELECT doi, figure, material, modality, round(nm_per_px, 3), calibration_source, "
            "n_particles, round(d50, 1), size_unit FROM micrographs_literature ORDER BY doi").fetchall()
    print(f"results in {base}  ({n_particles} particle rows in main/)")
    print("| source | articles | micrographs | skipped | non-EM figures | failed | requests | wall s "
          "| fetch | images | panels+scalebar | segment+measure | export |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["stages_s"]
        print(f"| {r['source']} | {r['articles']} | {r['micrographs']} | {r['skipped']} | "
              f"{r['non_micrograph_figures']} | {r['failed']} | {r['requests']} | {r['wall_s']} | "
              f"{s.get('fetch', 0)} | {s.get('images', 0)} | {s.get('panels', 0)} | "
              f"{s.get('segment+measure', 0)} | {s.get('export', 0)} |")
    print("\n| doi | figure | material | modality | nm/px | calibration | particles | D50 |")
    print("|---|---|---|---|---|---|---|---|")
    for doi, fig, mat, mod, nm, cal, n, d50, unit in summary:
        print(f"| {doi} | {fig} | {mat} | {mod} | {nm} | {cal} | {n} | {d50} {unit} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "micrographs": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
