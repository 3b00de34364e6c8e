"""Compose the stages for a local collection: load → calibrate → segment →
measure → summarise → overlay/RDF files → store → tables and report.

Workers (local processes or a Dask cluster) run :func:`process_image` and
return plain records; only this process writes the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import __version__
from .analysis.distributions import summarize
from .analysis.rdf import radial_distribution
from .analysis.sizes import measure
from .calibration import calibrate
from .errors import ImageExtractError
from .io import find_images, load_image
from .store import Store
from .weights import sha256_file

logger = logging.getLogger(__name__)

_SEGMENTERS: dict[str, Any] = {}


@dataclass
class AnalyzeResult:
    """What :func:`analyze` did."""

    out_dir: Path
    run_id: int
    n_done: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: micrograph ids analysed in this run in which the backend kept no
    #: particle (not failures: their rows are written, with zero particles)
    empty: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every item succeeded, 1 when some failed."""
        return 1 if self.n_failed else 0


def _segmenter(backend: str, options: dict[str, Any]):
    from .segment import get_segmenter

    key = backend + json.dumps(options, sort_keys=True, default=str)
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = get_segmenter(backend, **options)
    return _SEGMENTERS[key]


def micrograph_id_for(path: str | Path, digest: str) -> str:
    """Readable, content-addressed id: ``<stem>-<sha256[:10]>``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "image"
    return f"{stem}-{digest[:10]}"


class _StageError(Exception):
    """Wraps an exception with the stage it happened in."""

    def __init__(self, stage: str, err: BaseException) -> None:
        super().__init__(str(err))
        self.stage, self.err = stage, err


def _failure(item: str, stage: str, err: BaseException) -> dict[str, Any]:
    if isinstance(err, ImageExtractError):
        reason = str(err)
    elif isinstance(err, MemoryError):
        reason = "out of memory"
    else:
        logger.debug("item %s failed in %s:\n%s", item, stage,
                     "".join(traceback.format_exception(err)))
        reason = f"{type(err).__name__}: {err}"
    return {"ok": False, "item": item, "stage": stage, "reason": reason}


def _panels_of(image: np.ndarray, *, split: bool) -> list[Any]:
    """Micrograph panels of a local image.

    A file that the splitter returns as one panel is always analysed (the
    user handed us a micrograph); in a compound figure only panels classed
    as micrographs go on, charts and schemes are skipped.
    """
    from .types import Panel

    h, w = image.shape[:2]
    whole = Panel(image=image, bbox=(0, 0, int(w), int(h)), kind="micrograph", index=0)
    if not split:
        return [whole]
    from .figures import split_panels

    panels = split_panels(image)
    if len(panels) <= 1:
        return [whole]
    keep = [p for p in panels if p.kind == "micrograph"]
    for p in panels:
        if p.kind != "micrograph":
            logger.info("panel %s (%s) is a %s: skipped", p.index, p.label or "-", p.kind)
    return keep


def process_image(
    path: str,
    *,
    micrograph_id: str,
    out_dir: str,
    backend: str = "classical",
    backend_options: dict[str, Any] | None = None,
    nm_per_px: float | None = None,
    read_scale_bar: bool = True,
    split_panels: bool = True,
    run_id: int = 0,
) -> list[dict[str, Any]]:
    """Load one local image file, cut it into micrograph panels, calibrate
    and process each; never raises on bad input.

    A file that is a single micrograph gives one micrograph with id
    ``micrograph_id``; a compound figure gives ``<micrograph_id>-p<index>``
    per micrograph panel (scale bars shared between siblings).

    Returns
    -------
    list of dict
        One outcome per micrograph: ``{"ok": True, "record": {...},
        "particles": DataFrame}`` or ``{"ok": False, "item": path,
        "stage": ..., "reason": ...}``.
    """
    from .types import Calibration, Micrograph

    stage = "load"
    try:
        image = load_image(path)
        stage = "panels"
        panels = _panels_of(image, split=split_panels)
        stage = "calibrate"
        if nm_per_px is not None:
            cals = [Calibration(nm_per_px=nm_per_px, source="manual")] * len(panels)
        elif not read_scale_bar:
            cals = [None] * len(panels)
        elif len(panels) == 1:
            cals = [calibrate(panels[0].image)]
        else:
            from .figures import calibrate_panels

            cals = calibrate_panels(panels)
        compound = len(panels) > 1 or (panels and panels[0].bbox != (0, 0, image.shape[1], image.shape[0]))
        mics = [Micrograph(image=p.image, micrograph_id=f"{micrograph_id}-p{p.index}" if compound else micrograph_id,
                           calibration=cal, source="local", path=str(path),
                           panel=(p.label or str(p.index)) if compound else "", bbox=p.bbox)
                for p, cal in zip(panels, cals)]
    except Exception as err:  # one bad item must not stop the batch
        return [_failure(str(path), stage, err)]
    return [process_micrograph(mic, out_dir=out_dir, backend=backend,
                               backend_options=backend_options, run_id=run_id) for mic in mics]


def process_micrograph(
    mic,
    *,
    out_dir: str,
    backend: str = "classical",
    backend_options: dict[str, Any] | None = None,
    run_id: int = 0,
) -> dict[str, Any]:
    """Segment, measure and summarise one calibrated :class:`~imageextract.types.Micrograph`,
    writing its overlay and RDF files; never raises on bad input.

    The literature path calls this for every micrograph panel; provenance
    (source, DOI, figure, panel, bbox) comes from the Micrograph.

    Returns
    -------
    dict
        ``{"ok": True, "record": {...}, "particles": DataFrame}`` or
        ``{"ok": False, "item": ..., "stage": ..., "reason": ...}``.
    """
    try:
        return _process_micrograph(mic, out_dir=out_dir, backend=backend,
                                   backend_options=backend_options or {}, run_id=run_id)
    except _StageError as err:
        return _failure(mic.path or mic.micrograph_id, err.stage, err.err)


def _process_micrograph(mic, *, out_dir, backend, backend_options, run_id) -> dict[str, Any]:
    from .report import overlay, save_png

    image, cal, micrograph_id = mic.image, mic.calibration, mic.micrograph_id
    stage = "segment"
    try:
        seg_model = _segmenter(backend, backend_options)
        t0 = time.perf_counter()
        seg = seg_model.predict(image)
        seconds = time.perf_counter() - t0
        if cal is not None and cal.bar_box is not None:
            from .segment.base import drop_in_boxes

            n_seg = seg.n_instances
            seg = drop_in_boxes(seg, [cal.bar_box])  # the scale bar is not a particle
            if seg.n_instances < n_seg:
                logger.debug("%s: %d instance(s) on the scale bar dropped", micrograph_id,
                             n_seg - seg.n_instances)
        stage = "measure"
        unc_t = getattr(seg_model, "uncertainty_threshold", None)
        table = measure(seg.labels, nm_per_px=cal.nm_per_px if cal else None,
                        scores=seg.scores, uncertainty=seg.uncertainty,
                        uncertainty_threshold=unc_t)
        stats = summarize(table)
        stage = "rdf"
        unit = stats["size_unit"]
        s = cal.nm_per_px if cal else 1.0
        use = table[~table["touches_border"] & table["certain"]]
        h, w = seg.labels.shape
        rdf = radial_distribution(use[["centroid_x_px", "centroid_y_px"]].to_numpy() * s,
                                  area=h * w * s * s)
        out = Path(out_dir)
        rdf_file = ""
        if len(rdf):
            rdf_file = f"rdf/{micrograph_id}.csv"
            (out / "rdf").mkdir(parents=True, exist_ok=True)
            rdf.rename(columns={"r": f"r_{unit}"}).to_csv(out / rdf_file, index=False)
        stage = "overlay"
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        overlay_file = f"overlays/{micrograph_id}.png"
        k = seg.n_instances
        certain = np.ones(k, bool)
        border = np.zeros(k, bool)
        if len(table):
            certain[table["particle_id"].to_numpy() - 1] = table["certain"].to_numpy(bool)
            border[table["particle_id"].to_numpy() - 1] = table["touches_border"].to_numpy(bool)
        bar_box = cal.bar_box if cal else None
        save_png(overlay(image, seg.labels, certain=certain, border=border, scale_bar_box=bar_box),
                 out / overlay_file, max_side=2048)
    except Exception as err:
        raise _StageError(stage, err) from err

    cal_source = cal.source if cal else "none"
    prov = {
        "source": mic.source, "doi": mic.doi, "path": mic.path, "figure": mic.figure,
        "panel": mic.panel, "license": mic.license, "material": mic.material,
        "nm_per_px": cal.nm_per_px if cal else np.nan,
        "calibration_source": cal_source, "backend": seg.backend, "weights": seg.weights,
        "imageextract_version": __version__, "run_id": run_id,
    }
    for key, value in prov.items():
        table[key] = value
    u = stats["size_unit"]
    document_id = f"doi:{mic.doi}" if mic.doi else f"{mic.source}:{mic.path}"
    record = {
        "micrograph_id": micrograph_id, "document_id": document_id, "source": mic.source,
        "doi": mic.doi, "path": mic.path, "figure": mic.figure, "panel": mic.panel,
        "license": mic.license, "material": mic.material, "bbox": list(mic.bbox), "width_px": w, "height_px": h,
        "nm_per_px": cal.nm_per_px if cal else None, "calibration_source": cal_source,
        "calibration_confidence": cal.confidence if cal else None,
        "scalebar_text": cal.text if cal else None, "scalebar_bar_px": cal.bar_px if cal else None,
        "modality": mic.modality, "backend": seg.backend, "weights": seg.weights,
        "n_particles": stats["n_particles"], "n_measured": stats["n_measured"], "size_unit": u,
        "d10": stats[f"d10_{u}"], "d50": stats[f"d50_{u}"], "d90": stats[f"d90_{u}"],
        "d50_ci_low": stats[f"d50_ci_low_{u}"], "d50_ci_high": stats[f"d50_ci_high_{u}"],
        "mean_ecd": stats[f"mean_ecd_{u}"], "std_ecd": stats[f"std_ecd_{u}"],
        "lognormal_gm": stats[f"lognormal_gm_{u}"], "lognormal_gsd": stats["lognormal_gsd"],
        "mean_aspect_ratio": stats["mean_aspect_ratio"],
        "aspect_ratio_ci_low": stats["aspect_ratio_ci_low"],
        "aspect_ratio_ci_high": stats["aspect_ratio_ci_high"],
        "rdf_file": rdf_file, "overlay_file": overlay_file, "seconds": seconds,
        "run_id": run_id, "summary_json": json.dumps(stats, default=float),
    }
    return {"ok": True, "record": record, "particles": table}


def settings_fingerprint(backend: str, backend_options: dict, nm_per_px: float | None,
                         read_scale_bar: bool = True, split_panels: bool = True) -> str:
    """Hash of the settings that shape results; a store refuses to mix results
    of different fingerprints (see :meth:`Store.begin_run`)."""
    blob = json.dumps({"backend": backend, "options": backend_options,
                       "nm_per_px": nm_per_px, "scalebar": read_scale_bar,
                       **({} if split_panels else {"split_panels": False})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def export_tables(store: Store, out_dir: Path, *, report: bool = True) -> None:
    """(Re)write ``particles.parquet``, ``particles.csv``, ``micrographs.csv``
    and ``report.html`` from the store, so they always hold every result of
    every run into ``out_dir``."""
    from .report import write_report

    particles = store.particles()
    micrographs = store.table("micrographs").sort_values("micrograph_id", kind="stable")
    failures = store.table("failures")
    tmp = out_dir / "particles.parquet.tmp"
    particles.to_parquet(tmp, index=False)
    tmp.replace(out_dir / "particles.parquet")
    _write_atomic_csv(particles, out_dir / "particles.csv")
    _write_atomic_csv(micrographs.drop(columns=["summary_json"], errors="ignore"),
                      out_dir / "micrographs.csv")
    if report:
        write_report(out_dir, micrographs=micrographs, particles=particles, failures=failures)


def _executor(workers: int, scheduler: str | None):
    """A concurrent.futures-like executor: Dask client, process pool, or None (serial)."""
    if scheduler:
        try:
            from dask.distributed import Client
        except ImportError as err:
            raise ImageExtractError(
                "--scheduler needs Dask: pip install 'imageextract[distributed]'") from err
        return Client(scheduler)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing as mp

        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    return None


def analyze(
    paths: Iterable[str | Path],
    out_dir: str | Path,
    *,
    backend: str = "classical",
    backend_options: dict[str, Any] | None = None,
    nm_per_px: float | None = None,
    read_scale_bar: bool = True,
    split_panels: bool = True,
    workers: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
    command: str = "",
) -> AnalyzeResult:
    """Analyse local micrographs into ``out_dir``.

    Parameters
    ----------
    paths : iterable of path-like
        Image files and/or folders (searched recursively).
    out_dir : path-like
        Results folder (created); see DESIGN.md for what it holds.
    backend : str
        Segmentation backend name; ``backend_options`` go to its constructor.
    nm_per_px : float, optional
        Pixel size for every image (``calibration_source = "manual"``);
        otherwise scale bars are read (``"scalebar"``, or ``"sibling"`` for
        a panel that borrows the label of a sibling's equal bar).
    split_panels : bool
        Cut compound figures into panels and analyse only the micrograph
        panels; a single micrograph stays one micrograph.
    workers : int
        Local worker processes (1 = in this process).
    scheduler : str, optional
        Address of a Dask distributed scheduler; results are identical.
    overwrite : bool
        Re-process micrographs already in ``out_dir`` (needed when the
        settings changed since they were written).

    Returns
    -------
    AnalyzeResult

    Raises
    ------
    ImageExtractError
        Bad settings (unknown backend, invalid nm_per_px, ``out_dir`` holding
        results made with other settings and ``overwrite=False``).
    """
    from .segment import SEGMENTERS
    from .types import Calibration

    out = Path(out_dir)
    backend_options = dict(backend_options or {})
    if nm_per_px is not None:
        Calibration(nm_per_px=nm_per_px)  # validates, raises CalibrationError
    # unknown name → BackendNotFoundError listing installed ones; unknown option → ConfigError
    SEGMENTERS.check_options(backend, backend_options)
    if out.exists() and not out.is_dir():
        raise ImageExtractError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    files = find_images(paths)
    fp = settings_fingerprint(backend, backend_options, nm_per_px, read_scale_bar, split_panels)
    with Store(out / "results.sqlite") as store:
        run_id = store.begin_run(
            command=command, version=__version__, fingerprint=fp, overwrite=overwrite,
            config={"paths": [str(p) for p in paths] if not isinstance(paths, str) else [paths],
                    "backend": backend, "backend_options": backend_options,
                    "nm_per_px": nm_per_px, "workers": workers, "scheduler": scheduler})
        result = AnalyzeResult(out_dir=out, run_id=run_id)
        done = set() if overwrite else store.done_ids() | store.document_ids()
        todo: list[tuple[str, str]] = []
        for f in files:
            try:
                mid = micrograph_id_for(f, sha256_file(f))
            except OSError as err:
                store.record_failure(str(f), stage="load", reason=f"{f}: cannot read ({err.strerror or err})",
                                     run_id=run_id)
                result.n_failed += 1
                result.failures.append((str(f), str(err)))
                continue
            if mid in done or f"local:{mid}" in done:
                result.n_skipped += 1
            elif mid not in {m for _, m in todo}:
                todo.append((str(f), mid))
        if result.n_skipped:
            logger.info("%d micrograph(s) already done in %s: skipped", result.n_skipped, out)
        kwargs = dict(out_dir=str(out), backend=backend, backend_options=backend_options,
                      nm_per_px=nm_per_px, read_scale_bar=read_scale_bar,
                      split_panels=split_panels, run_id=run_id)
        status = "finished"
        executor = _executor(workers, scheduler) if todo else None
        try:
            bar = tqdm(total=len(todo), desc="analyze", unit="image", disable=not progress)
            if executor is None:
                outcomes = (((p, m), process_image(p, micrograph_id=m, **kwargs)) for p, m in todo)
            else:
                outcomes = _submit_all(executor, todo, kwargs, scheduler is not None)
            for (path, mid), results in outcomes:
                for res in results:
                    if res["ok"]:
                        res["record"]["document_id"] = f"local:{mid}"
                    _store_outcome(store, res, result, run_id)
                if all(r["ok"] for r in results):
                    store.add_document({"document_id": f"local:{mid}", "source": "local",
                                        "doi": "", "path": path, "run_id": run_id})
                    store.conn.commit()
                bar.update(1)
            bar.close()
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if executor is not None:
                if scheduler:
                    executor.close()
                else:
                    executor.shutdown(cancel_futures=True)
            store.finish_run(run_id, n_done=result.n_done, n_skipped=result.n_skipped,
                             n_failed=result.n_failed, status=status)
            export_tables(store, out, report=report)
    logger.info("analyzed %d, skipped %d, failed %d → %s", result.n_done, result.n_skipped,
                result.n_failed, out)
    return result


def _submit_all(executor, todo, kwargs, is_dask: bool):
    if is_dask:
        from dask.distributed import as_completed as dask_completed

        futures = {executor.submit(process_image, p, micrograph_id=m, pure=False, **kwargs): (p, m)
                   for p, m in todo}
        for fut in dask_completed(list(futures)):
            yield futures[fut], fut.result()
    else:
        from concurrent.futures import as_completed

        futures = {executor.submit(process_image, p, micrograph_id=m, **kwargs): (p, m)
                   for p, m in todo}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def _store_outcome(store: Store, res: dict, result: AnalyzeResult, run_id: int) -> None:
    if res["ok"]:
        store.write_micrograph(res["record"], res["particles"])
        result.n_done += 1
        rec = res["record"]
        if not rec["n_particles"]:
            result.empty.append(rec["micrograph_id"])
            logger.warning("%s: no particles found by %s; see %s, or try another backend "
                           "or a fixed scale", rec["path"], rec["backend"], rec["overlay_file"])
    else:
        store.record_failure(res["item"], stage=res["stage"], reason=res["reason"], run_id=run_id)
        result.n_failed += 1
        result.failures.append((res["item"], res["reason"]))
        reason = res["reason"]
        logger.warning("%s", reason if reason.startswith(res["item"]) else f"{res['item']}: {reason}")
