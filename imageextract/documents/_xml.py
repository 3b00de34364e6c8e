"""Safe XML parsing shared by the Elsevier and JATS parsers.

The parser resolves no entities, loads no DTD and never touches the network,
so an article file cannot read local files or reach other hosts (XXE).
"""

from __future__ import annotations

import re

from lxml import etree

from ..errors import FetchError

XLINK = "http://www.w3.org/1999/xlink"

_WS = re.compile(r"\s+")


class DocumentError(FetchError):
    """An article could not be parsed (not well-formed, not the expected format)."""


def parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)


def parse_xml(data: bytes | str, name: str = "document") -> etree._Element:
    """Root element of ``data``, parsed without entity resolution or network.

    >>> parse_xml(b"<a><b>x</b></a>").tag
    'a'
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        root = etree.fromstring(data, parser())
    except etree.XMLSyntaxError as err:
        raise DocumentError(f"{name}: not well-formed XML ({err})") from None
    if root is None:
        raise DocumentError(f"{name}: empty XML document")
    return root


def local(el) -> str:
    """Local name of an element (namespace dropped); "" for comments/entities."""
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def iter_local(root, name: str):
    """Every descendant element whose local name is ``name``, in document order."""
    for el in root.iter():
        if local(el) == name:
            yield el


def first_local(root, *path: str):
    """The first element reached by local names ``path`` (each a descendant step)."""
    node = root
    for name in path:
        node = next(iter_local(node, name), None)
        if node is None:
            return None
    return node


def children_local(el, name: str):
    return [c for c in el if local(c) == name]


def norm(text: str | None) -> str:
    """Collapse whitespace.

    >>> norm("  a\\n b  ")
    'a b'
    """
    return _WS.sub(" ", text or "").strip()


def _collect(el, parts: list[str]) -> None:
    if isinstance(el.tag, str) and el.text:  # entity references keep only their tail
        parts.append(el.text)
    for child in el:
        _collect(child, parts)
        if child.tail:
            parts.append(child.tail)


def text_of(el, *, blocks: tuple[str, ...] = ()) -> str:
    """All text inside ``el`` in document order; unresolved entity references
    are dropped.  Children whose local name is in ``blocks`` are separated by
    a space (paragraphs of a caption).

    >>> text_of(parse_xml(b"<c><p>(<i>a</i>) TEM</p><p>b</p></c>"), blocks=("p",))
    '(a) TEM b'
    """
    if el is None:
        return ""
    if blocks:
        pieces = [text_of(c) for c in el if local(c) in blocks]
        if pieces:
            return norm(" ".join(pieces))
    parts: list[str] = []
    _collect(el, parts)
    return norm("".join(parts))


def xlink_href(el) -> str:
    return (el.get(f"{{{XLINK}}}href") or el.get("href") or "").strip()
