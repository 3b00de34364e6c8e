"""One document model for every source: what a parsed article holds."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_DOI_RE = re.compile(r"\b(10\.\d{4,9}/[^\s\"'<>]+)", re.IGNORECASE)


def normalize_doi(text: str) -> str:
    """Bare, lower-case DOI from ``text`` ("doi:…", "https://doi.org/…"), or "".

    >>> normalize_doi("https://doi.org/10.1016/J.Example.2024.100001")
    '10.1016/j.example.2024.100001'
    >>> normalize_doi("not a doi")
    ''
    """
    if not text:
        return ""
    m = _DOI_RE.search(text.strip())
    if not m:
        return ""
    return m.group(1).rstrip(".,;)]").lower()


@dataclass(frozen=True)
class FigureRef:
    """A figure as the article describes it, before its image is decoded.

    Parameters
    ----------
    label : str
        As printed ("Fig. 1", "Figure 2"); falls back to ``figure_id``.
    caption : str
        Caption text, whitespace-normalised.
    figure_id : str
        Identifier inside the article (``gr1``, ``fig1``, ``Fig1``).
    image_urls : tuple of str
        Where the image can be downloaded, best (highest resolution) first.
    image_name : str
        File name or reference of the image in the source (``graphic/@href``).
    image_bytes : bytes or None
        The image itself, when the document carries it (PDF, local files).
    """

    label: str
    caption: str = ""
    figure_id: str = ""
    image_urls: tuple[str, ...] = ()
    image_name: str = ""
    image_bytes: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """Stable id of the figure inside its document."""
        return self.figure_id or self.label


@dataclass(frozen=True)
class Document:
    """A parsed article.

    Parameters
    ----------
    doi : str
        Bare lower-case DOI ("" when unknown).
    title, journal : str
    license : str or None
        Licence URL or name as the source states it (None when not stated).
    figures : tuple of FigureRef
    source : str
        Fetcher name (``"elsevier"``, ``"local"``).
    identifier : str
        What the document was fetched by (DOI, PMCID, path).
    url : str
        Where the full text came from (secrets redacted) or the local path.
    full_text : bool
        False when only metadata was available (no body, no figures).
    extra : dict
        Source-specific metadata (PMCID, text-mining links, open-access flag).
    """

    doi: str = ""
    title: str = ""
    journal: str = ""
    license: str | None = None
    figures: tuple[FigureRef, ...] = ()
    source: str = ""
    identifier: str = ""
    url: str = ""
    full_text: bool = True
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def document_id(self) -> str:
        """``doi:<doi>`` when a DOI is known, else ``<source>:<identifier>``."""
        return f"doi:{self.doi}" if self.doi else f"{self.source}:{self.identifier or self.url}"
