"""Caption understanding: EM or not, technique, panels, materials."""

from __future__ import annotations

import pytest

from imageextract.captions import classify_caption, classify_panel, extract_materials, panel_captions

CASES = [
    # caption, is_micrograph, modality, material
    ("TEM images of citrate-capped Au nanoparticles at (a) low and (b) high magnification.",
     True, "TEM", "Au"),
    ("Fig. 3. HRTEM image showing the (111) lattice fringes of Pd nanocubes.", True, "TEM", "Pd"),
    ("HAADF-STEM image and EDS elemental maps of Pt–Ni nanoframes.", True, "STEM", "Pt–Ni"),
    ("SEM images of TiO₂ nanospheres calcined at 400 °C.", True, "SEM", "TiO2"),
    ("FE-SEM micrograph of ZnO nanorods grown on ITO glass.", True, "SEM", "ZnO"),
    ("Scanning electron micrographs of Fe3O4@SiO2 core–shell particles.", True, "SEM", "Fe3O4@SiO2"),
    ("Transmission electron micrograph of magnetite nanoparticles.", True, "TEM", "Fe3O4"),
    ("Cryo-TEM of gold nanorods in vitreous ice.", True, "TEM", "Au"),
    ("XRD patterns of the CeO2 samples.", False, "unknown", "CeO2"),
    ("UV–vis absorption spectra of Ag NPs at different times.", False, "unknown", "Ag"),
    ("Raman spectra of MoS2 flakes.", False, "unknown", "MoS2"),
    ("Schematic illustration of the synthesis of CdSe/ZnS quantum dots.", False, "unknown", "CdSe/ZnS"),
    ("Particle size distribution histogram of the silver colloid.", False, "unknown", "Ag"),
    ("Photograph of the reaction vessel.", False, "unknown", None),
    ("N2 adsorption–desorption isotherms.", False, "unknown", None),
]


@pytest.mark.parametrize("caption,is_em,modality,material", CASES)
def test_classify_caption(caption, is_em, modality, material):
    info = classify_caption(caption)
    assert info.is_micrograph is is_em
    assert info.modality == modality
    assert info.material == material


def test_empty_caption_is_undecided():
    assert classify_caption("  ").is_micrograph is None


def test_panels_leading_and_trailing_labels():
    cap = "(a) TEM image of Au NPs; (b) size histogram; (c, d) SEM images of Ag nanocubes."
    prefix, parts = panel_captions(cap)
    assert set(parts) == {"a", "b", "c", "d"} and parts["c"] == parts["d"]
    assert [classify_panel(cap, x).is_micrograph for x in "abcd"] == [True, False, True, True]
    assert classify_panel(cap, "(d)").material == "Ag" and classify_panel(cap, "a").material == "Au"
    assert classify_panel(cap, "c").modality == "SEM"
    trailing = "TEM image (a) and XRD pattern (b) of the TiO2 powder."
    assert [classify_panel(trailing, x).is_micrograph for x in "ab"] == [True, False]
    assert classify_panel(trailing, "b").material == "TiO2"
    ranged = "(a–c) TEM images of Pt nanoparticles; (d) XRD."
    assert [classify_panel(ranged, x).is_micrograph for x in "abcd"] == [True, True, True, False]


def test_panel_without_own_terms_inherits():
    cap = "TEM images of Au NPs: (a) low magnification, (b) high magnification."
    assert classify_panel(cap, "b").is_micrograph is True
    assert classify_panel(cap, "").is_micrograph is True  # no label: the whole caption
    assert classify_panel(cap, "z").is_micrograph is True


def test_references_to_earlier_panels_do_not_split():
    cap = "(a) TEM image; (b) HRTEM of the particle marked in (a); (c) FFT."
    _, parts = panel_captions(cap)
    assert parts["b"] == "HRTEM of the particle marked in (a);"


@pytest.mark.parametrize("text,expected", [
    ("NaYF4:Yb,Er upconversion nanocrystals", ["NaYF4:Yb,Er"]),
    ("Au@Ag core–shell nanocubes on SiO2", ["Au@Ag", "SiO2"]),
    ("In the CV curves, PVP-capped NPs (scale bar 50 nm) at 300 K", []),
    ("Co3O4 and CoO nanoparticles", ["CoO", "Co3O4"]),  # next to the noun first
    ("TEM of Ag NPs after exposure to H2O2, CO2 and N2 at 300 K", ["Ag"]),
    ("gold and silver nanoparticles", ["Ag"]),
    ("BaTiO3 nanocubes; As shown, Be careful", ["BaTiO3"]),
    ("titania-supported Pt clusters", ["Pt", "TiO2"]),
])
def test_extract_materials(text, expected):
    assert extract_materials(text, chemdataextractor=False) == expected


def test_chemdataextractor_missing_falls_back(monkeypatch, caplog):
    import sys

    from imageextract import captions

    captions._cde_available.cache_clear()
    monkeypatch.setitem(sys.modules, "chemdataextractor", None)  # import fails
    try:
        assert extract_materials("Au nanoparticles", chemdataextractor=True) == ["Au"]
        assert "ChemDataExtractor unavailable" in caplog.text
    finally:
        captions._cde_available.cache_clear()
