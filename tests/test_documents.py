"""Parsing articles into the one Document model (Elsevier XML, JATS, HTML, PDF)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures" / "publishers"
sys.path.insert(0, str(FIX))

import pubfigures  # noqa: E402

from imageextract.documents import (  # noqa: E402
    DocumentError, normalize_doi, parse_document, parse_elsevier, parse_html, parse_jats, sniff)


def test_elsevier_full_text():
    doc = parse_elsevier((FIX / "elsevier/S2950000024000011.xml").read_bytes(), identifier="x")
    assert doc.doi == "10.1016/j.replay.2024.100001"
    assert doc.title.startswith("Seed-mediated growth of gold")
    assert doc.journal == "Replay Journal of Nanomaterials"
    assert doc.license == "http://creativecommons.org/licenses/by/4.0/"
    assert doc.full_text and doc.extra["open_access"] and doc.extra["eid"] == "1-s2.0-S2950000024000011"
    assert [f.label for f in doc.figures] == ["Fig. 1", "Fig. 2", "Fig. 3"]
    assert [f.figure_id for f in doc.figures] == ["gr1", "gr2", "gr3"]
    f1 = doc.figures[0]
    assert f1.caption == ("TEM images of citrate-capped Au nanoparticles at (a) low and (b) high "
                          "magnification.")
    # best image first: high-res, then standard, then thumbnail; the PDF object is not an image
    assert [u.split("-gr1")[1].split("?")[0] for u in f1.image_urls] == ["_lrg.jpg", ".jpg", ".sml"]
    assert not any("mmc1" in u for f in doc.figures for u in f.image_urls)
    assert doc.figures[2].caption.startswith("UV\u2013vis")


def test_elsevier_inline_subscripts_and_no_licence():
    doc = parse_elsevier((FIX / "elsevier/S2950000024000023.xml").read_bytes())
    assert doc.license is None and doc.extra["open_access"] is False
    assert "Fe3O4@SiO2 core\u2013shell" in doc.figures[0].caption
    assert len(doc.figures[1].image_urls) == 1


def test_jats_europepmc():
    doc = parse_jats((FIX / "europepmc/PMC9000001.xml").read_bytes(), source="europepmc")
    assert doc.doi == "10.3390/nano.replay.0001" and doc.extra["pmcid"] == "PMC9000001"
    assert doc.journal == "Replay Nanomaterials"
    assert doc.license == "https://creativecommons.org/licenses/by/4.0/"
    assert [(f.label, f.image_name) for f in doc.figures] == [
        ("Figure 1", "nanomaterials-01-00001-g001"), ("Figure 2", "nanomaterials-01-00001-g002")]
    assert doc.figures[1].caption == ("Support characterisation. Raman spectra of the carbon "
                                      "supports before and after loading.")
    doc2 = parse_jats((FIX / "europepmc/PMC9000002.xml").read_bytes())
    assert doc2.license == "https://creativecommons.org/licenses/by-nc/4.0/"  # ali:license_ref


def test_jats_inside_springer_envelope():
    data = (FIX / "springer/openaccess-jats-s11671-024-00001-x.xml").read_bytes()
    doc = parse_jats(data.replace(b"{{API_KEY}}", b"***"))
    assert doc.doi == "10.1186/s11671-024-00001-x" and doc.title.startswith("Silver nanocubes")
    assert doc.license == "http://creativecommons.org/licenses/by/4.0/"
    assert doc.figures[0].image_name == "MediaObjects/11671_2024_1_Fig1_HTML.png"
    assert sniff(data) == "jats"


def test_xml_external_entities_are_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    xml = f"""<?xml version="1.0"?>
<!DOCTYPE article [<!ENTITY xxe SYSTEM "file://{secret}"><!ENTITY net SYSTEM "http://127.0.0.1:9/x">]>
<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>
<title-group><article-title>Title &xxe; &net;</article-title></title-group></article-meta></front>
<body><fig id="f1"><label>Figure 1</label><caption><p>TEM &xxe; image</p></caption></fig></body></article>"""
    doc = parse_jats(xml.encode())
    assert "TOP-SECRET" not in doc.title + doc.figures[0].caption
    assert doc.figures[0].caption == "TEM image"


def test_malformed_xml_is_a_clear_error():
    with pytest.raises(DocumentError, match="not well-formed"):
        parse_jats(b"<article><front>", identifier="PMC1")
    with pytest.raises(DocumentError, match="no JATS <article>"):
        parse_jats(b"<other/>")
    with pytest.raises(DocumentError, match="not an Elsevier"):
        parse_elsevier(b"<article/>")
    with pytest.raises(DocumentError, match="not a PDF, HTML"):
        parse_document(b"plain text", name="notes.txt")


def test_html_page():
    html = b"""<!DOCTYPE html><html><head><title>Page</title>
    <meta name="citation_doi" content="10.1039/D4REPLAY00001">
    <meta name="citation_title" content="Cu clusters">
    <meta name="citation_journal_title" content="Replay Chem">
    <link rel="license" href="https://creativecommons.org/licenses/by/3.0/"></head><body>
    <figure id="fig1"><a href="images/fig1_large.png"><img src="images/fig1.png"></a>
    <figcaption>Figure 1. SEM image of Cu nanowires.</figcaption></figure>
    <figure><img src="scheme.gif"><figcaption>Scheme of the set-up.</figcaption></figure>
    </body></html>"""
    doc = parse_html(html)
    assert (doc.doi, doc.title, doc.journal) == ("10.1039/d4replay00001", "Cu clusters", "Replay Chem")
    assert doc.license == "https://creativecommons.org/licenses/by/3.0/"
    f1, f2 = doc.figures
    assert (f1.label, f1.caption) == ("Figure 1", "SEM image of Cu nanowires.")
    assert f1.image_urls == ("images/fig1_large.png", "images/fig1.png")
    assert f2.label == "figure2" and f2.caption == "Scheme of the set-up."
    assert sniff(html) == "html"


def test_pdf_figures_with_captions():
    img = pubfigures.micrograph(3)
    pdf = pubfigures.make_pdf(img, [
        "Some body text of the invented article.", "",
        "Fig. 1. TEM image of Au nanoparticles", "on a carbon grid.", "",
        "Published under CC BY 4.0; doi 10.1016/j.replay.2024.100009"], title="A PDF")
    doc = parse_document(pdf, name="a.pdf", source="local")
    assert doc.title == "A PDF" and doc.doi == "10.1016/j.replay.2024.100009"
    assert doc.license == "CC BY 4.0"
    (fig,) = doc.figures
    assert fig.label == "Fig. 1" and fig.caption == "TEM image of Au nanoparticles on a carbon grid."
    from imageextract.fetchers import decode_image

    assert decode_image(fig.image_bytes).shape == img.shape
    with pytest.raises(DocumentError, match="not a readable PDF"):
        parse_document(b"%PDF-1.4\n garbage", name="bad.pdf")


def test_normalize_doi():
    assert normalize_doi("doi:10.1186/S11671-024-00001-X.") == "10.1186/s11671-024-00001-x"
    assert normalize_doi("https://dx.doi.org/10.1016/j.a.2020.1") == "10.1016/j.a.2020.1"
