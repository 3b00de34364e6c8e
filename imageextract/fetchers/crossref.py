"""Crossref: metadata, licences and text-mining links; full text through the
fetcher that serves a link's host.

Endpoints (base ``https://api.crossref.org``, override ``$IMAGEEXTRACT_CROSSREF_URL``):

* ``GET /works/{doi}`` — read ``message.DOI``, ``title[0]``,
  ``container-title[0]``, ``publisher``, ``license[]`` (``URL``,
  ``content-version``, ``start``) and ``link[]`` (``URL``, ``content-type``,
  ``intended-application == "text-mining"``).
* ``GET /works?query=…&filter=has-full-text:true,has-license:true,type:journal-article
  &rows=…&cursor=*&select=DOI`` — search; read ``message.items[].DOI`` and
  ``message.next-cursor``.

``mailto`` (from ``CROSSREF_MAILTO``) puts requests in the polite pool.  The
rate follows Crossref's published limits and its ``X-Rate-Limit-*`` headers.

Crossref hosts no full text: the text-mining links point at publishers.
Each link is given to the installed fetcher whose ``can_handle`` accepts its
URL (e.g. ``api.elsevier.com`` → ``elsevier``), which fetches the article
from its own API with its own key; otherwise the DOI prefix picks the
fetcher.  The document keeps Crossref's licence when the publisher's copy
names none.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from urllib.parse import quote

from ..documents.model import Document, normalize_doi
from ..errors import FetchError
from ._http import HttpClient, base_url
from .base import FETCHERS, BaseFetcher, env_secret, url_host

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://api.crossref.org"
#: Fetchers never used for delegation (no full text of their own, or local).
_NOT_DELEGATES = ("crossref", "local", "europepmc")


def pick_license(licenses: list[dict]) -> str | None:
    """The licence URL of the version of record (else the first one).

    >>> pick_license([{"URL": "a", "content-version": "am"}, {"URL": "b", "content-version": "vor"}])
    'b'
    """
    if not licenses:
        return None
    for version in ("vor", "tdm", "unspecified"):
        for lic in licenses:
            if lic.get("content-version") == version and lic.get("URL"):
                return lic["URL"]
    return licenses[0].get("URL")


class CrossrefFetcher(BaseFetcher):
    """Metadata and licences from Crossref; full text through other fetchers."""

    name = "crossref"
    rate_per_s = 5.0  # public pool; the polite pool (mailto) allows more

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._delegates: dict[str, BaseFetcher] = {}

    @property
    def base(self) -> str:
        return base_url(self.name, DEFAULT_URL)

    def _make_client(self) -> HttpClient:
        mailto = env_secret("CROSSREF_MAILTO")
        opts = {"rate_per_s": self.rate_per_s * (2 if mailto else 1), **self.http_options}
        return HttpClient(self.name, [self.base], secrets=[mailto], cache_dir=self.cache_dir,
                          headers={"Accept": "application/json"}, **opts)

    def _params(self, **params) -> dict:
        mailto = env_secret("CROSSREF_MAILTO")
        return {**params, **({"mailto": mailto} if mailto else {})}

    def can_handle(self, identifier: str) -> bool:
        return bool(normalize_doi(identifier)) and not url_host(identifier)

    def metadata(self, doi: str) -> dict:
        """The ``message`` of ``/works/{doi}``."""
        data = self.http.get(f"/works/{quote(doi, safe='/')}", params=self._params()).json()
        if data.get("status") != "ok" or "message" not in data:
            raise FetchError(f"crossref: unexpected answer for {doi}: status {data.get('status')!r}")
        return data["message"]

    def search(self, query: str, *, max_results: int = 25) -> list[str]:
        dois: list[str] = []
        cursor = "*"
        while len(dois) < max_results:
            data = self.http.get("/works", params=self._params(
                query=query, filter="has-full-text:true,has-license:true,type:journal-article",
                rows=min(100, max_results - len(dois)), cursor=cursor, select="DOI")).json()
            msg = data.get("message", {})
            items = msg.get("items", [])
            for it in items:
                doi = normalize_doi(it.get("DOI", ""))
                if doi and doi not in dois:
                    dois.append(doi)
            nxt = msg.get("next-cursor")
            if not items or not nxt or nxt == cursor:
                break
            cursor = nxt
        return dois[:max_results]

    def _delegate_for(self, candidates: list[str]) -> BaseFetcher | None:
        for name in FETCHERS.names():
            if name in _NOT_DELEGATES:
                continue
            try:
                fetcher = self._delegates.get(name) or FETCHERS.create(
                    name, cache_dir=self.cache_dir or False, http_options=self.http_options)
            except Exception as err:  # a broken plugin must not stop the others
                logger.debug("crossref: fetcher %s unavailable: %s", name, err)
                continue
            self._delegates[name] = fetcher
            if any(fetcher.can_handle(c) for c in candidates):
                return fetcher
        return None

    def fetch_document(self, identifier: str) -> Document:
        doi = normalize_doi(identifier)
        if not doi:
            raise FetchError(f"crossref: {identifier!r} is not a DOI")
        msg = self.metadata(doi)
        links = [lk for lk in msg.get("link", [])
                 if lk.get("intended-application") in ("text-mining", "unspecified") and lk.get("URL")]
        links.sort(key=lambda lk: "xml" not in (lk.get("content-type") or ""))
        meta = Document(
            doi=normalize_doi(msg.get("DOI", doi)) or doi,
            title=(msg.get("title") or [""])[0], journal=(msg.get("container-title") or [""])[0],
            license=pick_license(msg.get("license", [])), source=self.name, identifier=identifier,
            url=f"{self.base}/works/{doi}", full_text=False,
            extra={"publisher": msg.get("publisher", ""),
                   "text_mining_links": [lk["URL"] for lk in links]})
        delegate = (self._delegate_for([lk["URL"] for lk in links])
                    or self._delegate_for([doi]))
        if delegate is None:
            hosts = sorted({url_host(lk["URL"]) for lk in links}) or ["none"]
            logger.warning("crossref: %s has no text-mining link an installed fetcher can read "
                           "(link hosts: %s)", doi, ", ".join(hosts))
            return meta
        logger.info("crossref: %s full text through %s", doi, delegate.name)
        doc = delegate.fetch_document(doi)
        return replace(doc, title=doc.title or meta.title, journal=doc.journal or meta.journal,
                       license=doc.license or meta.license,
                       source=f"{self.name}/{delegate.name}",
                       extra={**doc.extra, **meta.extra, "via": delegate.name})

    def figure_image(self, document: Document, figure) -> bytes:
        via = document.extra.get("via")
        if via and via in self._delegates:
            delegate = self._delegates[via]
            data = delegate.figure_image(document, figure)
            self.last_image_url = delegate.last_image_url
            return data
        return super().figure_image(document, figure)

    def close(self) -> None:
        for f in self._delegates.values():
            f.close()
        super().close()
