"""Literature mining: fetch → parse → EM figures → panels → calibration →
segmentation → analysis → store, with provenance on every row.

:func:`mine` mirrors :func:`imageextract.pipeline.analyze`: one writer (this
process) fills ``out_dir/results.sqlite``; finished items are skipped on a
re-run; one bad article, figure or panel becomes a ``failures`` row and the
run goes on; the tables and the report are rewritten at the end.

What is stored where
--------------------
* ``documents`` — one row per article once all its figures were handled:
  DOI, title, journal, licence, source; ``path`` holds the identifier it was
  fetched by (DOI, PMCID or file).
* ``figures`` — one row per micrograph figure once all its panels are done:
  label, caption, image URL and the ``material`` named in the caption.
* ``micrographs`` / ``particles`` — via
  :func:`imageextract.pipeline.process_micrograph`, with ``source``, ``doi``,
  ``figure`` (label), ``panel`` and ``path`` (the image URL or file).
* views ``micrographs_literature`` and ``particles_literature`` join them
  with the figure's material and the article's licence, title and journal:
  ``SELECT doi, material, d50 FROM micrographs_literature WHERE material = 'Au'``.

Figures whose caption says they are not micrographs (XRD, spectra,
histograms, schemes) are skipped before their image is downloaded and
counted, not failed; so are panels that the panel splitter classes as
charts or whose part of the caption names no EM technique.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .captions import CaptionInfo, classify_caption, classify_panel
from .documents.model import Document, FigureRef, normalize_doi
from .errors import ImageExtractError
from .pipeline import settings_fingerprint
from .store import Store

logger = logging.getLogger(__name__)

#: Articles taken from a search when ``max_articles`` is not given.
DEFAULT_MAX_SEARCH = 25
_MODALITIES = ("TEM", "SEM", "STEM")

_VIEWS = """
CREATE VIEW IF NOT EXISTS micrographs_literature AS
SELECT m.micrograph_id, m.document_id, m.source, m.doi, d.title, d.journal, m.license,
       m.figure, m.panel, m.material, f.caption, m.path AS image_url, m.modality,
       m.nm_per_px, m.calibration_source, m.scalebar_text, m.n_particles, m.n_measured,
       m.size_unit, m.d10, m.d50, m.d90, m.mean_ecd, m.lognormal_gm, m.lognormal_gsd,
       m.mean_aspect_ratio, m.backend, m.weights
FROM micrographs m
LEFT JOIN figures f ON f.document_id = m.document_id AND f.label = m.figure
LEFT JOIN documents d ON d.document_id = m.document_id;
CREATE VIEW IF NOT EXISTS particles_literature AS
SELECT p.*, d.title, d.journal
FROM particles p
JOIN micrographs m ON m.micrograph_id = p.micrograph_id
LEFT JOIN documents d ON d.document_id = m.document_id;
"""


@dataclass
class MineResult:
    """What :func:`mine` did.

    ``n_done``/``n_skipped``/``n_failed`` count micrographs (panels) like
    :class:`~imageextract.pipeline.AnalyzeResult`; articles that could not be
    fetched and figures whose image could not be read count as failures too.
    """

    out_dir: Path
    run_id: int
    n_articles: int = 0
    n_figures: int = 0
    n_non_micrograph: int = 0  #: figures skipped because they are not micrographs
    n_panels_skipped: int = 0  #: chart/other panels inside micrograph figures
    n_done: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every item succeeded, 1 when some failed."""
        return 1 if self.n_failed else 0


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:n] or "x"


def micrograph_id_for(document_id: str, figure_key: str, panel: str) -> str:
    """Readable, stable id of one panel: ``<doc>-<figure>-<panel>-<hash>``.

    >>> micrograph_id_for("doi:10.1016/j.x.2024.1", "gr1", "a")
    '10.1016_j.x.2024.1-gr1-a-4fc922e1'
    """
    h = hashlib.sha256(f"{document_id}\0{figure_key}\0{panel}".encode()).hexdigest()[:8]
    doc = document_id.split(":", 1)[-1]
    return f"{_slug(doc, 60)}-{_slug(figure_key, 24)}-{_slug(panel, 8)}-{h}"


def read_identifiers(doi_file: str | Path) -> list[str]:
    """DOIs (or PMCIDs, paths) from a text file: one per line, ``#`` comments.

    URLs such as ``https://doi.org/10.…`` are reduced to the DOI.
    """
    p = Path(doi_file)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ImageExtractError(f"--doi-file {p}: cannot read ({err})") from None
    out = []
    for line in lines:
        item = line.split("#", 1)[0].strip()
        if item:
            out.append(item)
    if not out:
        raise ImageExtractError(f"--doi-file {p} holds no identifiers")
    return out


def _clean_identifier(item: str) -> str:
    doi = normalize_doi(item)
    if doi and (item.lower().startswith(("10.", "doi:", "https://doi.org", "http://doi.org",
                                         "https://dx.doi.org"))):
        return doi
    return item.strip()


@dataclass(frozen=True)
class _WholePanel:
    """The whole figure as one panel (used when no panel splitter is installed)."""

    image: np.ndarray
    bbox: tuple[int, int, int, int]
    label: str = ""
    kind: str = "micrograph"
    index: int = 0
    doi: str = ""
    figure_id: str = ""


def _split(figure: Any, image: np.ndarray) -> list[Any]:
    h, w = image.shape[:2]
    whole = [_WholePanel(image=image, bbox=(0, 0, int(w), int(h)),
                         doi=getattr(figure, "doi", ""), figure_id=getattr(figure, "figure_id", ""))]
    try:
        from .figures import split_panels  # type: ignore[attr-defined]
    except ImportError:
        return whole
    try:
        panels = list(split_panels(figure))
    except Exception as err:  # a splitter bug must not lose the figure
        logger.warning("panel splitter failed on %s %s (%s: %s); using the whole figure",
                       getattr(figure, "doi", ""), getattr(figure, "figure_id", ""),
                       type(err).__name__, err)
        return whole
    return panels or whole


def _calibrate(panels: list[Any], nm_per_px: float | None) -> list[Any]:
    from .calibration import calibrate
    from .types import Calibration

    if nm_per_px is not None:
        return [Calibration(nm_per_px=nm_per_px, source="manual") for _ in panels]
    try:
        from .figures import calibrate_panels  # type: ignore[attr-defined]
    except ImportError:
        calibrate_panels = None
    if calibrate_panels is not None:
        try:
            cals = list(calibrate_panels(panels))
            if len(cals) == len(panels):
                return cals
        except Exception as err:
            logger.warning("calibrate_panels failed (%s: %s); reading each panel alone",
                           type(err).__name__, err)
    return [calibrate(np.asarray(p.image)) for p in panels]


class _ProtocolAdapter:
    """Lets :func:`mine` use a fetcher that implements only the
    :class:`~imageextract.fetchers.base.Fetcher` protocol (``fetch`` yields
    decoded Figures): each article is fetched whole, figures are re-encoded."""

    def __init__(self, fetcher) -> None:
        self.inner, self.name = fetcher, getattr(fetcher, "name", type(fetcher).__name__)
        self.last_image_url = ""

    def search(self, query: str, *, max_results: int = 25) -> list[str]:
        if not hasattr(self.inner, "search"):
            raise ImageExtractError(f"source {self.name!r} cannot search; give DOIs instead")
        return list(self.inner.search(query, max_results=max_results))

    def fetch_document(self, identifier: str) -> Document:
        import io

        from PIL import Image

        figs, doi, lic = [], "", None
        for f in self.inner.fetch(identifier):
            buf = io.BytesIO()
            Image.fromarray(np.asarray(f.image)).save(buf, format="PNG")
            label = getattr(f, "label", "") or getattr(f, "figure_id", "") or f"fig{len(figs) + 1}"
            figs.append(FigureRef(label=label, caption=getattr(f, "caption", ""), figure_id=label,
                                  image_urls=tuple(u for u in [getattr(f, "source_url", "")] if u),
                                  image_bytes=buf.getvalue()))
            doi = doi or getattr(f, "doi", "")
            lic = lic or getattr(f, "license", None)
        return Document(doi=normalize_doi(doi), license=lic, figures=tuple(figs), source=self.name,
                        identifier=identifier, url=identifier)

    def figure_image(self, document: Document, figure: FigureRef) -> bytes:
        self.last_image_url = figure.image_urls[0] if figure.image_urls else identifier_url(document)
        return figure.image_bytes or b""

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close:
            close()


def identifier_url(document: Document) -> str:
    return document.url or document.identifier


class _Run:
    """State of one mining run (the store is written only from here)."""

    def __init__(self, store: Store, result: MineResult, fetcher, *, out: Path, backend: str,
                 backend_options: dict, nm_per_px: float | None, overwrite: bool) -> None:
        self.store, self.result, self.fetcher = store, result, fetcher
        self.out, self.backend, self.backend_options = out, backend, backend_options
        self.nm_per_px, self.overwrite = nm_per_px, overwrite
        self.done = set() if overwrite else store.done_ids()
        self.figures_done = set() if overwrite else {
            r[0] for r in store.conn.execute("SELECT figure_id FROM figures")}
        self.t = {"fetch": 0.0, "images": 0.0, "panels": 0.0, "segment+measure": 0.0}

    # -- failures -----------------------------------------------------------
    def fail(self, item: str, stage: str, reason: str) -> None:
        self.store.record_failure(item, stage=stage, reason=reason, run_id=self.result.run_id)
        self.result.n_failed += 1
        self.result.failures.append((item, reason))
        logger.warning("%s", reason if reason.startswith(item) else f"{item}: {reason}")

    def document_done(self, ident: str) -> str | None:
        """document_id when ``ident`` was fully handled by an earlier run."""
        if self.overwrite:
            return None
        con = self.store.conn
        row = con.execute("SELECT document_id FROM documents WHERE path=? OR document_id=?",
                          (ident, f"doi:{normalize_doi(ident)}" if normalize_doi(ident) else "")).fetchone()
        if row is None:
            return None
        doc_id = row[0]
        bad = con.execute("SELECT 1 FROM failures WHERE item=? OR item LIKE ? LIMIT 1",
                          (ident, doc_id.replace("%", "\\%") + "#%")).fetchone()
        return None if bad else doc_id

    # -- one article ---------------------------------------------------------
    def article(self, ident: str) -> None:
        r = self.result
        r.n_articles += 1
        doc_id = self.document_done(ident)
        if doc_id is not None:
            n = self.store.conn.execute("SELECT COUNT(*) FROM micrographs WHERE document_id=?",
                                        (doc_id,)).fetchone()[0]
            r.n_skipped += n
            logger.info("%s: already done (%d micrographs); skipped", ident, n)
            return
        t0 = time.perf_counter()
        try:
            doc = self.fetcher.fetch_document(ident)
        except ImageExtractError as err:
            self.fail(ident, "fetch", str(err))
            return
        except Exception as err:  # a parser bug must not stop the batch
            logger.debug("fetch of %s failed", ident, exc_info=True)
            self.fail(ident, "fetch", f"{type(err).__name__}: {err}")
            return
        finally:
            self.t["fetch"] += time.perf_counter() - t0
        if not doc.figures and not doc.full_text:
            self.fail(ident, "fetch", f"{ident}: no full text available from {self.fetcher.name} "
                                      "(not open access or not entitled)")
            return
        self.store.clear_failure(ident)
        document_id = doc.document_id
        all_ok = True
        for fig in doc.figures:
            all_ok &= self.figure(doc, document_id, fig)
        with self.store.conn:
            self.store.add_document({
                "document_id": document_id, "source": doc.source or self.fetcher.name,
                "doi": doc.doi, "path": ident, "title": doc.title, "journal": doc.journal,
                "license": doc.license, "run_id": r.run_id})
        if not all_ok:
            logger.info("%s: some figures failed; a re-run retries them", ident)

    # -- one figure ----------------------------------------------------------
    def figure(self, doc: Document, document_id: str, fig: FigureRef) -> bool:
        from .fetchers.base import decode_image, make_figure

        r = self.result
        r.n_figures += 1
        fig_item = f"{document_id}#{fig.key}"
        info = classify_caption(fig.caption)
        name = f"{doc.doi or doc.identifier} {fig.label}"
        if info.is_micrograph is False:
            r.n_non_micrograph += 1
            logger.info("%s: not a micrograph (%s); skipped", name,
                        ", ".join(info.other) or "no EM technique in the caption")
            return True
        if fig_item in self.figures_done:
            n = self.store.conn.execute(
                "SELECT COUNT(*) FROM micrographs WHERE document_id=? AND figure=?",
                (document_id, fig.label)).fetchone()[0]
            r.n_skipped += n
            return True
        t0 = time.perf_counter()
        self.fetcher.last_image_url = ""
        try:
            data = self.fetcher.figure_image(doc, fig)
            image = decode_image(data, name)
        except ImageExtractError as err:
            self.fail(fig_item, "fetch-image", str(err))
            return False
        except Exception as err:
            self.fail(fig_item, "fetch-image", f"{type(err).__name__}: {err}")
            return False
        finally:
            self.t["images"] += time.perf_counter() - t0
        url = getattr(self.fetcher, "last_image_url", "") or (
            fig.image_urls[0] if fig.image_urls else f"{doc.url}#{fig.image_name or fig.key}")
        figure = make_figure(doi=doc.doi, figure_id=fig.label, caption=fig.caption, image=image,
                             source_url=url, license=doc.license, label=fig.label)
        t0 = time.perf_counter()
        panels = _split(figure, image)
        chosen: list[tuple[int, Any, CaptionInfo]] = []
        for i, p in enumerate(panels):
            kind = getattr(p, "kind", "micrograph")
            pinfo = classify_panel(fig.caption, getattr(p, "label", "") or "")
            if kind != "micrograph" or pinfo.is_micrograph is False:
                r.n_panels_skipped += 1
                logger.info("%s panel %s: %s; skipped", name, getattr(p, "label", "") or i,
                            f"kind {kind}" if kind != "micrograph" else "not a micrograph in the caption")
                continue
            chosen.append((i, p, pinfo))
        cals = _calibrate([p for _, p, _ in chosen], self.nm_per_px) if chosen else []
        self.t["panels"] += time.perf_counter() - t0
        ok = True
        for (i, p, pinfo), cal in zip(chosen, cals):
            ok &= self.panel(doc, document_id, fig, fig_item, url, i, p, pinfo, cal)
        if ok:
            with self.store.conn:
                self.store.add_figure({
                    "figure_id": fig_item, "document_id": document_id, "label": fig.label,
                    "caption": fig.caption, "image_url": url, "material": info.material,
                    "run_id": r.run_id})
            self.store.clear_failure(fig_item)
            self.figures_done.add(fig_item)
        return ok

    @staticmethod
    def _material(fig: FigureRef, pinfo: CaptionInfo) -> str:
        """The material of one panel: named in its part of the caption, else
        the figure's main material."""
        return pinfo.material or classify_caption(fig.caption).material or ""

    def panel(self, doc, document_id, fig, fig_item, url, index, p, pinfo, cal) -> bool:
        from .pipeline import process_micrograph
        from .types import Micrograph

        r = self.result
        label = getattr(p, "label", "") or ""
        panel_id = label or str(index)
        mid = micrograph_id_for(document_id, fig.key, panel_id)
        item = f"{fig_item}/{panel_id}"
        if mid in self.done:
            r.n_skipped += 1
            return True
        bbox = tuple(int(v) for v in getattr(p, "bbox", (0, 0, *p.image.shape[1::-1])))
        try:
            mic = Micrograph(image=np.asarray(p.image), micrograph_id=mid, calibration=cal,
                             modality=pinfo.modality if pinfo.modality in _MODALITIES else "unknown",
                             source=doc.source or self.fetcher.name, path=url, doi=doc.doi,
                             figure=fig.label, panel=panel_id, bbox=bbox,
                             license=doc.license or "", material=self._material(fig, pinfo))
        except (ValueError, ImageExtractError) as err:
            self.fail(item, "panel", str(err))
            return False
        t0 = time.perf_counter()
        res = process_micrograph(mic, out_dir=str(self.out), backend=self.backend,
                                 backend_options=self.backend_options, run_id=r.run_id)
        self.t["segment+measure"] += time.perf_counter() - t0
        if not res["ok"]:
            self.fail(item, res["stage"], res["reason"])
            return False
        record = dict(res["record"], document_id=document_id)
        self.store.write_micrograph(record, res["particles"], failure_key=item)
        self.done.add(mid)
        r.n_done += 1
        return True


# --------------------------------------------------------------------------- #
# public entry points
# --------------------------------------------------------------------------- #
def mine(
    *,
    query: str | None = None,
    dois: Iterable[str] | None = None,
    doi_file: str | Path | None = None,
    source: str,
    out_dir: str | Path,
    max_articles: int | None = None,
    backend: str = "classical",
    backend_options: dict[str, Any] | None = None,
    nm_per_px: float | None = None,
    progress: bool = True,
    command: str = "",
    overwrite: bool = False,
    cache_dir: str | Path | None | bool = None,
    fetcher_options: dict[str, Any] | None = None,
    report: bool = True,
) -> MineResult:
    """Mine articles for particle statistics into ``out_dir``.

    Parameters
    ----------
    query : str, optional
        Search the source (its own query syntax); at most ``max_articles``
        (default 25) results are taken.
    dois : iterable of str, optional
        DOIs (PMCIDs for ``europepmc``, files or folders for ``local``).
    doi_file : path-like, optional
        A file of identifiers, one per line (``#`` starts a comment).
    source : str
        Fetcher name (``imageextract.fetchers.available_fetchers()``).
    out_dir : path-like
        Results folder, as for ``analyze``.
    max_articles : int, optional
        Stop after this many articles.
    backend, backend_options : str, dict
        Segmentation backend and its constructor options.
    nm_per_px : float, optional
        Pixel size for every panel (``manual``); otherwise scale bars are read.
    cache_dir : path-like, optional
        HTTP cache (default ``out_dir/http-cache``; ``False`` for none).
        Secrets are never written there.
    fetcher_options : dict, optional
        Extra fetcher constructor options (e.g. ``http_options``).

    Exactly one of ``query``, ``dois`` and ``doi_file`` must be given.

    Returns
    -------
    MineResult

    Raises
    ------
    ImageExtractError
        Bad settings: unknown source or backend, not exactly one of
        query/dois/doi_file, an unreadable DOI file, a failed search, an
        ``out_dir`` holding results made with other settings.
    """
    from .fetchers import FETCHERS
    from .pipeline import export_tables
    from .segment import SEGMENTERS
    from .types import Calibration

    given = [x is not None for x in (query, dois, doi_file)]
    if sum(given) != 1:
        raise ImageExtractError("give exactly one of --query, --doi or --doi-file")
    if max_articles is not None and int(max_articles) < 1:
        raise ImageExtractError(f"--max-articles must be >= 1, got {max_articles}")
    if nm_per_px is not None:
        Calibration(nm_per_px=nm_per_px)
    SEGMENTERS.get(backend)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ImageExtractError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    backend_options = dict(backend_options or {})
    if cache_dir is None:
        cache_dir = out / "http-cache"
    factory = FETCHERS.get(source)
    try:
        fetcher = factory(cache_dir=cache_dir, **(fetcher_options or {}))
    except TypeError:  # a third-party fetcher with its own constructor
        fetcher = factory(**(fetcher_options or {}))
    if not hasattr(fetcher, "fetch_document"):
        fetcher = _ProtocolAdapter(fetcher)
    t_start = time.perf_counter()
    try:
        if query is not None:
            idents = fetcher.search(query, max_results=int(max_articles or DEFAULT_MAX_SEARCH))
            logger.info("%s search %r: %d article(s)", source, query, len(idents))
        else:
            raw = list(dois) if dois is not None else read_identifiers(doi_file)  # type: ignore[arg-type]
            if isinstance(dois, str):
                raw = [dois]
            idents = list(dict.fromkeys(_clean_identifier(x) for x in raw if x.strip()))
        if max_articles:
            idents = idents[: int(max_articles)]
        fp = settings_fingerprint(backend, backend_options, nm_per_px)
        with Store(out / "results.sqlite") as store:
            run_id = store.begin_run(
                command=command, version=__version__, fingerprint=fp, overwrite=overwrite,
                config={"kind": "mine", "source": source, "query": query,
                        "identifiers": idents, "max_articles": max_articles, "backend": backend,
                        "backend_options": backend_options, "nm_per_px": nm_per_px})
            result = MineResult(out_dir=out, run_id=run_id)
            run = _Run(store, result, fetcher, out=out, backend=backend,
                       backend_options=backend_options, nm_per_px=nm_per_px, overwrite=overwrite)
            status = "finished"
            try:
                for ident in tqdm(idents, desc="mine", unit="article", disable=not progress):
                    run.article(ident)
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                store.finish_run(run_id, n_done=result.n_done, n_skipped=result.n_skipped,
                                 n_failed=result.n_failed, status=status)
                with store.conn:
                    store.conn.executescript(_VIEWS)
                t0 = time.perf_counter()
                export_tables(store, out, report=report)
                run.t["export"] = time.perf_counter() - t0
                result.seconds = {k: round(v, 3) for k, v in run.t.items()}
                result.seconds["total"] = round(time.perf_counter() - t_start, 3)
    finally:
        fetcher.close()
    logger.info("mined %d article(s): %d micrograph(s) done, %d skipped, %d failed, %d "
                "non-micrograph figure(s) skipped → %s", result.n_articles, result.n_done,
                result.n_skipped, result.n_failed, result.n_non_micrograph, out)
    return result


def literature_table(out_dir: str | Path, *, level: str = "micrographs"):
    """Micrograph (or particle) rows joined with material, licence, title and
    journal, from ``out_dir/results.sqlite``.

    >>> # literature_table("out/au").query("material == 'Au'")[["doi", "d50"]]
    """
    import pandas as pd
    import sqlite3

    if level not in ("micrographs", "particles"):
        raise ValueError(f"level must be 'micrographs' or 'particles', got {level!r}")
    db = Path(out_dir) / "results.sqlite"
    if not db.is_file():
        raise ImageExtractError(f"{db} not found: run `imageextract mine` first")
    with sqlite3.connect(db) as con:
        con.executescript(_VIEWS)
        return pd.read_sql_query(f"SELECT * FROM {level}_literature", con)


def mine_from_config(cfg: dict, *, progress: bool = True, command: str = "") -> MineResult:
    """Run a ``kind = "mine"`` pipeline (see ``pipelines/literature.toml``)."""
    inp = cfg.get("input", {})
    nm = cfg.get("calibration", {}).get("nm_per_px") or None
    dois = inp.get("dois") or None
    query = inp.get("query") or None
    doi_file = inp.get("doi_file") or None
    return mine(query=query, dois=dois, doi_file=doi_file, source=inp.get("source", ""),
                out_dir=cfg.get("output", {}).get("dir", "out"),
                max_articles=inp.get("max_articles") or None,
                backend=cfg.get("segmentation", {}).get("backend", "classical"),
                backend_options=cfg.get("segmentation", {}).get("options", {}),
                nm_per_px=nm, progress=progress, command=command,
                overwrite=bool(cfg.get("run", {}).get("overwrite", False)))


# --------------------------------------------------------------------------- #
# command line (wired into imageextract.cli by its owner)
# --------------------------------------------------------------------------- #
def add_mine_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``mine`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    from .cli import _backend_option, _positive_float, _positive_int

    m = subparsers.add_parser(
        "mine", help="fetch articles → EM figures → panels → calibration → particles",
        description="Mine articles from a publisher or open-access source for particle "
                    "statistics of their electron micrographs. Keys come from the environment: "
                    "ELSEVIER_API_KEY, ELSEVIER_INSTTOKEN, SPRINGER_API_KEY, CROSSREF_MAILTO; "
                    "IMAGEEXTRACT_<SOURCE>_URL points a source at a mirror.")
    g = m.add_mutually_exclusive_group(required=True)
    g.add_argument("--query", metavar="Q", help="search the source (its query syntax)")
    g.add_argument("--doi", action="append", metavar="DOI",
                   help="an article DOI (repeatable; PMCIDs for europepmc, paths for local)")
    g.add_argument("--doi-file", metavar="F", help="file with one DOI per line (# comments)")
    m.add_argument("--source", required=True, metavar="NAME",
                   help="fetcher: elsevier, europepmc, springer, crossref, local, …")
    m.add_argument("--out", required=True, metavar="DIR", help="results folder")
    m.add_argument("--max-articles", type=_positive_int, metavar="N", help="at most N articles")
    m.add_argument("--backend", default="classical",
                   help="segmentation backend (see `imageextract backends`)")
    m.add_argument("--backend-option", action="append", type=_backend_option, default=[],
                   metavar="KEY=VALUE", help="option passed to the backend (repeatable)")
    m.add_argument("--nm-per-px", type=_positive_float, metavar="X",
                   help="pixel size in nm for every panel (overrides scale bars)")
    m.add_argument("--overwrite", action="store_true",
                   help="re-process micrographs already in DIR (e.g. after changing settings)")
    return m


def cmd_mine(args, progress: bool) -> int:
    """Run ``imageextract mine`` from parsed ``args``; returns the exit code."""
    res = mine(query=args.query, dois=args.doi, doi_file=args.doi_file, source=args.source,
               out_dir=args.out, max_articles=args.max_articles, backend=args.backend,
               backend_options=dict(getattr(args, "backend_option", []) or []),
               nm_per_px=args.nm_per_px, progress=progress,
               overwrite=bool(getattr(args, "overwrite", False)),
               command=shlex.join(["imageextract"] + sys.argv[1:]))
    print(f"{res.n_articles} article(s): {res.n_done} micrograph(s) analysed, {res.n_skipped} "
          f"already done, {res.n_failed} failed, {res.n_non_micrograph} non-micrograph "
          f"figure(s) skipped → {res.out_dir}/report.html")
    for item, reason in res.failures[:20]:
        print(f"  failed: {reason if reason.startswith(item) else item + ': ' + reason}",
              file=sys.stderr)
    return res.exit_code
