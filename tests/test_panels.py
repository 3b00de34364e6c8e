"""Panel splitter: gutters (white, black, frame lines, touching), insets, labels,
kinds, single micrographs, the CLI, and compound figures made of EMPS panels."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageextract.figures import ocr as ocr_mod
from imageextract.figures.panels import classify_panel, panel_boxes, split_panels
from imageextract.figures.synthetic import chart_image, compose_figure, micrograph_texture
from imageextract.types import Figure, Panel

ROOT = Path(__file__).resolve().parents[1]
EMPS = ROOT.parent / "shared" / "data" / "emps"


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _matches(panels, truth, thr=0.9):
    return [max((iou(p.bbox, t["bbox"]) for p in panels), default=0) >= thr for t in truth]


def _mic(seed, shape=(200, 240)):
    return (micrograph_texture(np.random.default_rng(seed), shape, style="tem") * 255).astype(np.uint8)


@pytest.mark.parametrize("gutter", ["white", "black", "border"])
def test_gutters(gutter):
    panels = [_mic(i) for i in range(4)]
    img, truth = compose_figure(seed=5, panels=panels, kinds=["micrograph"] * 4, layout=(2, 2),
                                gutter=gutter)
    got = split_panels(img, read_labels=False)
    assert len(got) == 4 and all(_matches(got, truth))
    assert [p.index for p in got] == [0, 1, 2, 3]
    assert all(p.kind == "micrograph" for p in got)


def test_touching_panels_split_at_the_seam():
    a = _mic(1) // 2 + 20          # darker
    b = _mic(2) // 2 + 120         # lighter
    img = np.hstack([a, b])
    boxes, _ = panel_boxes(img)
    assert len(boxes) == 2 and abs(boxes[0][2] - 240) <= 1


def test_single_micrograph_is_one_panel():
    img = _mic(3, (300, 400))
    got = split_panels(img, read_labels=False)
    assert len(got) == 1 and got[0].bbox == (0, 0, 400, 300) and got[0].kind == "micrograph"
    # also with white margins and a scale bar in a banner under it
    canvas = np.full((360, 440), 255, np.uint8)
    canvas[10:310, 20:420] = img
    canvas[330:334, 300:400] = 0
    got = split_panels(canvas, read_labels=False)
    assert len(got) == 1 and got[0].bbox[:3] == (20, 10, 420)


def test_inset_stays_inside_its_panel():
    img = _mic(4, (300, 400))
    img[10:110, 280:390] = 255
    img[14:106, 284:386] = _mic(5, (92, 102))
    got = split_panels(img, read_labels=False)
    assert len(got) == 1


def test_kinds():
    rng = np.random.default_rng(0)
    assert classify_panel(chart_image(rng, (240, 300))) == "chart"
    assert classify_panel(_mic(6)) == "micrograph"
    assert classify_panel(np.full((100, 100, 3), 255, np.uint8)) == "other"


def test_figure_object_and_provenance():
    img, truth = compose_figure(seed=4, layout=(1, 2), gutter="white")
    fig = Figure(image=img, doi="10.1000/x", figure_id="fig2")
    got = split_panels(fig, ocr="none")
    assert all(isinstance(p, Panel) and p.doi == "10.1000/x" and p.figure_id == "fig2" for p in got)
    assert all(p.image.shape[:2] == (p.bbox[3] - p.bbox[1], p.bbox[2] - p.bbox[0]) for p in got)


def test_bad_input():
    with pytest.raises(ValueError, match="figure"):
        split_panels(np.zeros((4, 4)))


@pytest.mark.skipif(not ocr_mod.available_engines(), reason="no OCR engine installed")
def test_labels_read():
    panels = [_mic(i) for i in range(4)]
    img, truth = compose_figure(seed=1, panels=panels, kinds=["micrograph"] * 4, layout=(2, 2),
                                gutter="white")
    got = split_panels(img)
    read = {p.label.lower() for p in got if p.label}
    want = {t["label"].strip("()").lower() for t in truth if t["label"]}
    assert len(read & want) >= len(want) - 1


def test_synthetic_figures_mostly_right():
    n_ok = n = 0
    for seed in range(12):
        img, truth = compose_figure(seed=seed)
        got = split_panels(img, read_labels=False)
        ok = _matches(got, truth)
        n_ok += sum(ok)
        n += len(ok)
    assert n_ok / n >= 0.85


def test_cli_split(tmp_path, capsys):
    from imageextract.cli import main

    img, truth = compose_figure(seed=3)
    Image.fromarray(img).save(tmp_path / "fig.png")
    (tmp_path / "bad.png").write_text("not an image")
    rc = main(["split", str(tmp_path / "fig.png"), "--out", str(tmp_path / "out"), "--ocr", "none"])
    assert rc == 0
    rows = json.loads((tmp_path / "out" / "panels.json").read_text())
    assert len(rows) == len(list((tmp_path / "out").glob("fig_*.png")))
    assert set(rows[0]) == {"figure", "index", "label", "kind", "bbox"}
    assert rows[0]["kind"] in ("micrograph", "chart", "other") and len(rows[0]["bbox"]) == 4
    rc = main(["split", str(tmp_path / "bad.png"), "--out", str(tmp_path / "out2")])
    assert rc == 1 and "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.emps
def test_emps_compound_figures():
    """12 figures composed from labelled EMPS micrographs and plots."""
    if not (EMPS / "images").is_dir():
        pytest.skip(f"EMPS dataset not found at {EMPS}")
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_figures import emps_compound_figures
    finally:
        sys.path.pop(0)
    ok = n = 0
    for img, truth in emps_compound_figures():
        got = split_panels(img, read_labels=False)
        m = _matches(got, truth)
        ok += sum(m)
        n += len(m)
    assert n >= 30 and ok / n >= 0.8


@pytest.mark.slow
@pytest.mark.emps
def test_emps_micrographs_are_single_panels():
    """Every 10th EMPS image (each one micrograph) comes back as one micrograph panel."""
    if not (EMPS / "images").is_dir():
        pytest.skip(f"EMPS dataset not found at {EMPS}")
    from imageextract.io import load_image

    files = sorted((EMPS / "images").glob("*.png"))[::10]
    single = sum(len(split_panels(load_image(f), read_labels=False)) == 1 for f in files)
    assert single / len(files) >= 0.9
