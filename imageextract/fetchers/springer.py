"""Springer Nature Open Access API (JATS full text) and figure images.

Endpoints (API base ``https://api.springernature.com``, images
``https://static-content.springer.com``; ``$IMAGEEXTRACT_SPRINGER_URL``
replaces both):

* ``GET /openaccess/jats?q=doi:{doi}&api_key=…`` — a ``<response>`` envelope
  (``apiMessage``, ``query``, ``result/total``, ``records/article``) holding
  the JATS article; read as in :mod:`imageextract.documents.jats`.
* ``GET /openaccess/json?q=…&s={start}&p={page}&api_key=…`` — search; read
  ``records[].doi`` and ``result[0].total``.
* Figures: ``GET /image/art%3A{doi}/{graphic href}`` on the image host
  (``MediaObjects/…_Fig1_HTML.png``); no key is sent there.

The key travels as the ``api_key`` query parameter (the API's only way); the
HTTP client keeps it out of logs, cache keys and error messages, and scrubs
it from response bodies, which echo it back (``<apiKey>``/``"apiKey"``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from urllib.parse import quote

from ..documents._xml import first_local, norm, parse_xml
from ..documents.jats import find_article, parse_jats
from ..documents.model import Document, normalize_doi
from ..errors import FetchError
from ._http import HttpClient, base_url
from .base import BaseFetcher, doi_prefix, env_secret, url_host

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://api.springernature.com"
DEFAULT_IMAGE_URL = "https://static-content.springer.com"
DOI_PREFIXES = frozenset({"10.1007", "10.1186", "10.1038", "10.1140", "10.1557", "10.1245",
                          "10.1361", "10.1057", "10.1134", "10.1617"})
HOST_SUFFIXES = ("springer.com", "springernature.com", "nature.com", "biomedcentral.com",
                 "springeropen.com")


class SpringerFetcher(BaseFetcher):
    """Open-access articles from Springer Nature (needs ``SPRINGER_API_KEY``)."""

    name = "springer"
    rate_per_s = 2.0

    @property
    def base(self) -> str:
        return base_url(self.name, DEFAULT_URL)

    @property
    def image_base(self) -> str:
        return base_url(self.name, DEFAULT_IMAGE_URL)

    def _key(self) -> str:
        key = env_secret("SPRINGER_API_KEY")
        if not key:
            raise FetchError("the springer source needs an API key: set SPRINGER_API_KEY "
                             "(Open Access API key from the Springer Nature developer portal)")
        return key

    def _make_client(self) -> HttpClient:
        key = self._key()
        opts = {"rate_per_s": self.rate_per_s, **self.http_options}
        return HttpClient(self.name, [self.base, self.image_base], secrets=[key],
                          cache_dir=self.cache_dir, auth_hint="check SPRINGER_API_KEY", **opts)

    def can_handle(self, identifier: str) -> bool:
        host = url_host(identifier)
        if host:
            return host.endswith(HOST_SUFFIXES)
        return doi_prefix(identifier) in DOI_PREFIXES

    def fetch_document(self, identifier: str) -> Document:
        doi = normalize_doi(identifier)
        if not doi:
            raise FetchError(f"springer: {identifier!r} is not a DOI")
        resp = self.http.get("/openaccess/jats", params={"q": f"doi:{doi}", "api_key": self._key()},
                             headers={"Accept": "application/xml"})
        root = parse_xml(resp.content, resp.url)
        total = first_local(root, "result", "total")
        if find_article(root) is None:
            n = norm(total.text) if total is not None else "0"
            raise FetchError(f"springer: {doi} is not in the Springer Nature open-access "
                             f"collection ({n} record(s) found)")
        doc = parse_jats(root, identifier=identifier, url=resp.url, source=self.name)
        doi = doc.doi or doi
        art = quote(f"art:{doi}", safe="")
        figures = tuple(
            replace(f, image_urls=(f"{self.image_base}/image/{art}/{quote(f.image_name, safe='/._-')}",)
                    if f.image_name else ())
            for f in doc.figures)
        return replace(doc, doi=doi, figures=figures)

    def search(self, query: str, *, max_results: int = 25) -> list[str]:
        """DOIs of open-access Springer Nature articles matching ``query``
        (API query syntax, e.g. ``keyword:"gold nanoparticles"``)."""
        dois: list[str] = []
        start = 1
        while len(dois) < max_results:
            page = min(20, max_results - len(dois))
            data = self.http.get("/openaccess/json", params={
                "q": query, "s": start, "p": page, "api_key": self._key()},
                headers={"Accept": "application/json"}).json()
            records = data.get("records") or []
            for r in records:
                doi = normalize_doi(r.get("doi", "") or r.get("identifier", ""))
                if doi and doi not in dois:
                    dois.append(doi)
            result = (data.get("result") or [{}])[0]
            try:
                total = int(str(result.get("total", "0")).replace(",", ""))
            except ValueError:
                total = 0
            start += len(records)
            if not records or start > total:
                break
        return dois[:max_results]
