"""Fetchers against the replayed APIs: endpoints, headers, keys, figures."""

from __future__ import annotations

import logging
import shutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

FIX = Path(__file__).parent / "fixtures" / "publishers"
sys.path.insert(0, str(FIX))

import pubfigures  # noqa: E402
from pubreplay import ELSEVIER_KEY, ELSEVIER_TOKEN, SPRINGER_KEY, ReplayServer  # noqa: E402

from imageextract.errors import BackendNotFoundError, FetchError  # noqa: E402
from imageextract.fetchers import FETCHERS, available_fetchers, decode_image, get_fetcher  # noqa: E402
from imageextract.fetchers.base import Fetcher  # noqa: E402

FAST = {"http_options": {"rate_per_s": 1000.0, "backoff_s": 0.01}}


@pytest.fixture
def srv(monkeypatch):
    with ReplayServer() as s:
        for k, v in s.env().items():
            monkeypatch.setenv(k, v)
        yield s


def _fetcher(name, tmp_path=None):
    return get_fetcher(name, cache_dir=tmp_path or False, **FAST)


def test_registry_and_entry_points():
    names = {"elsevier", "europepmc", "springer", "crossref", "local"}
    assert names <= set(available_fetchers())
    eps = {ep.name for ep in entry_points(group="imageextract.fetchers")}
    assert names <= eps, "pip install -e . registers the fetchers' entry points"
    with pytest.raises(BackendNotFoundError, match="installed: crossref, elsevier"):
        FETCHERS.get("nosuch")
    for n in names:
        f = get_fetcher(n, cache_dir=False)
        assert isinstance(f, Fetcher) and f.name == n


@pytest.mark.parametrize("name,ident,ok", [
    ("elsevier", "10.1016/j.replay.2024.100001", True),
    ("elsevier", "https://api.elsevier.com/content/article/PII:S2950000024000011?httpAccept=text/xml", True),
    ("elsevier", "10.1186/s11671-024-00001-x", False),
    ("springer", "10.1186/s11671-024-00001-x", True),
    ("springer", "https://link.springer.com/content/pdf/10.1186/x.pdf", True),
    ("springer", "10.1016/j.replay.2024.100001", False),
    ("europepmc", "PMC9000001", True),
    ("europepmc", "https://api.elsevier.com/x", False),
    ("crossref", "10.1016/j.replay.2024.100001", True),
    ("crossref", "PMC9000001", False),
])
def test_can_handle(name, ident, ok):
    assert get_fetcher(name, cache_dir=False).can_handle(ident) is ok


def test_elsevier_document_and_request_headers(srv):
    f = _fetcher("elsevier")
    doc = f.fetch_document("10.1016/j.replay.2024.100001")
    assert doc.doi == "10.1016/j.replay.2024.100001" and len(doc.figures) == 3
    assert all(u.startswith(srv.url + "/content/object/eid/") for u in doc.figures[0].image_urls)
    img = decode_image(f.figure_image(doc, doc.figures[0]))
    assert img.shape == (256, 520)
    assert f.last_image_url.endswith("gr1_lrg.jpg?httpAccept=%2A%2F%2A")
    for req in srv.requests:
        assert req["headers"]["X-ELS-APIKey"] == ELSEVIER_KEY
        assert req["headers"]["X-ELS-Insttoken"] == ELSEVIER_TOKEN
        assert ELSEVIER_KEY not in req["raw_path"] and ELSEVIER_TOKEN not in req["raw_path"]
    assert srv.requests[0]["path"] == "/content/article/doi/10.1016/j.replay.2024.100001"
    assert srv.requests[0]["query"] == {"view": "FULL"}
    assert srv.requests[0]["headers"]["Accept"] == "text/xml"


def test_elsevier_without_key_sends_nothing(srv, monkeypatch):
    monkeypatch.delenv("ELSEVIER_API_KEY")
    with pytest.raises(FetchError, match="set ELSEVIER_API_KEY"):
        _fetcher("elsevier").fetch_document("10.1016/j.replay.2024.100001")
    assert srv.requests == []


def test_elsevier_wrong_key_is_401(srv, monkeypatch):
    monkeypatch.setenv("ELSEVIER_API_KEY", "not-the-key")
    with pytest.raises(FetchError, match=r"HTTP 401: Invalid API Key.*ELSEVIER_API_KEY") as err:
        _fetcher("elsevier").fetch_document("10.1016/j.replay.2024.100001")
    assert "not-the-key" not in str(err.value)


def test_elsevier_search_keeps_elsevier_dois(srv):
    dois = _fetcher("elsevier").search("gold nanoparticles", max_results=10)
    assert dois == ["10.1016/j.replay.2024.100001", "10.1016/j.replay.2024.100002"]
    req = srv.requests[0]
    assert req["path"] == "/content/search/scopus"
    assert req["query"]["query"] == "TITLE-ABS-KEY(gold nanoparticles)"
    assert req["headers"]["Accept"] == "application/json"


def test_europepmc_search_doi_lookup_and_zip_fallback(srv):
    f = _fetcher("europepmc")
    assert f.search("gold", max_results=5) == ["10.3390/nano.replay.0001", "10.3390/nano.replay.0002"]
    q = srv.requests[0]["query"]
    assert "OPEN_ACCESS:y" in q["query"] and q["format"] == "json" and q["cursorMark"] == "*"
    doc = f.fetch_document("10.3390/nano.replay.0002")
    assert doc.extra["pmcid"] == "PMC9000002"
    assert doc.license == "https://creativecommons.org/licenses/by-nc/4.0/"
    img = decode_image(f.figure_image(doc, doc.figures[0]))  # not under /bin/: from the zip
    assert img.ndim == 2 and "supplementaryFiles" in f.last_image_url
    paths = [r["path"] for r in srv.requests]
    assert "/europepmc/webservices/rest/PMC9000002/fullTextXML" in paths
    assert "/articles/PMC9000002/bin/nano-02-00002-g001.jpg" in paths
    assert "/europepmc/webservices/rest/PMC9000002/supplementaryFiles" in paths
    with pytest.raises(FetchError, match="no open-access full text"):
        f.fetch_document("10.3390/not.in.pmc")


def test_europepmc_image_extension_fallback(srv):
    f = _fetcher("europepmc")
    doc = f.fetch_document("PMC9000001")
    urls = doc.figures[0].image_urls
    assert urls[0].endswith("/articles/PMC9000001/bin/nanomaterials-01-00001-g001.jpg")
    assert decode_image(f.figure_image(doc, doc.figures[0])).shape == (256, 256)


def test_springer_key_only_in_api_key_param(srv, caplog):
    f = _fetcher("springer")
    with caplog.at_level(logging.DEBUG):
        doc = f.fetch_document("10.1186/s11671-024-00001-x")
        data = f.figure_image(doc, doc.figures[0])
        dois = f.search("silver", max_results=3)
    assert dois == ["10.1186/s11671-024-00001-x"]
    assert decode_image(data).shape == (256, 256)
    api = [r for r in srv.requests if r["path"].startswith("/openaccess/")]
    img = [r for r in srv.requests if r["path"].startswith("/image/")]
    assert api and img
    assert all(r["query"]["api_key"] == SPRINGER_KEY for r in api)
    assert all("api_key" not in r["query"] and SPRINGER_KEY not in r["raw_path"] for r in img)
    assert SPRINGER_KEY not in caplog.text
    assert SPRINGER_KEY not in repr(doc) and SPRINGER_KEY not in doc.url


def test_springer_wrong_key_and_not_open_access(srv, monkeypatch):
    f = _fetcher("springer")
    with pytest.raises(FetchError, match="not in the Springer Nature open-access collection"):
        f.fetch_document("10.1007/s00000-024-99999-9")
    monkeypatch.setenv("SPRINGER_API_KEY", "bad-key")
    with pytest.raises(FetchError, match="HTTP 401.*SPRINGER_API_KEY") as err:
        _fetcher("springer").fetch_document("10.1186/s11671-024-00001-x")
    assert "bad-key" not in str(err.value)


def test_crossref_metadata_and_delegation(srv):
    f = _fetcher("crossref")
    doc = f.fetch_document("https://doi.org/10.1016/j.replay.2024.100001")
    assert doc.source == "crossref/elsevier" and doc.extra["via"] == "elsevier"
    assert doc.license == "http://creativecommons.org/licenses/by/4.0/"
    assert doc.extra["text_mining_links"][0].startswith("https://api.elsevier.com/content/article/PII:")
    assert len(doc.figures) == 3
    assert decode_image(f.figure_image(doc, doc.figures[1])).ndim == 2
    cr = [r for r in srv.requests if r["path"].startswith("/works")]
    assert cr[0]["query"]["mailto"] == "replay-tests@example.org"
    els = [r for r in srv.requests if r["path"].startswith("/content/")]
    assert els and all(r["headers"]["X-ELS-APIKey"] == ELSEVIER_KEY for r in els)
    sdoc = f.fetch_document("10.1186/s11671-024-00001-x")  # link host springer → springer fetcher
    assert sdoc.source == "crossref/springer" and sdoc.figures
    assert f.search("gold", max_results=5) == ["10.1016/j.replay.2024.100001",
                                               "10.1186/s11671-024-00001-x"]


def test_crossref_without_readable_link_has_no_full_text(srv, monkeypatch):
    from imageextract.fetchers import crossref

    f = _fetcher("crossref")
    monkeypatch.setattr(crossref.CrossrefFetcher, "_delegate_for", lambda self, c: None)
    doc = f.fetch_document("10.1016/j.replay.2024.100001")
    assert not doc.full_text and not doc.figures and doc.title.startswith("Seed-mediated")


def test_fetch_protocol_yields_figures(srv):
    figs = list(_fetcher("springer").fetch("10.1186/s11671-024-00001-x"))
    assert [f.caption.split()[0] for f in figs] == ["TEM", "FTIR"]
    assert all(isinstance(f.image, np.ndarray) and f.doi == "10.1186/s11671-024-00001-x" for f in figs)
    assert figs[0].license == "http://creativecommons.org/licenses/by/4.0/"


def test_local_xml_html_pdf(tmp_path):
    art = tmp_path / "articles"
    art.mkdir()
    shutil.copy(FIX / "europepmc/PMC9000001.xml", art / "PMC9000001.xml")
    (art / "nanomaterials-01-00001-g001.png").write_bytes(
        pubfigures.encode(pubfigures.micrograph(1)))
    (art / "page.html").write_text(
        '<html><head><meta name="citation_doi" content="10.1/replay.html"></head><body>'
        '<figure><img src="../outside.png"><figcaption>Figure 1. TEM of Au NPs.</figcaption>'
        "</figure></body></html>")
    (tmp_path / "outside.png").write_bytes(pubfigures.encode(pubfigures.micrograph(2)))
    (art / "paper.pdf").write_bytes(pubfigures.make_pdf(
        pubfigures.micrograph(4), ["", "Figure 2. SEM image of TiO2 spheres.", ""]))
    f = get_fetcher("local", cache_dir=False)
    files = f.search(str(art))
    assert [Path(p).name for p in files] == ["PMC9000001.xml", "page.html", "paper.pdf"]
    assert f.can_handle(files[0]) and not f.can_handle(str(art / "missing.xml"))
    xml = f.fetch_document(files[0])
    assert xml.doi == "10.3390/nano.replay.0001" and xml.source == "local"
    assert decode_image(f.figure_image(xml, xml.figures[0])).shape == (256, 256)
    with pytest.raises(FetchError, match="not found next to the article"):
        f.figure_image(xml, xml.figures[1])
    html = f.fetch_document(files[1])
    with pytest.raises(FetchError, match="not found next to the article"):  # ../ stays out
        f.figure_image(html, html.figures[0])
    pdf = f.fetch_document(files[2])
    assert pdf.figures[0].label == "Figure 2"
    assert decode_image(f.figure_image(pdf, pdf.figures[0])).shape == (256, 256)


def test_decode_image_errors():
    with pytest.raises(FetchError, match="not a readable image"):
        decode_image(b"not an image", "x.png")
    data = pubfigures.encode(pubfigures.micrograph(1))
    with pytest.raises(FetchError, match="truncated|not a readable"):
        decode_image(data[: len(data) // 2], "half.png")
    with pytest.raises(FetchError, match="exceeds the limit"):
        decode_image(data, "big.png", max_pixels=100)
