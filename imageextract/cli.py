"""Command line: ``imageextract <command> ...``.

Exit codes: 0 when every item succeeded, 1 when some items failed but results
were written, 2 for usage errors (bad flags, unknown backend, unreadable
pipeline file).  This is the only module that configures logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ImageExtractError

logger = logging.getLogger("imageextract")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def _unit_interval(text: str) -> float:
    v = _positive_float(text)
    if not v < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from err
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def _backend_option(text: str) -> tuple[str, object]:
    from .config import parse_value

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), parse_value(v)


def add_training_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training options that ``imageextract train bpartis`` and
    ``python -m imageextract.segment.bpartis.train`` share, added to ``p``
    (one place for their names, types and help)."""
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="model folder, e.g. models/bpartis-emps")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    p.add_argument("--epochs", type=_positive_int, help="total epochs")
    p.add_argument("--max-minutes", type=_positive_float,
                   help="stop (with a checkpoint) after this long")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes building training batches ahead of the step (for a GPU)")
    p.add_argument("--init", metavar="WEIGHTS", help="start a new run from these weights (best.pt)")
    p.add_argument("--hard-mining", type=float, default=0.0, metavar="K",
                   help="with --init: draw the training images the starting weights get wrong "
                        "up to 1+K times as often (0 = uniform)")
    p.add_argument("--elongated-weight", type=_positive_float, default=1.0, metavar="K",
                   help="draw the training images of rods, wires and fibres (median aspect "
                        "ratio above 2.5) K times as often")
    p.add_argument("--turn-consistency", type=float, nargs=2, metavar=("W_OFFSET", "W_SIGMA"),
                   help="pair each crop with its quarter-turned copy and teach the x channels "
                        "what the turned y channels do (loss weights, e.g. 0.03 0.1)")
    p.add_argument("--rotate", type=float, default=0.0, metavar="P",
                   help="turn each training crop by a random angle with probability P (rods "
                        "at every angle, not only at quarter turns)")
    p.add_argument("--paste", type=float, default=0.0, metavar="P",
                   help="paste rods cut from the training images of rods onto each training "
                        "crop with probability P (dense, crossing rods)")
    p.add_argument("--stretch", type=float, default=0.0, metavar="P",
                   help="stretch each training crop along one axis (area kept, aspect ratio up "
                        "to 2 x) with probability P (rods longer than the training images')")
    p.add_argument("--repel-weight", type=float, default=0.0, metavar="W",
                   help="weight of a loss term that narrows the bandwidth of particles whose "
                        "neighbours lie within its reach (default 0: off)")
    p.add_argument("--exclude", metavar="FILE",
                   help="text file of training stems to leave out, one per line (a held-out "
                        "set to judge the run on)")
    p.add_argument("--finish", action="store_true",
                   help="skip training: fit the size model, tune MC samples and the uncertainty "
                        "threshold on the validation split and export (runs by itself when "
                        "training completes)")
    p.add_argument("--inference-from", metavar="MODEL",
                   help="with --finish: take the inference settings of this exported model "
                        "instead of tuning them on val (a specialist finished like its base); "
                        "the rescorer and outline refiner are refitted")
    p.add_argument("--final-weights", action="store_true",
                   help="with --finish: ship the last weights of the schedule rather than the "
                        "best on the trainer's val check (best.pt)")
    p.add_argument("--rescore-factors", type=_positive_float, nargs="+", metavar="F",
                   help="with --finish: fit the rescorer on the proposals at these multiples "
                        "of the working scale found (default 1; the shipped model: 0.8 1 1.25)")
    p.add_argument("--rescore-threshold", type=_unit_interval, metavar="T",
                   help="with --finish: the rescorer's threshold (default: the one its "
                        "cross-validation scores best; the shipped model: 0.7)")
    return p


def finish_options(args: argparse.Namespace) -> dict | None:
    """The ``finish`` keywords of the options :func:`add_training_options`
    declared when ``--finish`` is given, else None (the rescorer's options
    only where given, so that ``finish`` keeps its defaults); the finishing
    options without ``--finish`` are refused (ImageExtractError)."""
    given = {"rescore_factors": args.rescore_factors,
             "rescore_threshold": args.rescore_threshold}
    given = {k: v for k, v in given.items() if v is not None}
    if args.finish:
        return {"device": args.device, "inference_from": args.inference_from,
                "final_weights": args.final_weights} | given
    if args.inference_from or args.final_weights or given:
        raise ImageExtractError("--inference-from, --final-weights, --rescore-factors and "
                                "--rescore-threshold go with --finish")
    return None


def training_options(args: argparse.Namespace) -> dict:
    """The ``train`` keywords of the options :func:`add_training_options`
    declared (not those of ``--finish``): ``resume``, ``device`` and
    ``workers`` always, the recipe's options only where given, so that a
    run without them keeps the trainer's defaults and an older recipe stays
    as it was."""
    opts = {"resume": args.resume, "device": args.device, "workers": args.workers}
    given = {"epochs": "epochs", "max_minutes": "max_minutes", "init": "init_weights",
             "hard_mining": "hard_mining", "rotate": "p_rotate", "paste": "p_paste",
             "stretch": "p_stretch"}  # option -> train() keyword, passed when not 0/None
    opts.update({kw: getattr(args, name) for name, kw in given.items() if getattr(args, name)})
    if args.elongated_weight != 1.0:
        opts["elongated_weight"] = args.elongated_weight
    if args.repel_weight:
        opts["repel_weight"] = args.repel_weight
    if args.turn_consistency:
        opts["turn_consistency"] = tuple(args.turn_consistency)
    if args.exclude:
        from .segment.bpartis.train import read_stems

        opts["exclude"] = read_stems(args.exclude)
    return opts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imageextract",
        description="Particle statistics from electron micrographs.",
        epilog="Exit codes: 0 all items succeeded, 1 some items failed (results written), 2 usage error.")
    p.add_argument("--version", action="version", version=f"imageextract {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bars")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("analyze", help="local images and folders → particle tables, plots, report",
                       description="Analyse local micrographs (PNG, JPEG, TIFF; files or folders).")
    a.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    a.add_argument("--out", required=True, metavar="DIR", help="results folder")
    a.add_argument("--backend", default="classical", help="segmentation backend (see `imageextract backends`)")
    a.add_argument("--backend-option", action="append", type=_backend_option, default=[],
                   metavar="KEY=VALUE", help="option passed to the backend (repeatable)")
    a.add_argument("--nm-per-px", type=_positive_float, metavar="X",
                   help="pixel size in nm for every image (overrides scale bars)")
    a.add_argument("--no-scalebar", action="store_true", help="do not read scale bars")
    a.add_argument("--no-split", action="store_true",
                   help="do not cut compound figures into panels (each file is one micrograph)")
    a.add_argument("--workers", type=_positive_int, default=1, metavar="N", help="local worker processes")
    a.add_argument("--scheduler", metavar="ADDR", help="Dask distributed scheduler address")
    a.add_argument("--overwrite", action="store_true",
                   help="re-process micrographs already in DIR (e.g. after changing settings)")

    r = sub.add_parser("run", help="run a declarative pipeline (TOML)",
                       description="Run a pipeline file from pipelines/; KEY=VALUE overrides "
                                   "(e.g. segmentation.backend=bpartis output.dir=out/x).")
    r.add_argument("pipeline", metavar="PIPELINE.toml")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    from .mining import add_mine_parser

    add_mine_parser(sub)

    sub.add_parser("backends", help="list segmentation backends and their weights")

    e = sub.add_parser("evaluate", help="instance-segmentation metrics on EMPS-format data")
    e.add_argument("--data", required=True, metavar="DIR", help="folder with images/, segmaps/, train.csv, test.csv")
    e.add_argument("--split", default="test", help="test, train, val or train-fit (default test)")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--backend", help="segmentation backend to run")
    g.add_argument("--predictions", metavar="DIR", help="label maps already on disk (16-bit PNG per stem)")
    e.add_argument("--backend-option", action="append", type=_backend_option, default=[],
                   metavar="KEY=VALUE", help="option passed to the backend (repeatable)")
    e.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N images")
    e.add_argument("--json", metavar="FILE", help="write means and per-image metrics as JSON")

    sb = sub.add_parser("scalebar", help="read scale bars: value, unit, bar length, nm/px",
                        description="Find the scale bar of each image, read its label and "
                                    "report the pixel size. An image without a readable bar "
                                    "gives found=false (not an error).")
    sb.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    sb.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    sb.add_argument("--ocr", default="auto", help="OCR engine: auto (default), rapidocr or tesseract")

    sp = sub.add_parser("split", help="cut compound figures into panels (PNG + panels.json)",
                        description="Split figures into panels; writes <stem>_<index>.png per "
                                    "panel and panels.json (figure, index, label, kind, bbox).")
    sp.add_argument("figures", nargs="+", metavar="FIGURE", help="figure image files")
    sp.add_argument("--out", required=True, metavar="DIR", help="output folder")
    sp.add_argument("--ocr", default="auto", help="OCR engine for panel letters: auto, rapidocr, "
                                                  "tesseract or none")

    t = sub.add_parser("train", help="train a backend (resumable)")
    t.add_argument("name", help="backend to train (bpartis)")
    add_training_options(t)
    return p


class _BarSafeHandler(logging.StreamHandler):
    """Writes log lines with ``tqdm.write``, so that a warning printed while
    a progress bar is drawn gets a line of its own above the bar instead of
    being glued to it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                          logging.INFO if verbose == 1 else logging.WARNING)
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("imageextract").setLevel(level)


def _cmd_analyze(args, progress: bool) -> int:
    from .pipeline import analyze

    res = analyze(args.paths, args.out, backend=args.backend,
                  backend_options=dict(args.backend_option), nm_per_px=args.nm_per_px,
                  read_scale_bar=not args.no_scalebar, split_panels=not args.no_split,
                  workers=args.workers,
                  scheduler=args.scheduler, overwrite=args.overwrite, progress=progress,
                  command=shlex.join(["imageextract"] + sys.argv[1:]))
    return _summary(res)


def _summary(res) -> int:
    empty = f" ({len(res.empty)} with no particles)" if res.empty else ""
    print(f"{res.n_done} analysed{empty}, {res.n_skipped} already done, {res.n_failed} failed "
          f"→ {res.out_dir}/report.html")
    for item, reason in res.failures[:20]:
        print(f"  failed: {reason if reason.startswith(item) else item + ': ' + reason}", file=sys.stderr)
    return res.exit_code


def _cmd_run(args, progress: bool) -> int:
    from .config import load_pipeline
    from .pipeline import analyze

    cfg = load_pipeline(args.pipeline, args.overrides)
    command = shlex.join(["imageextract"] + sys.argv[1:])
    if cfg["pipeline"]["kind"] == "mine":
        from .mining import mine_from_config

        return mine_from_config(cfg, progress=progress, command=command).exit_code
    paths = cfg["input"]["paths"]
    if not paths:
        raise ImageExtractError(f"{args.pipeline}: input.paths is empty")
    nm = cfg["calibration"].get("nm_per_px") or None
    res = analyze(paths, cfg["output"]["dir"], backend=cfg["segmentation"]["backend"],
                  backend_options=cfg["segmentation"].get("options", {}), nm_per_px=nm,
                  read_scale_bar=bool(cfg["calibration"].get("read_scale_bar", True)),
                  split_panels=bool(cfg["input"].get("split_panels", True)),
                  workers=int(cfg["run"].get("workers", 1)),
                  scheduler=cfg["run"].get("scheduler") or None,
                  overwrite=bool(cfg["run"].get("overwrite", False)), progress=progress,
                  command=shlex.join(["imageextract"] + sys.argv[1:]))
    return _summary(res)


def _cmd_backends() -> int:
    from .segment import SEGMENTERS
    from .weights import list_models, load_spec

    specs = {}
    for m in list_models():
        try:
            s = load_spec(m)
            specs.setdefault(s.backend, []).append(f"models/{m} ({s.tag})")
        except ImageExtractError as err:
            specs.setdefault("?", []).append(f"models/{m}: {err}")
    for name in SEGMENTERS.names():
        try:
            SEGMENTERS.get(name)
            state = "ok"
        except ImageExtractError as err:
            state = f"unavailable: {err}"
        weights = ", ".join(specs.get(name, [])) or ("no weights needed" if name == "classical" else "no weights installed")
        print(f"{name:12s} {state:4s}  {weights}")
    return EXIT_OK


def _cmd_evaluate(args, progress: bool) -> int:
    from .evaluation.harness import format_summary, run_evaluation, write_json

    res = run_evaluation(args.data, split=args.split, backend=args.backend,
                         predictions=args.predictions, limit=args.limit, progress=progress,
                         backend_options=dict(args.backend_option))
    if args.json:
        write_json(res, args.json)
    print(format_summary(res))
    return EXIT_OK


def _cmd_train(args, progress: bool) -> int:
    if args.name != "bpartis":
        raise ImageExtractError(f"no trainer for backend {args.name!r}; trainable: bpartis")
    from .segment.bpartis.train import finish, train

    fin = finish_options(args)
    if fin is not None:
        finish(args.data, args.out, progress=progress, **fin)
        return EXIT_OK
    train(args.data, args.out, progress=progress, **training_options(args))
    return EXIT_OK


def _check_ocr(name: str) -> None:
    from .figures.ocr import ENGINE_NAMES

    if name not in ("auto", "none", *ENGINE_NAMES):
        raise ImageExtractError(f"unknown OCR engine {name!r}; known engines: auto, none, "
                                f"{', '.join(ENGINE_NAMES)}")


def _cmd_scalebar(args) -> int:
    from .figures.ocr import get_engine
    from .figures.scalebar import scale_bar_details
    from .io import load_image

    _check_ocr(args.ocr)
    engine = None if args.ocr == "none" else get_engine(args.ocr)
    if engine is None and args.ocr != "none":
        logger.warning("no OCR engine available: scale-bar labels cannot be read")
    rows, failed = [], 0
    for path in args.images:
        row = {"path": str(path), "found": False, "text": None, "value": None, "unit": None,
               "bar_px": None, "nm_per_px": None, "confidence": None}
        try:
            image = load_image(path)
            r = scale_bar_details(image, ocr=engine if engine is not None else "none")
        except ImageExtractError as err:
            failed += 1
            row["error"] = str(err)
            print(f"imageextract: {err}", file=sys.stderr)
            rows.append(row)
            continue
        if r is not None:
            row.update(found=True, text=r.text, value=r.value, unit=r.unit,
                       bar_px=round(r.bar_px, 3), nm_per_px=r.nm_per_px,
                       confidence=round(r.confidence, 4))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for row in rows:
            if row["found"]:
                print(f"{row['path']}: {row['value']:g} {row['unit']} = {row['bar_px']:.1f} px "
                      f"→ {row['nm_per_px']:.4g} nm/px (confidence {row['confidence']:.2f}, "
                      f"read {row['text']!r})")
            elif "error" not in row:
                print(f"{row['path']}: no scale bar found")
    return EXIT_PARTIAL if failed else EXIT_OK


def _cmd_split(args) -> int:
    from PIL import Image

    from .figures.panels import split_panels
    from .io import load_image

    _check_ocr(args.ocr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, failed, n_panels = [], 0, 0
    for path in args.figures:
        try:
            image = load_image(path)
            panels = split_panels(image, ocr=args.ocr, read_labels=args.ocr != "none")
        except (ImageExtractError, ValueError) as err:
            failed += 1
            print(f"imageextract: {path}: {err}" if str(path) not in str(err) else f"imageextract: {err}",
                  file=sys.stderr)
            continue
        stem = Path(path).stem
        for p in panels:
            img = p.image
            if img.dtype != np.uint8:
                from .figures._image import to_grey01
                img = np.clip(np.rint(to_grey01(img) * 255), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(out / f"{stem}_{p.index}.png")
            records.append({"figure": str(path), "index": p.index, "label": p.label,
                            "kind": p.kind, "bbox": [int(v) for v in p.bbox]})
            n_panels += 1
    (out / "panels.json").write_text(json.dumps(records, indent=2))
    print(f"{len(args.figures) - failed} figures → {n_panels} panels in {out} "
          f"({sum(r['kind'] == 'micrograph' for r in records)} micrographs); {failed} failed")
    return EXIT_PARTIAL if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imageextract`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose, args.quiet)
    # Idle OpenMP threads must not spin: on a shared 2-core machine a spinning
    # pool made a training step 20x slower.  Set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    progress = not args.quiet
    try:
        if args.command == "analyze":
            return _cmd_analyze(args, progress)
        if args.command == "run":
            return _cmd_run(args, progress)
        if args.command == "mine":
            from .mining import cmd_mine

            return cmd_mine(args, progress)
        if args.command == "backends":
            return _cmd_backends()
        if args.command == "evaluate":
            return _cmd_evaluate(args, progress)
        if args.command == "train":
            return _cmd_train(args, progress)
        if args.command == "scalebar":
            return _cmd_scalebar(args)
        if args.command == "split":
            return _cmd_split(args)
    except ImageExtractError as err:
        print(f"imageextract: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("imageextract: interrupted; finished items are saved, re-run to resume",
              file=sys.stderr)
        return 130
    parser.print_help()
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
