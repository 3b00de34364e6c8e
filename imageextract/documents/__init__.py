"""Parsing articles into one :class:`Document` model.

``parse_document(data, name=...)`` picks the parser from the content:
Elsevier Article Retrieval XML, JATS (Europe PMC, Springer Nature, PMC
``.nxml``), HTML pages and PDFs.  XML is parsed with entity resolution and
network access switched off.
"""

from __future__ import annotations

from ._xml import DocumentError, local, parse_xml
from .elsevier import is_elsevier_xml, parse_elsevier
from .html import parse_html
from .jats import find_article, parse_jats
from .model import Document, FigureRef, normalize_doi
from .pdf import parse_pdf


def sniff(data: bytes, name: str = "") -> str:
    """``"pdf"``, ``"html"``, ``"elsevier"``, ``"jats"`` or ``"unknown"``.

    >>> sniff(b"%PDF-1.7 ...")
    'pdf'
    >>> sniff(b"<!DOCTYPE html><html><body></body></html>")
    'html'
    """
    head = data[:2048].lstrip()
    low = head.lower()
    if head.startswith(b"%PDF"):
        return "pdf"
    if low.startswith((b"<!doctype html", b"<html")) or name.lower().endswith((".html", ".htm")):
        return "html"
    if b"full-text-retrieval-response" in head or b"elsevier.com/xml/svapi" in head:
        return "elsevier"
    if head.startswith(b"<"):
        try:
            root = parse_xml(data, name or "document")
        except DocumentError:
            return "unknown"
        if is_elsevier_xml(root):
            return "elsevier"
        if find_article(root) is not None:
            return "jats"
        if local(root) == "html":
            return "html"
    return "unknown"


def parse_document(data: bytes, *, name: str = "", identifier: str = "", url: str = "",
                   source: str = "local") -> Document:
    """Parse ``data`` with the parser its content calls for.

    Raises
    ------
    DocumentError
        Unknown format or unreadable content.
    """
    kind = sniff(data, name)
    kw = dict(identifier=identifier, url=url, source=source)
    if kind == "pdf":
        return parse_pdf(data, **kw)
    if kind == "html":
        return parse_html(data, **kw)
    if kind == "elsevier":
        return parse_elsevier(data, **kw)
    if kind == "jats":
        return parse_jats(data, **kw)
    raise DocumentError(f"{name or identifier or 'document'}: not a PDF, HTML page, Elsevier XML "
                        "or JATS article")


__all__ = [
    "Document", "DocumentError", "FigureRef", "normalize_doi", "parse_document", "parse_elsevier",
    "parse_html", "parse_jats", "parse_pdf", "sniff",
]
