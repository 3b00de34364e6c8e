"""Article HTML pages (saved from a publisher site or exported by a tool).

What is read: ``<meta name="citation_doi|dc.identifier|prism.doi">``,
``citation_title`` (else ``<title>``), ``citation_journal_title``, the licence
from ``<link rel="license">`` or ``<meta name="dc.rights|citation_license">``,
and every ``<figure>``: its ``<img>`` (the ``src``, plus a linked larger
image when the figure links to one) and ``<figcaption>`` (label = a leading
"Fig. N"/"Figure N", else the figure's ``id``).
"""

from __future__ import annotations

import re

from ._xml import DocumentError, norm
from .model import Document, FigureRef, normalize_doi

_LABEL = re.compile(r"^\s*((?:Fig(?:ure)?|FIG(?:URE)?)\.?\s*S?\d+[A-Za-z]?)[.:|]?\s*")
_IMG_EXT = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp", ".webp")


def split_label(caption: str) -> tuple[str, str]:
    """``("Fig. 2", rest)`` when the caption starts with a figure label.

    >>> split_label("Figure 2. TEM image of Au")
    ('Figure 2', 'TEM image of Au')
    """
    m = _LABEL.match(caption)
    if not m:
        return "", caption
    return norm(m.group(1)), caption[m.end():].strip()


def parse_html(data: bytes | str, *, identifier: str = "", url: str = "", source: str = "html"):
    """Parse an article page into a :class:`Document` (image URLs as written,
    relative ones left for the fetcher to resolve)."""
    import lxml.html

    parser = lxml.html.HTMLParser(no_network=True, remove_comments=True, remove_pis=True)
    try:
        root = lxml.html.fromstring(data if isinstance(data, bytes) else data.encode("utf-8"),
                                    parser=parser)
    except Exception as err:  # lxml raises ParserError / XMLSyntaxError on empty input
        raise DocumentError(f"{url or identifier}: not readable HTML ({err})") from None
    metas: dict[str, str] = {}
    for m in root.iter("meta"):
        name = (m.get("name") or m.get("property") or "").strip().lower()
        if name and m.get("content") and name not in metas:
            metas[name] = norm(m.get("content"))
    doi = ""
    for key in ("citation_doi", "dc.identifier", "prism.doi", "doi"):
        doi = normalize_doi(metas.get(key, ""))
        if doi:
            break
    title = metas.get("citation_title") or metas.get("og:title") or norm(root.findtext(".//title"))
    journal = metas.get("citation_journal_title") or metas.get("prism.publicationname", "")
    license_ = None
    for link in root.iter("link"):
        if "license" in (link.get("rel") or "").lower().split():
            license_ = link.get("href")
            break
    license_ = license_ or metas.get("citation_license") or metas.get("dc.rights") or None
    figures: list[FigureRef] = []
    for n, fig in enumerate(root.iter("figure"), start=1):
        imgs = [i.get("src") or i.get("data-src") for i in fig.iter("img")]
        links = [a.get("href") for a in fig.iter("a")
                 if (a.get("href") or "").lower().split("?")[0].endswith(_IMG_EXT)]
        urls = tuple(dict.fromkeys(u for u in links + imgs if u))
        cap_el = next(fig.iter("figcaption"), None)
        caption = norm(cap_el.text_content()) if cap_el is not None else ""
        label, rest = split_label(caption)
        fid = fig.get("id") or label or f"figure{n}"
        figures.append(FigureRef(label=label or fid, caption=rest if label else caption,
                                 figure_id=fid, image_urls=urls,
                                 image_name=urls[0] if urls else ""))
    return Document(doi=doi, title=title, journal=journal, license=license_,
                    figures=tuple(figures), source=source, identifier=identifier or doi, url=url)
