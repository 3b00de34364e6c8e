"""Scale-bar reader: synthetic bars of every style, no bar, two bars, bars at the
border, the sibling rule, missing OCR engines, the CLI, and the labelled EMPS set."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageextract.figures import ocr as ocr_mod
from imageextract.figures.scalebar import (calibrate_panels, drawn_scale_bars, find_scale_bars,
                                           read_scale_bar, scale_bar_details)
from imageextract.figures.synthetic import micrograph_texture, render_scale_bar
from imageextract.types import Calibration, Panel

ROOT = Path(__file__).resolve().parents[1]
EMPS = ROOT.parent / "shared" / "data" / "emps"

needs_ocr = pytest.mark.skipif(not ocr_mod.available_engines(), reason="no OCR engine installed")


def _draw_bar(img, x0, x1, y0, y1, level):
    img[y0:y1, x0:x1] = level


def _label(img, text, x, y, *, size=16, colour=0):
    from imageextract.figures.synthetic import _font, _paste, _text_mask, font_paths

    g = img.astype(np.float32) / 255
    _paste(g, _text_mask(text, _font(font_paths()[0], size)), x, y, colour / 255)
    img[...] = np.rint(g * 255).astype(np.uint8)


@needs_ocr
@pytest.mark.parametrize("seed, style", [(11, "overlay"), (3, "box"), (7, "banner"),
                                         (2, "strip"), (4, "ticks"), (5, "overlay")])
def test_synthetic_bars(seed, style):
    img, truth = render_scale_bar(seed=seed, style=style)
    r = scale_bar_details(img)
    assert r is not None, truth
    assert (r.value, r.unit) == (truth["value"], truth["unit"]), (r.text, truth["text"])
    assert r.bar_px == pytest.approx(truth["bar_px"], rel=0.02)
    cal = read_scale_bar(img)
    assert cal.source == "scalebar" and cal.bar_box is not None
    assert cal.nm_per_px == pytest.approx(truth["nm_per_px"], rel=0.02)


@needs_ocr
@pytest.mark.parametrize("unit", ["nm", "um", "mm", "A"])
def test_every_unit(unit):
    for seed in range(20):
        img, truth = render_scale_bar(seed=seed, unit=unit, text_px=16, jpeg=False, style="overlay")
        cal = read_scale_bar(img)
        assert cal is not None and cal.nm_per_px == pytest.approx(truth["nm_per_px"], rel=0.02)
        return


def test_bar_length_subpixel_without_ocr():
    for seed in range(6):
        img, truth = render_scale_bar(seed=seed, jpeg=False)
        bars = find_scale_bars(img, ocr="none")
        best = min(bars, key=lambda b: abs(b.bar_box[1] - truth["bar_box"][1]) + abs(b.bar_box[0] - truth["bar_box"][0]))
        assert best.bar_px == pytest.approx(truth["bar_px"], abs=0.6), seed
        assert not best.labelled


def test_drawn_bars_are_told_from_imaged_rods():
    """Dark rods lying along x look like bars to the bar finder; only the
    bar drawn on the image is flat."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        g = 0.55 + 0.1 * (micrograph_texture(rng, (200, 240)) - 0.5)
        for y in (40, 90, 150):
            g[y:y + 6, 30:200] = 0.12  # rods, imaged: they carry the noise below
        img = ((g + rng.normal(0, 0.03, g.shape)).clip(0, 1) * 255).astype(np.uint8)
        assert len(find_scale_bars(img, ocr="none")) == 3
        assert drawn_scale_bars(img) == []
        img[175:181, 120:220] = 255
        assert drawn_scale_bars(img) == [(120.0, 175.0, 220.0, 181.0)]
        assert len(drawn_scale_bars(img, min_flat=0.0)) == 4


def test_rendered_bars_of_every_style_are_drawn():
    found = 0
    for seed in range(16):
        img, truth = render_scale_bar(seed=seed)
        x0, y0 = truth["bar_box"][:2]
        found += any(abs(b[0] - x0) <= 1.5 and abs(b[1] - y0) <= 1.5
                     for b in drawn_scale_bars(img))
    assert found >= 14  # a thin bar with end ticks may be missed (seed 4)


@pytest.mark.parametrize("bad", [{"min_flat": 1.5}, {"min_flat": -0.1}, {"tolerance": -1.0}])
def test_drawn_bars_bad_options(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        drawn_scale_bars(np.zeros((32, 32), np.uint8), **bad)


@pytest.mark.parametrize("image", [
    np.full((64, 64), 128, np.uint8),                       # flat
    np.zeros((100, 120), np.uint8),                         # black
    (micrograph_texture(np.random.default_rng(0), (200, 240)) * 255).astype(np.uint8),
    np.random.default_rng(1).integers(0, 256, (80, 80, 3), dtype=np.uint8),
    np.full((50, 50), 0.5, np.float32),
    np.full((40, 60), 3000, np.uint16),
])
def test_no_bar_returns_none(image):
    assert read_scale_bar(image) is None
    assert scale_bar_details(image) is None


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="image"):
        read_scale_bar(np.zeros(5))


@needs_ocr
def test_two_bars_both_found_best_returned():
    img = (micrograph_texture(np.random.default_rng(3), (400, 600), style="tem", keep_clear=(0, 300, 600, 400),
                              bar_light=False) * 255).astype(np.uint8)
    _draw_bar(img, 40, 140, 360, 366, 0)
    _label(img, "100 nm", 55, 340)
    _draw_bar(img, 400, 560, 360, 366, 0)
    _label(img, "2 µm", 455, 340)
    bars = [b for b in find_scale_bars(img) if b.labelled]
    got = {(b.value, b.unit, round(b.bar_px)) for b in bars}
    assert (100, "nm", 100) in got and (2, "um", 160) in got
    assert read_scale_bar(img).text in ("100 nm", "2 µm", "2 μm")


@needs_ocr
def test_bar_touching_bottom_border():
    img = np.full((300, 400), 150, np.uint8)
    _draw_bar(img, 250, 370, 294, 300, 255)      # flush with the bottom edge
    _label(img, "500 nm", 280, 270, colour=255)
    cal = read_scale_bar(img)
    assert cal is not None and cal.text.replace(" ", "") == "500nm"
    assert cal.bar_px == pytest.approx(120, abs=0.5)
    assert cal.nm_per_px == pytest.approx(500 / 120, rel=0.01)


@needs_ocr
def test_bar_touching_side_border_is_flagged():
    img = np.full((300, 400), 200, np.uint8)
    _draw_bar(img, 0, 120, 270, 276, 0)          # runs into the left edge: length unknown
    _label(img, "1 µm", 30, 250)
    bars = [b for b in find_scale_bars(img) if b.labelled]
    assert bars and bars[0].touches_border
    full = read_scale_bar(img)
    assert full is None or full.confidence <= 0.5


@needs_ocr
def test_sibling_rule():
    labelled, t1 = render_scale_bar(seed=21, shape=(300, 360), style="overlay", jpeg=False)
    bare, t2 = render_scale_bar(seed=21, shape=(300, 360), style="overlay", jpeg=False, with_text=False)
    other, _ = render_scale_bar(seed=22, shape=(300, 360), style="overlay", jpeg=False, with_text=False)
    panels = [Panel(image=im, bbox=(0, 0, 360, 300), index=i) for i, im in enumerate([labelled, bare, other])]
    panels.append(Panel(image=labelled, bbox=(0, 0, 360, 300), kind="chart", index=3))
    cals = calibrate_panels(panels)
    assert cals[0].source == "scalebar"
    assert cals[1] is not None and cals[1].source == "sibling"
    assert cals[1].nm_per_px == pytest.approx(t1["nm_per_px"], rel=0.02)
    assert cals[1].confidence < cals[0].confidence
    assert cals[2] is None            # its bar has another length
    assert cals[3] is None            # charts are not calibrated


def test_no_ocr_engine_installed(monkeypatch, caplog):
    def missing():
        raise ocr_mod.OCRUnavailableError("not installed (test)")

    monkeypatch.setattr(ocr_mod, "_cache", {})
    monkeypatch.setattr(ocr_mod, "_FACTORIES", {"rapidocr": missing, "tesseract": missing})
    monkeypatch.setattr(ocr_mod, "_warned", False)
    monkeypatch.delenv("IMAGEEXTRACT_OCR", raising=False)
    img, _ = render_scale_bar(seed=1)
    with caplog.at_level(logging.WARNING, logger="imageextract.figures.ocr"):
        assert read_scale_bar(img) is None
    assert "no OCR engine" in caplog.text
    with pytest.raises(ocr_mod.OCRUnavailableError):
        ocr_mod.get_engine("tesseract")


def test_unknown_engine_lists_names():
    from imageextract.errors import ImageExtractError

    with pytest.raises(ImageExtractError, match="rapidocr"):
        ocr_mod.get_engine("nope")


def test_calibration_hook_uses_reader():
    from imageextract.calibration import _default_reader

    assert _default_reader() is read_scale_bar


@pytest.mark.parametrize("name", ocr_mod.ENGINE_NAMES)
def test_each_engine_reads_a_label(name):
    try:
        eng = ocr_mod.get_engine(name)
    except ocr_mod.OCRUnavailableError as err:
        pytest.skip(str(err))
    from imageextract.figures.synthetic import _font, _text_mask, font_paths

    m = _text_mask("200 nm", _font(font_paths()[0], 16), pad=3)
    for img in (np.rint((1 - m) * 255).astype(np.uint8), np.rint(m * 255).astype(np.uint8)):
        text, score = eng.read_line(img)
        assert text.replace(" ", "") == "200nm" and 0 <= score <= 1


def test_cli_scalebar_json(tmp_path, capsys):
    from imageextract.cli import main

    img, truth = render_scale_bar(seed=11, style="overlay")
    Image.fromarray(img).save(tmp_path / "bar.png")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "flat.png")
    rc = main(["scalebar", str(tmp_path / "bar.png"), str(tmp_path / "flat.png"), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(rows) == 2
    keys = {"path", "found", "text", "value", "unit", "bar_px", "nm_per_px", "confidence"}
    assert keys <= set(rows[0]) and keys <= set(rows[1])
    assert rows[1]["found"] is False and rows[1]["nm_per_px"] is None
    if ocr_mod.available_engines():
        assert rows[0]["found"] and rows[0]["unit"] == truth["unit"]
    rc = main(["scalebar", str(tmp_path / "missing.png"), "--json"])
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    assert main(["scalebar", str(tmp_path / "bar.png"), "--ocr", "nope"]) == 2


@pytest.mark.slow
@pytest.mark.emps
def test_emps_labelled_scale_bars():
    """The 50 hand-labelled EMPS micrographs: most read, none read wrong."""
    if not (EMPS / "images").is_dir():
        pytest.skip(f"EMPS dataset not found at {EMPS}")
    if not ocr_mod.available_engines():
        pytest.skip("no OCR engine installed")
    from imageextract.io import load_image

    with open(ROOT / "tests" / "data" / "emps_scalebars.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 40
    right = wrong = 0
    for row in rows:
        r = scale_bar_details(load_image(EMPS / "images" / row["file"]))
        if r is None:
            continue
        ok = (r.value == pytest.approx(float(row["value"])) and r.unit == row["unit"]
              and r.bar_px == pytest.approx(float(row["bar_px"]), rel=0.03))
        right += ok
        wrong += not ok
    assert right / len(rows) >= 0.8
    assert wrong <= 1


def test_calibration_type_accepts_sibling():
    assert Calibration(nm_per_px=1.0, source="sibling").source == "sibling"


@needs_ocr
def test_real_emps_crops():
    """Six crops of real EMPS micrographs shipped in tests/data (bar + label)."""
    from imageextract.io import load_image

    with open(ROOT / "tests" / "data" / "emps_crops" / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    right = 0
    for row in rows:
        r = scale_bar_details(load_image(ROOT / "tests" / "data" / "emps_crops" / row["file"]))
        right += (r is not None and r.value == pytest.approx(float(row["value"])) and r.unit == row["unit"]
                  and r.bar_px == pytest.approx(float(row["bar_px"]), rel=0.02))
    assert right >= len(rows) - 1
