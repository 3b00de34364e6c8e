"""Elsevier Article Retrieval API full text (``full-text-retrieval-response``).

What is read (``view=FULL``, ``Accept: text/xml``):

* ``coredata/prism:doi``, ``dc:title``, ``prism:publicationName``,
  ``openaccess``, ``openaccessUserLicense``, ``pii``, ``eid``;
* figures: every ``ce:figure`` in ``originalText`` — ``ce:label``,
  ``ce:caption`` (its ``ce:simple-para``), and ``ce:link/@locator`` (``gr1``);
* images: ``objects/object[@ref = locator]`` — one URL per size, ranked
  ``IMAGE-HIGH-RES`` > ``IMAGE-DOWNSAMPLED`` > ``IMAGE-THUMBNAIL``.
"""

from __future__ import annotations

from ._xml import DocumentError, children_local, first_local, iter_local, local, norm, parse_xml, text_of
from .model import Document, FigureRef, normalize_doi

_TYPE_RANK = {"IMAGE-HIGH-RES": 3, "IMAGE-DOWNSAMPLED": 2, "IMAGE-THUMBNAIL": 1}
_CATEGORY_RANK = {"high": 3, "standard": 2, "thumbnail": 1}


def is_elsevier_xml(root) -> bool:
    return local(root) == "full-text-retrieval-response" or "elsevier.com/xml" in (
        root.tag if isinstance(root.tag, str) else "")


def object_urls(root) -> dict[str, list[str]]:
    """``{ref: [url, ...]}`` from the ``<objects>`` list, best image first."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    objects = first_local(root, "objects")
    if objects is None:
        return {}
    for obj in children_local(objects, "object"):
        ref = (obj.get("ref") or "").strip()
        url = norm(obj.text)
        mimetype = (obj.get("mimetype") or "").lower()
        if not ref or not url or (mimetype and not mimetype.startswith("image/")):
            continue
        rank = _TYPE_RANK.get((obj.get("type") or "").upper(),
                              _CATEGORY_RANK.get((obj.get("category") or "").lower(), 0))
        ranked.setdefault(ref, []).append((rank, url))
    return {ref: [u for _, u in sorted(v, key=lambda t: -t[0])] for ref, v in ranked.items()}


def parse_elsevier(data: bytes | str, *, identifier: str = "", url: str = "",
                   source: str = "elsevier"):
    """Parse an Article Retrieval API response into a :class:`Document`.

    Parameters
    ----------
    data : bytes or str
        The XML body.
    identifier, url, source : str
        Provenance copied into the Document.

    Raises
    ------
    DocumentError
        Not well-formed, or not an Elsevier full-text response.
    """
    root = parse_xml(data, url or identifier or "Elsevier XML")
    if not is_elsevier_xml(root):
        raise DocumentError(f"{url or identifier}: not an Elsevier full-text-retrieval-response "
                            f"(root element {local(root)!r})")
    core = first_local(root, "coredata")

    def core_text(name: str) -> str:
        if core is None:
            return ""
        el = first_local(core, name)
        return norm(el.text) if el is not None else ""

    doi = normalize_doi(core_text("doi") or core_text("identifier"))
    license_ = core_text("openaccessUserLicense") or None
    oa = core_text("openaccess") in ("1", "true") or core_text("openaccessArticle") == "true"
    objects = object_urls(root)
    original = first_local(root, "originalText")
    figures: list[FigureRef] = []
    seen: set[str] = set()
    for fig in iter_local(original if original is not None else root, "figure"):
        label_el = next((c for c in fig if local(c) == "label"), None)
        caption_el = next((c for c in fig if local(c) == "caption"), None)
        locators = [link.get("locator", "").strip() for link in iter_local(fig, "link")]
        locator = next((x for x in locators if x), "")
        label = norm(text_of(label_el)) or locator or fig.get("id", "")
        key = locator or fig.get("id", "") or label
        if not key or key in seen:
            continue
        seen.add(key)
        caption = text_of(caption_el, blocks=("simple-para", "para")) if caption_el is not None else ""
        figures.append(FigureRef(label=label, caption=caption, figure_id=key,
                                 image_urls=tuple(objects.get(locator, ())), image_name=locator))
    return Document(
        doi=doi, title=core_text("title"), journal=core_text("publicationName"),
        license=license_, figures=tuple(figures), source=source, identifier=identifier or doi,
        url=url, full_text=original is not None,
        extra={"pii": core_text("pii"), "eid": core_text("eid"), "open_access": oa})
