"""Scale-bar label parsing: every unit spelling, decimals, OCR confusions, garbage."""

import pytest

from imageextract.figures.units import NM_PER_UNIT, find_scale_texts, parse_scale_text


@pytest.mark.parametrize("text, value, unit", [
    ("100 nm", 100, "nm"), ("100nm", 100, "nm"), ("100 NM", 100, "nm"), ("5 nanometers", 5, "nm"),
    ("20 nrn", 20, "nm"),                                                     # OCR: m as rn
    ("2 µm", 2, "um"), ("2 μm", 2, "um"), ("2 um", 2, "um"), ("2um", 2, "um"),  # micro sign, Greek mu, u
    ("2 μ m", 2, "um"), ("2 microns", 2, "um"), ("3 micrometre", 3, "um"),
    ("10 ym", 10, "um"), ("10 pm", 10, "um"), ("10 jm", 10, "um"),             # OCR readings of µ
    ("100 µμm", 100, "um"),                                                   # doubled mu
    ("1 mm", 1, "mm"), ("0.5 mm", 0.5, "mm"), ("2 millimeters", 2, "mm"),
    ("50 Å", 50, "A"), ("50 \u212b", 50, "A"), ("50 A", 50, "A"), ("50A", 50, "A"),
    ("10 À", 10, "A"), ("5 ångström", 5, "A"),
])
def test_units(text, value, unit):
    st = parse_scale_text(text)
    assert st is not None, text
    assert (st.value, st.unit) == (value, unit)


@pytest.mark.parametrize("text, value", [
    ("0.5 µm", 0.5), ("0,5 µm", 0.5), (".5 um", 0.5), ("2.5 nm", 2.5), ("0.25μm", 0.25),
    ("1.0 µm", 1.0), ("1,000 nm", 1000), ("0.1 mm", 0.1),
])
def test_decimals(text, value):
    st = parse_scale_text(text)
    assert st is not None and st.value == pytest.approx(value)


@pytest.mark.parametrize("text, value", [
    ("1OO nm", 100), ("l00nm", 100), ("Snm", 5), ("2O nm", 20), ("!0 μm", 10), ("05 μm", 0.5),
])
def test_ocr_digit_confusions(text, value):
    st = parse_scale_text(text)
    assert st is not None and st.value == pytest.approx(value)
    assert st.confidence < 1.0  # a repaired reading is less certain


@pytest.mark.parametrize("text", [
    "", "   ", "nm", "100", "abc", "Fig. 3", "(a)", "b", "x50,000", "1.2.3 nm", "100 nmm",
    "50 kV", "Mag = 10.00 K X", "0 nm", "12 pixels", None, 3.5,
])
def test_garbage_is_rejected(text):
    assert parse_scale_text(text) is None


def test_implausible_mm_is_nm():
    # "500 mm" on a micrograph is OCR's "500 nm"
    st = parse_scale_text("500 mm")
    assert (st.value, st.unit) == (500, "nm") and st.confidence < 1


def test_data_strip_prefers_the_bar_label():
    found = find_scale_texts("EHT = 20.00 kV  WD = 7.5 mm  Mag = 300 X  10 µm")
    assert (found[0].value, found[0].unit) == (10, "um")
    assert any(s.value == 7.5 for s in found[1:])


def test_length_nm():
    assert parse_scale_text("0.5 µm").length_nm == pytest.approx(500)
    assert parse_scale_text("50 Å").length_nm == pytest.approx(5)
    assert NM_PER_UNIT["mm"] == 1e6
