"""Europe PMC: open-access search, JATS full text and figure files.

Endpoints (REST base ``https://www.ebi.ac.uk``, site ``https://europepmc.org``;
``$IMAGEEXTRACT_EUROPEPMC_URL`` replaces both):

* ``GET /europepmc/webservices/rest/search?query=(Q) AND OPEN_ACCESS:y AND HAS_FT:y
  &format=json&resultType=lite&pageSize=N&cursorMark=*`` — read
  ``resultList.result[].doi``/``pmcid``, ``nextCursorMark``, ``hitCount``.
  A DOI is resolved to its PMCID with ``query=DOI:"…"``.
* ``GET /europepmc/webservices/rest/{PMCID}/fullTextXML`` — JATS; licence from
  ``<permissions>``.
* Figures: ``GET /articles/{PMCID}/bin/{graphic href}[.jpg|.png|.gif]`` on the
  site, falling back to ``GET /europepmc/webservices/rest/{PMCID}/supplementaryFiles
  ?includeInlineImage=true`` (a zip holding the inline images).

No key; the service asks for moderate use (default 5 requests/s here).
"""

from __future__ import annotations

import io
import logging
import posixpath
import zipfile
from dataclasses import replace
from urllib.parse import quote

from ..documents.jats import parse_jats
from ..documents.model import Document, FigureRef, normalize_doi
from ..errors import FetchError
from ._http import HttpClient, base_url
from .base import BaseFetcher, is_pmcid, url_host

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://www.ebi.ac.uk"
DEFAULT_SITE_URL = "https://europepmc.org"
REST = "/europepmc/webservices/rest"
HOSTS = frozenset({"www.ebi.ac.uk", "europepmc.org", "www.europepmc.org"})
_EXTS = (".jpg", ".png", ".gif", ".jpeg", ".tif")


class EuropePMCFetcher(BaseFetcher):
    """Open-access articles from Europe PMC (no key needed)."""

    name = "europepmc"
    rate_per_s = 5.0

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._zips: dict[str, zipfile.ZipFile | None] = {}

    @property
    def base(self) -> str:
        return base_url(self.name, DEFAULT_URL)

    @property
    def site(self) -> str:
        return base_url(self.name, DEFAULT_SITE_URL)

    def _make_client(self) -> HttpClient:
        opts = {"rate_per_s": self.rate_per_s, **self.http_options}
        return HttpClient(self.name, [self.base, self.site], cache_dir=self.cache_dir, **opts)

    def can_handle(self, identifier: str) -> bool:
        host = url_host(identifier)
        if host:
            return host in HOSTS
        return is_pmcid(identifier) or bool(normalize_doi(identifier))

    def _search(self, query: str, page_size: int, cursor: str = "*") -> dict:
        return self.http.get(f"{REST}/search", params={
            "query": query, "format": "json", "resultType": "lite", "pageSize": page_size,
            "cursorMark": cursor}, headers={"Accept": "application/json"}).json()

    def search(self, query: str, *, max_results: int = 25) -> list[str]:
        """DOIs (PMCIDs where an article has no DOI) of open-access articles
        with full text that match ``query`` (Europe PMC query syntax)."""
        q = f"({query}) AND OPEN_ACCESS:y AND HAS_FT:y"
        out: list[str] = []
        cursor = "*"
        while len(out) < max_results:
            data = self._search(q, min(1000, max(max_results - len(out), 1)), cursor)
            results = data.get("resultList", {}).get("result", [])
            for r in results:
                ident = normalize_doi(r.get("doi", "")) or (r.get("pmcid") or "").upper()
                if ident and ident not in out and r.get("pmcid"):
                    out.append(ident)
            nxt = data.get("nextCursorMark")
            if not results or not nxt or nxt == cursor:
                break
            cursor = nxt
        return out[:max_results]

    def pmcid_for(self, doi: str) -> tuple[str, dict]:
        data = self._search(f'DOI:"{doi}"', 5)
        for r in data.get("resultList", {}).get("result", []):
            if r.get("pmcid") and normalize_doi(r.get("doi", "")) == doi:
                return r["pmcid"].upper(), r
        raise FetchError(f"europepmc: no open-access full text for DOI {doi} (no PMCID found)")

    def fetch_document(self, identifier: str) -> Document:
        ident = identifier.strip()
        hit: dict = {}
        if is_pmcid(ident):
            pmcid = ident.upper()
        else:
            doi = normalize_doi(ident)
            if not doi:
                raise FetchError(f"europepmc: {identifier!r} is neither a DOI nor a PMCID")
            pmcid, hit = self.pmcid_for(doi)
        resp = self.http.get(f"{REST}/{pmcid}/fullTextXML", headers={"Accept": "application/xml"})
        doc = parse_jats(resp.content, identifier=identifier, url=resp.url, source=self.name)
        figures = tuple(replace(f, image_urls=self._figure_urls(pmcid, f)) for f in doc.figures)
        extra = dict(doc.extra, pmcid=pmcid)
        return replace(doc, figures=figures, extra=extra,
                       doi=doc.doi or normalize_doi(hit.get("doi", "")),
                       title=doc.title or hit.get("title", ""),
                       journal=doc.journal or hit.get("journalTitle", ""),
                       license=doc.license or hit.get("license") or None)

    def _figure_urls(self, pmcid: str, fig: FigureRef) -> tuple[str, ...]:
        href = fig.image_name
        if not href:
            return ()
        name = quote(href, safe="/._-")
        base = f"{self.site}/articles/{pmcid}/bin/{name}"
        if posixpath.splitext(href)[1].lower() in _EXTS:
            return (base,)
        return tuple(base + ext for ext in _EXTS[:3])

    def figure_image(self, document: Document, figure: FigureRef) -> bytes:
        if figure.image_bytes is not None:
            return super().figure_image(document, figure)
        last: FetchError | None = None
        for url in figure.image_urls:
            try:
                data = self.http.get(url, headers={"Accept": "image/*"}).content
                self.last_image_url = url
                return data
            except FetchError as err:
                last = err
                if getattr(err, "status", 0) != 404:
                    break
        pmcid = document.extra.get("pmcid", "")
        data = self._from_zip(pmcid, figure.image_name)
        if data is not None:
            self.last_image_url = (f"{self.base}{REST}/{pmcid}/supplementaryFiles"
                                   f"?includeInlineImage=true#{figure.image_name}")
            return data
        raise last or FetchError(f"europepmc {document.extra.get('pmcid')}: no image for "
                                 f"{figure.label}")

    def _from_zip(self, pmcid: str, href: str) -> bytes | None:
        if not pmcid or not href:
            return None
        if pmcid not in self._zips:
            try:
                resp = self.http.get(f"{REST}/{pmcid}/supplementaryFiles",
                                     params={"includeInlineImage": "true"})
                self._zips[pmcid] = zipfile.ZipFile(io.BytesIO(resp.content))
            except (FetchError, zipfile.BadZipFile) as err:
                logger.debug("europepmc %s: no supplementary zip (%s)", pmcid, err)
                self._zips[pmcid] = None
        zf = self._zips[pmcid]
        if zf is None:
            return None
        stem = posixpath.splitext(posixpath.basename(href))[0]
        for info in zf.infolist():
            base = posixpath.basename(info.filename)
            if posixpath.splitext(base)[0] == stem and base.lower().endswith(_EXTS):
                return zf.read(info)
        return None
