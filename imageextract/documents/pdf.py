"""Figures with captions from PDF articles, with ``pypdf`` (BSD licence).

Embedded raster images are taken page by page (small ones — logos, icons —
are dropped); caption paragraphs are the text blocks (separated by vertical gaps, read in
pypdf's layout mode) that start with "Fig. N" / "Figure N".  On each page the k-th image goes with the k-th
caption; an image with no caption keeps an empty one (it is then judged by
the panel classifier alone).  Vector-only figures have no raster image and
are not returned.  The DOI is looked for in the metadata and the first pages;
a Creative Commons licence named in the text is kept.
"""

from __future__ import annotations

import io
import logging
import re

from ._xml import DocumentError, norm
from .model import Document, FigureRef, normalize_doi

logger = logging.getLogger(__name__)

_CAPTION_START = re.compile(r"^\s*((?:Fig(?:ure)?|FIG(?:URE)?)\.?\s*S?\d+[A-Za-z]?)\s*[.:|]?\s*(.*)$")
_CC = re.compile(r"\bCC[ -]BY(?:[ -](?:NC|SA|ND))*(?:[ -]\d\.\d)?\b"
                 r"|creativecommons\.org/licenses/[a-z-]+/\d\.\d", re.IGNORECASE)
MIN_IMAGE_SIDE_PX = 64
MAX_CAPTION_LINES = 8


def _captions(text: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        m = _CAPTION_START.match(lines[i])
        if not m:
            i += 1
            continue
        label, parts = norm(m.group(1)), [m.group(2)]
        i += 1
        while i < len(lines) and len(parts) < MAX_CAPTION_LINES:
            line = lines[i]
            if not line.strip() or _CAPTION_START.match(line):
                break
            parts.append(line)
            i += 1
        out.append((label, norm(" ".join(parts))))
    return out


def parse_pdf(data: bytes, *, identifier: str = "", url: str = "", source: str = "pdf"):
    """Parse a PDF into a :class:`Document` whose figures carry ``image_bytes``.

    Raises
    ------
    DocumentError
        Not a readable PDF (or an encrypted one).
    """
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as err:  # pragma: no cover - pypdf is a dependency
        raise DocumentError("reading PDFs needs pypdf: pip install pypdf") from err
    name = url or identifier or "PDF"
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(f"{name}: the PDF is encrypted")
        pages = list(reader.pages)
    except (PdfReadError, ValueError, KeyError, TypeError) as err:
        raise DocumentError(f"{name}: not a readable PDF ({err})") from None
    meta = reader.metadata or {}
    title = norm(str(meta.get("/Title") or ""))
    doi = normalize_doi(str(meta.get("/doi") or meta.get("/Subject") or ""))
    figures: list[FigureRef] = []
    license_ = None
    for pno, page in enumerate(pages, start=1):
        text = ""
        for mode in ("layout", "plain"):  # layout mode keeps paragraph gaps as blank lines
            try:
                text = page.extract_text(extraction_mode=mode) or ""
                break
            except Exception as err:  # broken content streams: keep the images
                logger.debug("%s page %d: no %s text (%s)", name, pno, mode, err)
        if pno <= 2 and not doi:
            doi = normalize_doi(text)
        if license_ is None:
            m = _CC.search(text)
            license_ = m.group(0) if m else None
        caps = _captions(text)
        try:
            images = list(page.images)
        except Exception as err:
            logger.warning("%s page %d: images could not be extracted (%s)", name, pno, err)
            images = []
        k = 0
        for img in images:
            try:
                w, h = img.image.size
            except Exception:
                continue
            if min(w, h) < MIN_IMAGE_SIDE_PX:
                continue
            if k < len(caps):
                label, caption = caps[k]
            else:
                label, caption = f"p{pno}-img{k + 1}", ""
            k += 1
            figures.append(FigureRef(label=label, caption=caption, figure_id=f"p{pno}-{img.name}",
                                     image_name=img.name, image_bytes=bytes(img.data)))
    return Document(doi=doi, title=title, license=license_, figures=tuple(figures),
                    source=source, identifier=identifier or doi, url=url)
