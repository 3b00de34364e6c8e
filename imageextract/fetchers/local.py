"""Local files: article XML (Elsevier, JATS), HTML pages, PDFs and bare images.

``search(query)`` lists the article files of a folder (recursively), a glob
pattern or one file.  Images referenced by an XML/HTML article are looked
up next to it (``graphic/@href`` with or without an extension, the file
name of an object URL, or a file ending in the figure locator such as
``…-gr1.jpg``), and never outside the article's folder.  PDFs carry their
images (read with ``pypdf``).
"""

from __future__ import annotations

import glob
import logging
import posixpath
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..documents import parse_document
from ..documents.model import Document, FigureRef
from ..errors import FetchError
from .base import BaseFetcher

logger = logging.getLogger(__name__)

ARTICLE_SUFFIXES = (".xml", ".nxml", ".html", ".htm", ".xhtml", ".pdf")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp", ".webp")


class LocalFetcher(BaseFetcher):
    """Articles and images on disk (no network)."""

    name = "local"

    def _make_client(self):  # pragma: no cover - never used
        raise FetchError("the local source does not use the network")

    def can_handle(self, identifier: str) -> bool:
        try:
            return Path(identifier).exists()
        except (OSError, ValueError):
            return False

    def search(self, query: str, *, max_results: int = 10_000) -> list[str]:
        p = Path(query)
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in ARTICLE_SUFFIXES)
        elif p.is_file():
            files = [str(p)]
        else:
            files = sorted(f for f in glob.glob(query, recursive=True)
                           if Path(f).suffix.lower() in ARTICLE_SUFFIXES + IMAGE_SUFFIXES)
        if not files:
            raise FetchError(f"local: no article files (XML, HTML, PDF) found at {query!r}")
        return files[:max_results]

    def fetch_document(self, identifier: str) -> Document:
        path = Path(identifier)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise FetchError(f"{path}: cannot read ({err.strerror or err})") from None
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return Document(title=path.stem, figures=(FigureRef(label=path.stem, figure_id=path.name,
                                                                image_name=path.name, image_bytes=data),),
                            source=self.name, identifier=str(path), url=str(path))
        doc = parse_document(data, name=path.name, identifier=str(path), url=str(path),
                             source=self.name)
        return replace(doc, source=self.name)

    def _candidates(self, folder: Path, fig: FigureRef) -> list[Path]:
        names = [fig.image_name] + [unquote(posixpath.basename(urlsplit(u).path)) for u in fig.image_urls]
        out: list[Path] = []
        for name in filter(None, names):
            rel = Path(unquote(urlsplit(name).path)) if "://" in name else Path(name)
            out.append(folder / rel)
            if not rel.suffix:
                out += [folder / f"{rel}{ext}" for ext in IMAGE_SUFFIXES]
        loc = fig.figure_id or fig.image_name
        if loc:
            for ext in IMAGE_SUFFIXES:
                out += sorted(folder.glob(f"*{glob.escape(Path(loc).stem)}{ext}"))
        return out

    def figure_image(self, document: Document, figure: FigureRef) -> bytes:
        if figure.image_bytes is not None:
            return super().figure_image(document, figure)
        folder = Path(document.url or document.identifier).resolve().parent
        for cand in self._candidates(folder, figure):
            try:
                real = cand.resolve()
                real.relative_to(folder)  # never outside the article's folder
            except (ValueError, OSError):
                continue
            if real.is_file():
                self.last_image_url = str(real)
                return real.read_bytes()
        raise FetchError(f"{document.url}: image of {figure.label} "
                         f"({figure.image_name or figure.figure_id}) not found next to the article")
