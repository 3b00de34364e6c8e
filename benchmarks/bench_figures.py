"""Benchmark the figures stage: scale-bar reading, panel splitting, OCR engines.

    python benchmarks/bench_figures.py --bars 500 --figures 200 --emps --emps-figures --ocr
    python benchmarks/bench_figures.py --bars 50            # quick look

Writes ``benchmarks/results/figures.json`` (all numbers) and
``benchmarks/results/figures.md`` (a summary table).  Synthetic data come
from :mod:`imageextract.figures.synthetic` with fixed seeds, so reruns give
the same images; the EMPS parts read ``../shared/data/emps`` and the labels
in ``tests/data/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EMPS = ROOT.parent / "shared" / "data" / "emps"
OUT = ROOT / "benchmarks" / "results"


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def bench_bars(n: int, ocr: str) -> dict:
    from imageextract.figures.scalebar import scale_bar_details
    from imageextract.figures.synthetic import render_scale_bar

    rows = []
    for seed in range(n):
        img, t = render_scale_bar(seed=seed)
        t0 = time.perf_counter()
        r = scale_bar_details(img, ocr=ocr)
        dt = time.perf_counter() - t0
        ok = r is not None and r.value == t["value"] and r.unit == t["unit"]
        err = (r.bar_px / t["bar_px"] - 1) if r is not None else None
        rows.append({"seed": seed, "style": t["style"], "text": t["text"], "text_px": t["text_px"],
                     "jpeg": t["jpeg"], "found": r is not None, "value_unit_ok": ok,
                     "read": r.text if r else None, "bar_px_true": round(t["bar_px"], 3),
                     "bar_px": round(r.bar_px, 3) if r else None,
                     "rel_err": round(err, 5) if err is not None else None, "seconds": round(dt, 4)})
    ok = [r for r in rows if r["value_unit_ok"]]
    errs = np.array([abs(r["rel_err"]) for r in ok]) if ok else np.array([np.nan])
    by_style = {}
    for st in sorted({r["style"] for r in rows}):
        rs = [r for r in rows if r["style"] == st]
        by_style[st] = {"n": len(rs), "value_unit_acc": round(sum(r["value_unit_ok"] for r in rs) / len(rs), 4)}
    return {
        "n": n, "ocr": ocr,
        "value_unit_accuracy": round(len(ok) / n, 4),
        "bar_len_within_2pct_of_correct": round(float((errs <= 0.02).mean()), 4),
        "bar_len_median_abs_rel_err": round(float(np.median(errs)), 5),
        "bar_len_p95_abs_rel_err": round(float(np.percentile(errs, 95)), 5),
        "nm_per_px_within_2pct": round(sum(1 for r in ok if abs(r["rel_err"]) <= 0.02) / n, 4),
        "seconds_per_image": round(float(np.mean([r["seconds"] for r in rows])), 4),
        "by_style": by_style,
        "failures": [r for r in rows if not r["value_unit_ok"] or abs(r["rel_err"] or 1) > 0.02],
    }


def bench_figures(n: int, ocr: str) -> dict:
    from imageextract.figures.panels import split_panels
    from imageextract.figures.synthetic import compose_figure

    n_true = n_good = kind_ok = lab_n = lab_ok = figs_exact = 0
    times, fails = [], []
    for seed in range(n):
        img, truth = compose_figure(seed=seed)
        t0 = time.perf_counter()
        panels = split_panels(img, ocr=ocr)
        times.append(time.perf_counter() - t0)
        all_good = len(panels) == len(truth)
        for t in truth:
            n_true += 1
            best = max(panels, key=lambda p: iou(p.bbox, t["bbox"])) if panels else None
            v = iou(best.bbox, t["bbox"]) if best is not None else 0.0
            if v >= 0.9:
                n_good += 1
                kind_ok += best.kind == t["kind"]
                if t["label"]:
                    lab_n += 1
                    lab_ok += best.label.lower() == t["label"].strip("()").lower()
            else:
                all_good = False
        figs_exact += all_good
        if not all_good:
            fails.append({"seed": seed, "n_true": len(truth), "n_found": len(panels)})
    return {
        "n_figures": n, "n_panels": n_true,
        "panel_iou_ge_0.9_rate": round(n_good / n_true, 4),
        "figures_all_panels_right": round(figs_exact / n, 4),
        "kind_accuracy_on_matched": round(kind_ok / max(n_good, 1), 4),
        "label_accuracy_on_matched": round(lab_ok / max(lab_n, 1), 4),
        "seconds_per_figure": round(float(np.mean(times)), 4),
        "failures": fails,
    }


def _emps_labels() -> list[dict]:
    with open(ROOT / "tests" / "data" / "emps_scalebars.csv") as fh:
        return list(csv.DictReader(fh))


def bench_emps(ocr: str) -> dict:
    from imageextract.figures.scalebar import scale_bar_details
    from imageextract.io import load_image

    rows = []
    for lab in _emps_labels():
        img = load_image(EMPS / "images" / lab["file"])
        t0 = time.perf_counter()
        r = scale_bar_details(img, ocr=ocr)
        dt = time.perf_counter() - t0
        true_nm = float(lab["value"]) * {"nm": 1, "um": 1000, "mm": 1e6, "A": 0.1}[lab["unit"]]
        vu = r is not None and abs(r.value - float(lab["value"])) < 1e-9 and r.unit == lab["unit"]
        err = (r.bar_px / float(lab["bar_px"]) - 1) if r is not None else None
        npp = (r.nm_per_px / (true_nm / float(lab["bar_px"])) - 1) if r is not None else None
        rows.append({"file": lab["file"], "truth": f"{lab['value']} {lab['unit']}", "read": r.text if r else None,
                     "value_unit_ok": vu, "bar_px_true": float(lab["bar_px"]),
                     "bar_px": round(r.bar_px, 2) if r else None,
                     "bar_rel_err": round(err, 4) if err is not None else None,
                     "nm_per_px_rel_err": round(npp, 4) if npp is not None else None,
                     "confidence": r.confidence if r else None, "seconds": round(dt, 3)})
    n = len(rows)
    ok = [r for r in rows if r["value_unit_ok"]]
    return {
        "n": n, "ocr": ocr,
        "found_rate": round(sum(r["read"] is not None for r in rows) / n, 4),
        "value_unit_accuracy": round(len(ok) / n, 4),
        "bar_len_within_2pct": round(sum(abs(r["bar_rel_err"]) <= 0.02 for r in ok) / n, 4),
        "nm_per_px_within_2pct": round(sum(abs(r["nm_per_px_rel_err"]) <= 0.02 for r in ok) / n, 4),
        "nm_per_px_within_5pct": round(sum(abs(r["nm_per_px_rel_err"]) <= 0.05 for r in ok) / n, 4),
        "wrong_calibrations": [r for r in rows if r["read"] is not None and not r["value_unit_ok"]],
        "seconds_per_image": round(float(np.mean([r["seconds"] for r in rows])), 3),
        "per_image": rows,
    }


def emps_compound_figures() -> list[tuple[np.ndarray, list[dict]]]:
    """The EMPS compound figures described in ``tests/data/emps_compound.json``."""
    from imageextract.figures.synthetic import chart_image, compose_figure
    from imageextract.io import load_image

    spec = json.loads((ROOT / "tests" / "data" / "emps_compound.json").read_text())
    labels = {r["file"]: r for r in _emps_labels()}
    out = []
    for fig in spec["figures"]:
        panels, kinds = [], []
        rng = np.random.default_rng(fig["seed"])
        for item in fig["panels"]:
            if item == "chart":
                panels.append(chart_image(rng, (300, 340)))
                kinds.append("chart")
            else:
                img = load_image(EMPS / "images" / item)
                panels.append(img)
                kinds.append("micrograph")
        img, truth = compose_figure(fig["seed"], panels=panels, kinds=kinds,
                                    layout=tuple(fig["layout"]), gutter=fig["gutter"],
                                    cell_px=fig.get("cell_px", 400))
        for t, item in zip(truth, fig["panels"]):
            t["source"] = item
            t["scalebar"] = labels.get(item)
        out.append((img, truth))
    return out


def bench_emps_figures(ocr: str) -> dict:
    from imageextract.figures.panels import split_panels
    from imageextract.figures.scalebar import calibrate_panels

    n_true = n_good = kind_ok = cal_n = cal_ok = 0
    times = []
    figs = emps_compound_figures()
    for img, truth in figs:
        t0 = time.perf_counter()
        panels = split_panels(img, ocr=ocr)
        cals = calibrate_panels(panels, ocr=ocr)
        times.append(time.perf_counter() - t0)
        for t in truth:
            n_true += 1
            k = max(range(len(panels)), key=lambda i: iou(panels[i].bbox, t["bbox"])) if panels else None
            if k is None or iou(panels[k].bbox, t["bbox"]) < 0.9:
                continue
            n_good += 1
            kind_ok += panels[k].kind == t["kind"]
            sb = t.get("scalebar")
            if sb:
                cal_n += 1
                # the panel is the EMPS image scaled into its cell
                sx = (t["bbox"][2] - t["bbox"][0]) / t["src_w"]
                true_npp = float(sb["value"]) * {"nm": 1, "um": 1000}[sb["unit"]] / (float(sb["bar_px"]) * sx)
                c = cals[k]
                cal_ok += c is not None and abs(c.nm_per_px / true_npp - 1) <= 0.03
    return {"n_figures": len(figs), "n_panels": n_true,
            "panel_iou_ge_0.9_rate": round(n_good / n_true, 4),
            "kind_accuracy_on_matched": round(kind_ok / max(n_good, 1), 4),
            "labelled_micrographs": cal_n,
            "calibrated_within_3pct": round(cal_ok / max(cal_n, 1), 4),
            "seconds_per_figure": round(float(np.mean(times)), 3)}


def bench_ocr(n_per: int = 16) -> dict:
    """Recognition of isolated labels 10–20 px high, every engine installed."""
    from imageextract.figures.ocr import ENGINE_NAMES, OCRUnavailableError, get_engine
    from imageextract.figures.synthetic import font_paths, text_image
    from imageextract.figures.units import parse_scale_text

    rng = np.random.default_rng(7)
    items = []
    values = ["100 nm", "0.5 µm", "2 μm", "50 Å", "200nm", "1 mm", "20 um", "0.25 µm", "5 nm", "500 nm"]
    for text in values:
        for _ in range(n_per):
            size = int(rng.integers(10, 21))
            m = text_image(text, font_path=str(rng.choice(font_paths())), size=size, pad=3)
            light = rng.random() < 0.5
            img = np.rint((m if light else 1 - m) * 255).astype(np.uint8)
            items.append((text, img))
    out = {}
    for name in ENGINE_NAMES:
        try:
            eng = get_engine(name)
        except OCRUnavailableError as err:
            out[name] = {"available": False, "reason": str(err)}
            continue
        eng.read_line(items[0][1])  # warm-up (model load)
        ok, t0 = 0, time.perf_counter()
        for text, img in items:
            read, _ = eng.read_line(img)
            a, b = parse_scale_text(read), parse_scale_text(text)
            ok += a is not None and b is not None and (a.value, a.unit) == (b.value, b.unit)
        dt = (time.perf_counter() - t0) / len(items)
        out[name] = {"available": True, "n": len(items), "correct": ok,
                     "accuracy": round(ok / len(items), 4), "ms_per_label": round(1000 * dt, 1)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bars", type=int, default=0, help="synthetic scale bars (500 for the report)")
    ap.add_argument("--figures", type=int, default=0, help="synthetic compound figures (200)")
    ap.add_argument("--emps", action="store_true", help="labelled EMPS scale bars")
    ap.add_argument("--emps-figures", action="store_true", help="compound figures made of EMPS panels")
    ap.add_argument("--ocr", action="store_true", help="compare the OCR engines")
    ap.add_argument("--engine", default="auto", help="OCR engine for the other parts")
    ap.add_argument("--out", default=str(OUT / "figures.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from imageextract.figures.ocr import get_engine

    eng = get_engine(args.engine)
    res: dict = {"engine": getattr(eng, "name", None), "cpu_count": os.cpu_count(),
                 "python": sys.version.split()[0]}
    path = Path(args.out)
    if path.is_file():  # keep parts not rerun
        res = {**json.loads(path.read_text()), **res}
    if args.ocr:
        res["ocr_engines"] = bench_ocr()
        print("OCR:", json.dumps(res["ocr_engines"]))
    if args.bars:
        res["scale_bars"] = bench_bars(args.bars, args.engine)
        print("bars:", json.dumps({k: v for k, v in res["scale_bars"].items() if k != "failures"}))
    if args.figures:
        res["compound_figures"] = bench_figures(args.figures, args.engine)
        print("figures:", json.dumps({k: v for k, v in res["compound_figures"].items() if k != "failures"}))
    if args.emps:
        if not (EMPS / "images").is_dir():
            print(f"EMPS not found at {EMPS}; skipped")
        else:
            res["emps_scalebars"] = bench_emps(args.engine)
            print("emps:", json.dumps({k: v for k, v in res["emps_scalebars"].items()
                                       if k not in ("per_image", "wrong_calibrations")}))
    if args.emps_figures and (EMPS / "images").is_dir():
        res["emps_compound_figures"] = bench_emps_figures(args.engine)
        print("emps figures:", json.dumps(res["emps_compound_figures"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, ensure_ascii=False))
    print(f"→ {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
