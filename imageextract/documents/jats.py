"""JATS (NISO Z39.96) articles: Europe PMC ``fullTextXML``, the Springer Nature
Open Access API (``/openaccess/jats``, articles wrapped in ``<response><records>``)
and local ``.nxml``/``.xml`` files.

What is read: ``journal-meta//journal-title``; ``article-meta/article-id``
(``@pub-id-type`` ``doi``, ``pmcid``/``pmc``); ``title-group/article-title``;
``permissions/license`` (``@xlink:href``, ``ali:license_ref``, ``@license-type``,
or the start of ``license-p``); every ``fig`` — ``label``, ``caption``
(``title`` + ``p``), ``graphic/@xlink:href`` (the ``specific-use="web"``
rendition when there are several).
"""

from __future__ import annotations

from ._xml import DocumentError, first_local, iter_local, local, norm, parse_xml, text_of, xlink_href
from .model import Document, FigureRef, normalize_doi


def find_article(root):
    """The ``<article>`` element of a JATS file or of an API envelope."""
    if local(root) == "article":
        return root
    return next(iter_local(root, "article"), None)


def jats_license(article) -> str | None:
    perms = first_local(article, "front", "permissions")
    if perms is None:
        perms = first_local(article, "permissions")
    if perms is None:
        return None
    for lic in iter_local(perms, "license"):
        href = xlink_href(lic)
        if href:
            return href
        ref = next(iter_local(lic, "license_ref"), None)
        if ref is not None and norm(ref.text):
            return norm(ref.text)
        if lic.get("license-type"):
            return lic.get("license-type")
        text = text_of(lic)
        if text:
            return text[:200]
    ref = next(iter_local(perms, "license_ref"), None)
    return norm(ref.text) if ref is not None and norm(ref.text) else None


def _graphic_href(fig) -> str:
    graphics = [g for g in iter_local(fig, "graphic")]
    if not graphics:
        return ""
    web = [g for g in graphics if (g.get("specific-use") or "").lower() == "web"]
    for g in web + graphics:
        href = xlink_href(g)
        if href and not href.lower().endswith((".eps", ".ps", ".pdf")):
            return href
    return xlink_href(graphics[0])


def parse_jats(data, *, identifier: str = "", url: str = "", source: str = "jats"):
    """Parse a JATS article (bytes, str or an lxml element) into a :class:`Document`.

    Image references are kept as ``FigureRef.image_name`` (the ``graphic``
    href); the fetcher turns them into URLs.

    Raises
    ------
    DocumentError
        Not well-formed, or no ``<article>`` inside.
    """
    root = data if hasattr(data, "tag") else parse_xml(data, url or identifier or "JATS XML")
    article = find_article(root)
    if article is None:
        raise DocumentError(f"{url or identifier}: no JATS <article> element "
                            f"(root element {local(root)!r})")
    meta = first_local(article, "front", "article-meta")
    if meta is None:
        meta = first_local(article, "article-meta")
    ids: dict[str, str] = {}
    if meta is not None:
        for aid in (c for c in meta if local(c) == "article-id"):
            ids.setdefault((aid.get("pub-id-type") or "").lower(), norm(aid.text))
    doi = normalize_doi(ids.get("doi", ""))
    pmcid = ids.get("pmcid") or ids.get("pmc") or ""
    if pmcid and not pmcid.upper().startswith("PMC"):
        pmcid = f"PMC{pmcid}"
    title_el = first_local(meta, "title-group", "article-title") if meta is not None else None
    journal_el = first_local(article, "journal-meta", "journal-title")
    figures: list[FigureRef] = []
    seen: set[str] = set()
    for n, fig in enumerate(iter_local(article, "fig"), start=1):
        label = text_of(next((c for c in fig if local(c) == "label"), None))
        caption_el = next((c for c in fig if local(c) == "caption"), None)
        caption = text_of(caption_el, blocks=("title", "p")) if caption_el is not None else ""
        fid = fig.get("id") or label or f"fig{n}"
        if fid in seen:
            continue
        seen.add(fid)
        figures.append(FigureRef(label=label or fid, caption=caption, figure_id=fid,
                                 image_name=_graphic_href(fig)))
    body = first_local(article, "body")
    return Document(
        doi=doi, title=text_of(title_el), journal=text_of(journal_el), license=jats_license(article),
        figures=tuple(figures), source=source, identifier=identifier or doi or pmcid, url=url,
        full_text=body is not None, extra={"pmcid": pmcid.upper() if pmcid else ""})
