"""Fetchers: articles and their figures from publisher and open-access APIs
and from local files (entry-point group ``imageextract.fetchers``).

=============  ==============================================================
``elsevier``   Article Retrieval API (full text XML) + object URLs; Scopus search
``europepmc``  Europe PMC REST: open-access search, JATS full text, figure files
``springer``   Springer Nature Open Access API (JATS) + static figure images
``crossref``   Crossref works: metadata, licences, text-mining links (full text
               through the fetcher that serves the link's host)
``local``      article XML (Elsevier, JATS), HTML pages and PDFs on disk
=============  ==============================================================

Keys come from the environment only (``ELSEVIER_API_KEY``,
``ELSEVIER_INSTTOKEN``, ``SPRINGER_API_KEY``, ``CROSSREF_MAILTO``); base URLs
from ``IMAGEEXTRACT_<SOURCE>_URL`` (scheme, host and port only).
"""

from __future__ import annotations

from typing import Any

from .base import FETCHERS, BaseFetcher, Fetcher, decode_image


def available_fetchers() -> list[str]:
    """Names of every installed fetcher."""
    return FETCHERS.names()


def get_fetcher(name: str, **options: Any):
    """Build fetcher ``name``; an unknown name raises
    :class:`~imageextract.errors.BackendNotFoundError` listing the installed ones."""
    return FETCHERS.create(name, **options)


__all__ = ["FETCHERS", "BaseFetcher", "Fetcher", "available_fetchers", "decode_image", "get_fetcher"]
