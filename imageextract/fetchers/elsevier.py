"""Elsevier: Article Retrieval API (full text) and Scopus Search API (DOIs).

Endpoints (base ``https://api.elsevier.com``, override ``$IMAGEEXTRACT_ELSEVIER_URL``):

* ``GET /content/article/doi/{doi}?view=FULL`` (or ``/content/article/pii/{pii}``)
  with ``X-ELS-APIKey``, optional ``X-ELS-Insttoken``, ``Accept: text/xml``.
  Read: ``coredata`` (``prism:doi``, ``dc:title``, ``prism:publicationName``,
  ``openaccessUserLicense``), ``ce:figure`` (``ce:label``, ``ce:caption``,
  ``ce:link/@locator``) and ``objects/object`` (``@ref``, ``@type``, URL).
* Figure images: the ``objects`` URLs (Object Retrieval API,
  ``/content/object/eid/{eid}-{ref}.{ext}``), the highest resolution first;
  same key headers.
* ``GET /content/search/scopus?query=…&count=…&start=…&field=prism:doi``
  (``Accept: application/json``); read ``search-results.entry[].prism:doi``;
  DOIs that are not Elsevier's are dropped (no full text here).

Quotas: the API reports ``X-RateLimit-Limit/-Remaining/-Reset``; the client
waits for a reset (or stops with a clear message when it is far away).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from urllib.parse import quote, unquote

from ..documents.elsevier import parse_elsevier
from ..documents.model import Document, normalize_doi
from ..errors import FetchError
from ._http import HttpClient, base_url, origin_of, rebase_url
from .base import BaseFetcher, doi_prefix, env_secret, url_host

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://api.elsevier.com"
#: DOI prefixes of Elsevier imprints (Elsevier, Academic Press, Cell Press, …).
DOI_PREFIXES = frozenset({"10.1016", "10.1006", "10.1053", "10.1054", "10.1067", "10.1078",
                          "10.1205", "10.3182", "10.1383", "10.1529"})
HOSTS = frozenset({"api.elsevier.com", "www.sciencedirect.com", "sciencedirect.com",
                   "linkinghub.elsevier.com"})
_PII = re.compile(r"(?:pii[:/])\s*(S?[0-9X()\-]{15,})", re.IGNORECASE)


class ElsevierFetcher(BaseFetcher):
    """Full text and figures of Elsevier articles (needs ``ELSEVIER_API_KEY``)."""

    name = "elsevier"
    rate_per_s = 5.0

    @property
    def base(self) -> str:
        return base_url(self.name, DEFAULT_URL)

    def _make_client(self) -> HttpClient:
        key = env_secret("ELSEVIER_API_KEY")
        if not key:
            raise FetchError("the elsevier source needs an API key: set ELSEVIER_API_KEY "
                             "(and ELSEVIER_INSTTOKEN for subscribed content)")
        token = env_secret("ELSEVIER_INSTTOKEN")
        headers = {"X-ELS-APIKey": key, "Accept": "text/xml"}
        if token:
            headers["X-ELS-Insttoken"] = token
        opts = {"rate_per_s": self.rate_per_s, **self.http_options}
        return HttpClient(self.name, [self.base], headers=headers, secrets=[key, token],
                          cache_dir=self.cache_dir,
                          auth_hint="check ELSEVIER_API_KEY (and ELSEVIER_INSTTOKEN for "
                                    "subscribed content)", **opts)

    def can_handle(self, identifier: str) -> bool:
        host = url_host(identifier)
        if host:
            return host in HOSTS or host.endswith(".elsevier.com")
        return doi_prefix(identifier) in DOI_PREFIXES or bool(_PII.match(identifier.strip()))

    def _article_path(self, identifier: str) -> str:
        text = unquote(identifier.strip())
        m = _PII.search(text)
        if m:
            return f"/content/article/pii/{m.group(1)}"
        doi = normalize_doi(text)
        if not doi:
            raise FetchError(f"elsevier: {identifier!r} is neither a DOI nor a PII")
        return f"/content/article/doi/{quote(doi, safe='/')}"

    def fetch_document(self, identifier: str) -> Document:
        resp = self.http.get(self._article_path(identifier), params={"view": "FULL"})
        doc = parse_elsevier(resp.content, identifier=identifier, url=resp.url, source=self.name)
        real = origin_of(DEFAULT_URL)
        figures = tuple(
            replace(f, image_urls=tuple(rebase_url(u, self.base) if origin_of(u) == real else u
                                        for u in f.image_urls))
            for f in doc.figures)
        if not doc.full_text:
            logger.warning("elsevier: %s came back without full text (not entitled? set "
                           "ELSEVIER_INSTTOKEN or use an open-access article)", identifier)
        return replace(doc, figures=figures)

    def figure_image(self, document, figure) -> bytes:
        if figure.image_bytes is not None:
            return super().figure_image(document, figure)
        errors = []
        for url in figure.image_urls:
            try:
                data = self.http.get(url, headers={"Accept": "image/*, */*"}).content
                self.last_image_url = url
                return data
            except FetchError as err:
                errors.append(str(err))
                if getattr(err, "status", 0) not in (404, 410):
                    break
        raise FetchError(errors[-1] if errors else
                         f"{document.doi} {figure.label}: no image in the article's object list")

    def search(self, query: str, *, max_results: int = 25) -> list[str]:
        """Elsevier DOIs from the Scopus Search API (``TITLE-ABS-KEY(query)``
        unless ``query`` already uses Scopus field codes)."""
        q = query if re.search(r"[A-Z-]+\(", query) else f"TITLE-ABS-KEY({query})"
        dois: list[str] = []
        start = 0
        dropped = 0
        while len(dois) < max_results:
            count = min(25, max_results - len(dois))
            data = self.http.get("/content/search/scopus", params={
                "query": q, "count": count, "start": start, "field": "prism:doi,dc:title"},
                headers={"Accept": "application/json"}).json()
            res = data.get("search-results", {})
            entries = [e for e in res.get("entry", []) if "error" not in e]
            if not entries:
                break
            for e in entries:
                doi = normalize_doi(e.get("prism:doi", ""))
                if doi and doi_prefix(doi) in DOI_PREFIXES:
                    if doi not in dois:
                        dois.append(doi)
                elif doi:
                    dropped += 1
            start += len(entries)
            total = int(res.get("opensearch:totalResults") or 0)
            if start >= total:
                break
        if dropped:
            logger.info("elsevier search: %d result(s) from other publishers dropped", dropped)
        return dois[:max_results]
