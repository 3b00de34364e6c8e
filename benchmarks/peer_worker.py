"""Run ImageDataExtractor 2.0.4's particle segmenter (BPartIS) on a list of images.

This script runs inside the peer's own virtualenv (made by ``compare.py``),
not in ours: it imports neither imageextract nor anything beyond torch,
numpy, pillow and the ``imagedataextractor`` package.

Usage::

    python peer_worker.py --list images.tsv --out DIR [--n-samples 30]

``images.tsv`` has one ``<stem>\\t<image path>`` per line.  For each image the
worker writes ``DIR/<stem>.png`` (16-bit instance labels, 0 = background) and
finally ``DIR/timings.json``: model-load seconds and, per image, wall-clock
(``time.perf_counter``) and CPU (``time.process_time``, all threads) seconds
of ``ParticleSegmenter.segment`` alone (image loading and saving excluded).
Images already done in ``DIR`` with the same settings are kept (resume),
unless ``--fresh``; their rows say ``"reused": true``, and every row made
since 2026-12-04 says when (``predicted_at``), so that a report can tell a
timing of this run from one of an earlier run.

Importing ``imagedataextractor`` runs its ``__init__``, which imports the
whole pipeline: ``chemdataextractor`` 1.3 (does not import on Python 3.11),
OpenCV, pytesseract, rdfpy, matplotlib...  The segmenter needs none of them,
so we (1) put a stand-in ``chemdataextractor`` module in ``sys.modules`` and
(2) register a stand-in ``imagedataextractor`` package whose ``__path__`` is
the installed package folder, so that ``imagedataextractor.segment`` imports
without running the package ``__init__``.  The model weights ship inside the
package (``imagedataextractor/models/seg-model.pt``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path


def import_segmenter():
    """Return ImageDataExtractor's ``ParticleSegmenter`` class and its weights path."""
    cde = types.ModuleType("chemdataextractor")

    class Document:  # stand-in; only the text-mining part of the peer uses it
        def __init__(self, *args, **kwargs):
            raise RuntimeError("chemdataextractor stand-in: not available here")

    cde.Document = Document
    sys.modules.setdefault("chemdataextractor", cde)

    spec = importlib.util.find_spec("imagedataextractor")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("imagedataextractor is not installed in this interpreter")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    pkg = types.ModuleType("imagedataextractor")
    pkg.__path__ = [str(pkg_dir)]
    pkg.__file__ = str(pkg_dir / "__init__.py")
    sys.modules["imagedataextractor"] = pkg
    from imagedataextractor.segment import ParticleSegmenter

    return ParticleSegmenter, pkg_dir / "models" / "seg-model.pt"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", required=True, help="TSV of stem<TAB>image path")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n-samples", type=int, default=30, help="MC-dropout samples (peer default 30)")
    parser.add_argument("--tu", type=float, default=0.0125, help="uncertainty threshold (peer default)")
    parser.add_argument("--no-bayesian", action="store_true", help="single deterministic pass")
    parser.add_argument("--seed", type=int, default=0, help="torch seed, reset before each image")
    parser.add_argument("--fresh", action="store_true", help="redo images already in --out")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for line in Path(args.list).read_text().splitlines():
        if line.strip():
            stem, path = line.split("\t", 1)
            items.append((stem, path))

    t0 = time.perf_counter()
    ParticleSegmenter, weights = import_segmenter()
    seg = ParticleSegmenter(
        bayesian=not args.no_bayesian, n_samples=args.n_samples, tu=args.tu, device="cpu"
    )
    load_s = time.perf_counter() - t0

    timings = {
        "peer": "imagedataextractor 2.0.4",
        "weights": str(weights),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "bayesian": not args.no_bayesian,
        "n_samples": args.n_samples,
        "tu": args.tu,
        "load_seconds": load_s,
        "images": [],
    }
    done, others = {}, []
    old_path = out / "timings.json"
    if old_path.is_file():
        old = json.loads(old_path.read_text())
        same = all(old.get(k) == timings[k] for k in ("bayesian", "n_samples", "tu", "torch"))
        if same:
            listed = {stem for stem, _ in items}
            # rows of images outside this list stay (a compare run in rounds lists a
            # slice at a time); those of listed images are reused unless --fresh
            others = [r for r in old.get("images", []) if r["stem"] not in listed]
            if not args.fresh:
                done = {r["stem"]: r for r in old.get("images", [])
                        if r["stem"] in listed and (out / f"{r['stem']}.png").is_file()}

    def save():
        # this run's rows, then those of the images outside its list
        (out / "timings.json").write_text(json.dumps(
            {**timings, "images": timings["images"] + others}, indent=2))

    for i, (stem, path) in enumerate(items):
        if stem in done:  # resume: keep the earlier run's labels and timings, marked
            timings["images"].append(dict(done[stem], reused=True))
            continue
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))  # the peer crashes on greyscale input
        torch.manual_seed(args.seed)
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            pred, _uncertainty, _original = seg.segment(image)
        wall = time.perf_counter() - w0
        cpu = time.process_time() - c0
        labels = np.asarray(pred).astype(np.int64)
        if labels.max(initial=0) > 65535 or labels.min(initial=0) < 0:
            raise SystemExit(f"{stem}: labels out of 16-bit range")
        Image.fromarray(labels.astype(np.uint16)).save(out / f"{stem}.png")
        timings["images"].append({"stem": stem, "seconds": wall, "cpu_seconds": cpu,
                                  "n_pred": int(np.count_nonzero(np.unique(labels))),
                                  "predicted_at": time.strftime("%Y-%m-%d %H:%M:%S %z")})
        print(f"[{i + 1}/{len(items)}] {stem}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
        save()  # after each image: an interrupted run keeps what it did
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
