"""The embedded results store (``results.sqlite``) — one writer, the client.

Tables: ``runs``, ``documents``, ``figures``, ``micrographs``, ``particles``,
``failures``.  A micrograph and its particles are written in one transaction,
so an interrupted run leaves either all of a micrograph or none of it, and a
re-run skips micrographs already present.  A failure row is replaced when the
same item fails again and deleted when it later succeeds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .analysis.sizes import COLUMNS as MORPHOLOGY_COLUMNS

PROVENANCE_COLUMNS = [
    "source", "doi", "path", "figure", "panel", "license", "material", "nm_per_px",
    "calibration_source",
    "backend", "weights", "imageextract_version", "run_id",
]

#: Micrograph-level columns (besides the summary statistics, stored as JSON too).
MICROGRAPH_COLUMNS = [
    "micrograph_id", "document_id", "source", "doi", "path", "figure", "panel", "license",
    "material", "bbox",
    "width_px", "height_px", "nm_per_px", "calibration_source", "calibration_confidence",
    "scalebar_text", "scalebar_bar_px", "modality", "backend", "weights", "n_particles",
    "n_measured", "size_unit", "d10", "d50", "d90", "d50_ci_low", "d50_ci_high",
    "mean_ecd", "std_ecd", "lognormal_gm", "lognormal_gsd", "mean_aspect_ratio",
    "aspect_ratio_ci_low", "aspect_ratio_ci_high", "rdf_file", "overlay_file",
    "seconds", "run_id", "summary_json",
]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT, finished_at TEXT, command TEXT, config_json TEXT,
    imageextract_version TEXT, fingerprint TEXT,
    n_done INTEGER, n_skipped INTEGER, n_failed INTEGER, status TEXT
);
CREATE TABLE IF NOT EXISTS documents (
    document_id TEXT PRIMARY KEY, source TEXT, doi TEXT, path TEXT, title TEXT,
    journal TEXT, license TEXT, run_id INTEGER
);
CREATE TABLE IF NOT EXISTS figures (
    figure_id TEXT PRIMARY KEY, document_id TEXT, label TEXT, caption TEXT,
    image_url TEXT, material TEXT, run_id INTEGER
);
CREATE TABLE IF NOT EXISTS micrographs (
    {", ".join(f"{c} {'TEXT PRIMARY KEY' if c == 'micrograph_id' else ''}" for c in MICROGRAPH_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS particles (
    micrograph_id TEXT NOT NULL,
    {", ".join(c for c in MORPHOLOGY_COLUMNS)},
    {", ".join(c for c in PROVENANCE_COLUMNS)},
    PRIMARY KEY (micrograph_id, particle_id)
);
CREATE TABLE IF NOT EXISTS failures (
    item TEXT PRIMARY KEY, stage TEXT, reason TEXT, run_id INTEGER, at TEXT
);
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Store:
    """SQLite results store in ``out_dir/results.sqlite``.

    Parameters
    ----------
    path : path-like
        The database file (created with its tables when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------
    def start_run(self, *, command: str, config: dict[str, Any], version: str,
                  fingerprint: str) -> int:
        cur = self.conn.execute(
            "INSERT INTO runs (started_at, command, config_json, imageextract_version, "
            "fingerprint, status) VALUES (?, ?, ?, ?, ?, 'running')",
            (_now(), command, json.dumps(config, default=str), version, fingerprint))
        self.conn.commit()
        return int(cur.lastrowid)

    def begin_run(self, *, command: str, config: dict[str, Any], version: str,
                  fingerprint: str, overwrite: bool) -> int:
        """Start a run after checking that earlier results in this store were
        made with the same settings (``fingerprint``) unless ``overwrite``."""
        from .errors import ImageExtractError

        if self.fingerprints() - {fingerprint} and not overwrite:
            raise ImageExtractError(
                f"{self.path.parent} already holds results made with other settings (backend, "
                "options or nm/px); use a new --out folder, or --overwrite to re-process them")
        return self.start_run(command=command, config=config, version=version,
                              fingerprint=fingerprint)

    def finish_run(self, run_id: int, *, n_done: int, n_skipped: int, n_failed: int,
                   status: str = "finished") -> None:
        self.conn.execute(
            "UPDATE runs SET finished_at=?, n_done=?, n_skipped=?, n_failed=?, status=? "
            "WHERE run_id=?", (_now(), n_done, n_skipped, n_failed, status, run_id))
        self.conn.commit()

    def fingerprints(self) -> set[str]:
        """Fingerprints (settings hashes) of earlier runs that wrote micrographs."""
        rows = self.conn.execute(
            "SELECT DISTINCT r.fingerprint FROM runs r JOIN micrographs m ON m.run_id = r.run_id")
        return {r[0] for r in rows if r[0]}

    # -- items --------------------------------------------------------------
    def done_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT micrograph_id FROM micrographs")}

    def document_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT document_id FROM documents")}

    def add_document(self, doc: dict[str, Any]) -> None:
        cols = ["document_id", "source", "doi", "path", "title", "journal", "license", "run_id"]
        self.conn.execute(
            f"INSERT OR IGNORE INTO documents ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [doc.get(c) for c in cols])

    def add_figure(self, fig: dict[str, Any]) -> None:
        cols = ["figure_id", "document_id", "label", "caption", "image_url", "material", "run_id"]
        self.conn.execute(
            f"INSERT OR IGNORE INTO figures ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [fig.get(c) for c in cols])

    def write_micrograph(self, record: dict[str, Any], particles: pd.DataFrame, *,
                         document: dict[str, Any] | None = None,
                         figure: dict[str, Any] | None = None,
                         failure_key: str | None = None) -> None:
        """Write one micrograph, its particles (replacing any earlier rows of
        the same micrograph) and its document/figure in one transaction."""
        mid = record["micrograph_id"]
        with self.conn:
            if document:
                self.add_document(document)
            if figure:
                self.add_figure(figure)
            self.conn.execute("DELETE FROM particles WHERE micrograph_id=?", (mid,))
            self.conn.execute(
                f"INSERT OR REPLACE INTO micrographs ({', '.join(MICROGRAPH_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(MICROGRAPH_COLUMNS))})",
                [_sql(record.get(c)) for c in MICROGRAPH_COLUMNS])
            if len(particles):
                cols = ["micrograph_id"] + MORPHOLOGY_COLUMNS + PROVENANCE_COLUMNS
                frame = particles.reindex(columns=cols)
                frame["micrograph_id"] = mid
                rows = [tuple(_sql(v) for v in row) for row in frame.itertuples(index=False, name=None)]
                self.conn.executemany(
                    f"INSERT INTO particles ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    rows)
            for key in {failure_key, mid, record.get("path")} - {None}:
                self.conn.execute("DELETE FROM failures WHERE item=?", (key,))

    def clear_failure(self, *items: str) -> None:
        """Delete the failure rows of ``items`` (they have since succeeded)."""
        with self.conn:
            for it in items:
                self.conn.execute("DELETE FROM failures WHERE item=?", (it,))

    def record_failure(self, item: str, *, stage: str, reason: str, run_id: int) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO failures (item, stage, reason, run_id, at) VALUES (?, ?, ?, ?, ?)",
                (item, stage, reason, run_id, _now()))

    # -- reading ------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        if name not in ("runs", "documents", "figures", "micrographs", "particles", "failures"):
            raise ValueError(f"unknown table {name!r}")
        return pd.read_sql_query(f"SELECT * FROM {name}", self.conn)

    def particles(self) -> pd.DataFrame:
        t = pd.read_sql_query("SELECT * FROM particles ORDER BY micrograph_id, particle_id", self.conn)
        for c in ("touches_border", "certain"):
            if c in t:
                t[c] = t[c].astype(bool)
        return t


def _sql(v: Any) -> Any:
    """Convert NumPy scalars / tuples to SQLite-storable values."""
    if v is None:
        return None
    if isinstance(v, (tuple, list, dict)):
        return json.dumps(v)
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:  # NaN → NULL
        return None
    return v

