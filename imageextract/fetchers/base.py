"""The Fetcher protocol, the fetcher registry and what every fetcher shares.

A fetcher turns an identifier (DOI, PMCID, path) into figures::

    class Fetcher(Protocol):
        name: str
        def can_handle(self, identifier: str) -> bool: ...
        def fetch(self, identifier: str) -> Iterator[Figure]: ...

Built-in fetchers derive from :class:`BaseFetcher`, which adds the steps the
literature pipeline uses one at a time (so that figures whose caption says
they are not micrographs are never downloaded): :meth:`~BaseFetcher.search`,
:meth:`~BaseFetcher.fetch_document` and :meth:`~BaseFetcher.figure_image`.

Third parties add a fetcher through the ``imageextract.fetchers`` entry-point
group; built-ins are registered here by import path.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from ..documents.model import Document, FigureRef, normalize_doi
from ..errors import FetchError
from ..registry import Registry

logger = logging.getLogger(__name__)

FETCHERS = Registry("imageextract.fetchers", "fetcher")
# Built-ins by import path: a fetcher's module is imported only when it is used.
for _name, _target in {
    "elsevier": "imageextract.fetchers.elsevier:ElsevierFetcher",
    "europepmc": "imageextract.fetchers.europepmc:EuropePMCFetcher",
    "springer": "imageextract.fetchers.springer:SpringerFetcher",
    "crossref": "imageextract.fetchers.crossref:CrossrefFetcher",
    "local": "imageextract.fetchers.local:LocalFetcher",
}.items():
    FETCHERS.register(_name, _target)

_PMCID = re.compile(r"^PMC\d+$", re.IGNORECASE)


@runtime_checkable
class Fetcher(Protocol):
    """What the pipeline needs from a source."""

    name: str

    def can_handle(self, identifier: str) -> bool: ...

    def fetch(self, identifier: str) -> Iterator[Any]: ...


@dataclass(frozen=True)
class _FallbackFigure:
    """Used only while :class:`imageextract.types.Figure` does not exist yet."""

    doi: str
    figure_id: str
    caption: str
    image: np.ndarray
    source_url: str = ""
    license: str | None = None
    label: str = ""


def figure_class():
    """The Figure dataclass flowing between stages (``imageextract.types.Figure``)."""
    try:
        from ..types import Figure  # type: ignore[attr-defined]
    except ImportError:
        return _FallbackFigure
    return Figure


def make_figure(**values: Any):
    """Build a Figure from the values its class accepts (others are dropped)."""
    cls = figure_class()
    try:
        names = {f.name for f in fields(cls)}
    except TypeError:
        names = set(values)
    return cls(**{k: v for k, v in values.items() if k in names})


def is_pmcid(identifier: str) -> bool:
    """True for a PubMed Central id ("PMC1234567").

    >>> is_pmcid("PMC1234567"), is_pmcid("10.1/x")
    (True, False)
    """
    return bool(_PMCID.match(identifier.strip()))


def decode_image(data: bytes, name: str = "image", *, max_pixels: int | None = None) -> np.ndarray:
    """Decode image bytes (PNG, JPEG, GIF, TIFF, BMP, WebP) into an array.

    Returns
    -------
    (M, N) or (M, N, 3) ndarray
        Greyscale when all channels are equal; alpha is dropped.

    Raises
    ------
    FetchError
        Not an image, truncated, or more pixels than allowed
        (``$IMAGEEXTRACT_MAX_PIXELS``).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit = max_pixels or int(os.environ.get("IMAGEEXTRACT_MAX_PIXELS") or 200_000_000)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > limit:
                raise FetchError(f"{name}: {w}x{h} pixels exceeds the limit of {limit} "
                                 "(set IMAGEEXTRACT_MAX_PIXELS to raise it)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FetchError(f"{name}: not a readable image ({err})") from None
    if arr.ndim == 3:
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def default_cache_dir() -> Path | None:
    """``$IMAGEEXTRACT_CACHE_DIR`` (empty or ``none``: no cache), else
    ``~/.cache/imageextract/http``."""
    env = os.environ.get("IMAGEEXTRACT_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "none", "off", "0") else Path(env)
    return Path.home() / ".cache" / "imageextract" / "http"


class BaseFetcher:
    """Shared behaviour of the built-in fetchers.

    Parameters
    ----------
    cache_dir : path-like, optional
        HTTP response cache (default :func:`default_cache_dir`); ``False``
        turns caching off.
    http_options : dict, optional
        Passed to :class:`~imageextract.fetchers._http.HttpClient`
        (``max_retries``, ``backoff_s``, ``timeout``, ``rate_per_s``, ``sleep``).
    """

    name = "base"

    def __init__(self, *, cache_dir: str | Path | None | bool = None,
                 http_options: dict[str, Any] | None = None) -> None:
        if cache_dir is False:
            self.cache_dir: Path | None = None
        elif cache_dir is None or cache_dir is True:
            self.cache_dir = default_cache_dir()
        else:
            self.cache_dir = Path(cache_dir)
        self.http_options = dict(http_options or {})
        self._client = None
        #: where the last image returned by :meth:`figure_image` came from (provenance)
        self.last_image_url = ""

    # -- to implement ----------------------------------------------------------
    def can_handle(self, identifier: str) -> bool:
        raise NotImplementedError

    def search(self, query: str, *, max_results: int = 25) -> list[str]:
        """Identifiers (DOIs where possible) of articles matching ``query``."""
        raise FetchError(f"source {self.name!r} cannot search; give DOIs instead")

    def fetch_document(self, identifier: str) -> Document:
        raise NotImplementedError

    def figure_image(self, document: Document, figure: FigureRef) -> bytes:
        """Bytes of ``figure``'s image (best available resolution); sets
        :attr:`last_image_url`."""
        if figure.image_bytes is not None:
            self.last_image_url = f"{document.url}#{figure.image_name or figure.key}"
            return figure.image_bytes
        errors = []
        for url in figure.image_urls:
            try:
                data = self.http.get(url).content
                self.last_image_url = url
                return data
            except FetchError as err:
                errors.append(str(err))
                if getattr(err, "status", 0) not in (404, 410, 0):
                    break
        if not errors:
            raise FetchError(f"{document.doi or document.identifier} {figure.label}: no image "
                             "reference in the article")
        raise FetchError(errors[-1])

    # -- shared ----------------------------------------------------------------
    @property
    def http(self):
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self):
        raise NotImplementedError

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fetch(self, identifier: str) -> Iterator[Any]:
        """Every figure of the article, decoded (the :class:`Fetcher` protocol).

        Figures whose image cannot be fetched are logged and skipped.
        """
        doc = self.fetch_document(identifier)
        for fig in doc.figures:
            try:
                data = self.figure_image(doc, fig)
                image = decode_image(data, f"{doc.doi or identifier} {fig.label}")
            except FetchError as err:
                logger.warning("%s", err)
                continue
            yield make_figure(doi=doc.doi, figure_id=fig.label, caption=fig.caption, image=image,
                              source_url=fig.image_urls[0] if fig.image_urls else fig.image_name,
                              license=doc.license, label=fig.label)


def looks_like_doi(identifier: str) -> bool:
    """True for a bare DOI (not a URL or a path).

    >>> looks_like_doi("10.1016/j.x.2020.1"), looks_like_doi("PMC1")
    (True, False)
    """
    return bool(normalize_doi(identifier)) and not identifier.strip().lower().startswith(("http", "/"))


def doi_prefix(identifier: str) -> str:
    doi = normalize_doi(identifier)
    return doi.split("/", 1)[0] if doi else ""


def url_host(identifier: str) -> str:
    from urllib.parse import urlsplit

    if not identifier.lower().startswith(("http://", "https://")):
        return ""
    return (urlsplit(identifier).hostname or "").lower()


def env_secret(name: str) -> str:
    """A secret from the environment (stripped; "" when unset)."""
    return os.environ.get(name, "").strip()
