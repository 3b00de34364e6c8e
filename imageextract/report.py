"""Overlays and the self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .segment.base import to_rgb_uint8

logger = logging.getLogger(__name__)

CERTAIN_RGB = (0, 230, 64)
UNCERTAIN_RGB = (255, 64, 32)
BORDER_RGB = (255, 200, 0)
SCALEBAR_RGB = (0, 160, 255)


def overlay(image: np.ndarray, labels: np.ndarray, *, certain: np.ndarray | None = None,
            border: np.ndarray | None = None, scale_bar_box=None) -> np.ndarray:
    """RGB picture of ``image`` with particle outlines.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray
    labels : (M, N) ndarray of int
    certain : (K,) ndarray of bool, optional
        Per-label flag; uncertain particles are outlined in red, certain ones
        in green.
    border : (K,) ndarray of bool, optional
        Border-touching particles are outlined in yellow (left out of statistics).
    scale_bar_box : (x0, y0, x1, y1), optional
        Drawn as a blue rectangle.

    Returns
    -------
    (M, N, 3) ndarray of uint8
    """
    from skimage.segmentation import find_boundaries

    rgb = to_rgb_uint8(image).copy()
    labels = np.asarray(labels)
    k = int(labels.max(initial=0))
    if k:
        edges = find_boundaries(labels, mode="inner")
        colour = np.zeros((k + 1, 3), np.uint8)
        colour[1:] = CERTAIN_RGB
        if border is not None:
            colour[1:][np.asarray(border, bool)] = BORDER_RGB
        if certain is not None:
            colour[1:][~np.asarray(certain, bool)] = UNCERTAIN_RGB
        rgb[edges] = colour[labels[edges]]
    if scale_bar_box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in scale_bar_box)
        h, w = labels.shape
        x0, x1 = max(0, x0 - 2), min(w - 1, x1 + 2)
        y0, y1 = max(0, y0 - 2), min(h - 1, y1 + 2)
        rgb[y0, x0:x1 + 1] = rgb[y1, x0:x1 + 1] = SCALEBAR_RGB
        rgb[y0:y1 + 1, x0] = rgb[y0:y1 + 1, x1] = SCALEBAR_RGB
    return rgb


def save_png(array: np.ndarray, path: str | Path, *, max_side: int | None = None) -> None:
    from PIL import Image

    im = Image.fromarray(array)
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    tmp = Path(str(path) + ".tmp")
    im.save(tmp, format="PNG")
    tmp.replace(path)


def _fig_to_data_uri(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_to_data_uri(path: Path, max_side: int = 700) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _histogram_figure(values: np.ndarray, *, xlabel: str, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot(111)
    v = values[np.isfinite(values)]
    if v.size:
        ax.hist(v, bins="auto", color="#4477aa", edgecolor="white")
        d50 = float(np.median(v))
        ax.axvline(d50, color="#cc3311", lw=1.5, label=f"median {d50:.3g}")
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no particles", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("number of particles")
    ax.set_title(title)
    return fig


def _rdf_figure(rdfs: list[tuple[str, pd.DataFrame]], unit: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot(111)
    drawn = 0
    for name, t in rdfs[:12]:
        if len(t):
            ax.plot(t.iloc[:, 0], t["g"], lw=1, label=name[:24])
            drawn += 1
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"r ({unit})")
    ax.set_ylabel("g(r)")
    ax.set_title("Radial distribution functions")
    if drawn:
        ax.legend(fontsize=6, frameon=False)
    else:
        ax.text(0.5, 0.5, "too few particles", ha="center", va="center", transform=ax.transAxes)
    return fig


def _table_html(df: pd.DataFrame, max_rows: int = 500) -> str:
    if df.empty:
        return "<p><em>none</em></p>"
    shown = df.head(max_rows)
    note = f"<p>First {max_rows} of {len(df)} rows; see the CSV files for all.</p>" if len(df) > max_rows else ""
    return note + shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", escape=True,
                                classes="tbl", border=0, na_rep="")


def _models_html(micrographs: pd.DataFrame) -> str:
    """One line per set of weights the micrographs name: what the particles'
    ``uncertainty`` column means for it, and the threshold it dropped
    particles at, as the installed model's ``config.json`` records them."""
    from .segment.bpartis import UNCERTAINTY_TEXT
    from .weights import WeightsError, list_models, load_spec

    tags = sorted({t for t in micrographs.get("weights", pd.Series(dtype=object))
                   if isinstance(t, str) and t and t != "none"})
    if not tags:
        return ""
    specs = {}
    for name in list_models():
        try:
            spec = load_spec(name)
        except WeightsError:
            continue
        specs.setdefault(spec.tag, spec)
    items = []
    for tag in tags:
        spec = specs.get(tag)
        text = "not an installed model"
        if spec is not None:
            inf = spec.config.get("inference", {})
            text = f"models/{spec.name}"
            if int(inf.get("mc_samples", 1)) > 1:
                kind = str(inf.get("uncertainty", "mi"))
                t_u = inf.get("uncertainty_threshold")
                text += (f": particle uncertainty = {UNCERTAINTY_TEXT.get(kind, kind)}, "
                         f"from {int(inf['mc_samples'])} MC-dropout samples; "
                         + ("no threshold" if t_u is None
                            else f"particles above {float(t_u):.3g} were dropped")
                         + " (unless a --backend-option overrode it)")
            resc = inf.get("rescore")
            if isinstance(resc, dict) and "threshold" in resc:
                text += ("; particle score = probability that the particle is real and well "
                         "outlined (learned rescoring), particles below "
                         f"{float(resc['threshold']):.3g} were dropped")
            if isinstance(inf.get("outline"), dict):
                text += ("; outlines refined by a learned outline refiner (the pixels within "
                         f"{float(inf['outline'].get('band', 4.0)):g} working-scale px of "
                         "each outline re-decided from the image)")
        items.append(f"<li><code>{html.escape(tag)}</code>: {html.escape(text)}</li>")
    return "<h2>Models</h2><ul>" + "".join(items) + "</ul>"


def _empty_html(micrographs: pd.DataFrame, *, max_listed: int = 20) -> str:
    """A notice naming the micrographs in which no particle was kept (empty
    string when there are none): they are in the tables with zero particles,
    which is easy to miss among many."""
    if not len(micrographs) or "n_particles" not in micrographs:
        return ""
    n = pd.to_numeric(micrographs["n_particles"], errors="coerce").fillna(0)
    empty = micrographs[n == 0]
    if not len(empty):
        return ""
    names = [html.escape(str(m.get("path") or m["micrograph_id"])) for _, m in
             empty.head(max_listed).iterrows()]
    more = f" and {len(empty) - max_listed} more" if len(empty) > max_listed else ""
    return (f"<p class='empty'><b>{len(empty)} micrograph(s) with no particles found:</b> "
            f"{', '.join(names)}{more}. Their overlays below show what the backend saw; "
            "another backend (<code>--backend</code>) or a fixed working scale "
            "(<code>--backend-option scale=...</code>) may find them.</p>")


def write_report(out_dir: str | Path, *, micrographs: pd.DataFrame, particles: pd.DataFrame,
                 failures: pd.DataFrame, title: str = "imageextract report",
                 max_overlays: int = 60) -> Path:
    """Write ``out_dir/report.html``: a single file with every picture embedded."""
    out_dir = Path(out_dir)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    n_mic = len(micrographs)
    parts.append(
        f"<p>{n_mic} micrograph(s), {len(particles)} particle(s), {len(failures)} failure(s). "
        "Border-touching particles (yellow outlines) and uncertain particles (red) are "
        "left out of the distributions.</p>")
    parts.append(_empty_html(micrographs))
    # Distributions, pooled over micrographs with the same unit
    measured = particles
    if len(measured):
        measured = measured[~measured["touches_border"].astype(bool) & measured["certain"].astype(bool)]
    calibrated = len(measured) and measured["ecd_nm"].notna().any()
    unit = "nm" if calibrated else "px"
    sizes = measured[f"ecd_{unit}"].to_numpy(float) if len(measured) else np.zeros(0)
    ars = measured["aspect_ratio"].to_numpy(float) if len(measured) else np.zeros(0)
    rdfs = []
    for _, m in micrographs.iterrows():
        f = m.get("rdf_file")
        if isinstance(f, str) and f and (out_dir / f).is_file():
            rdfs.append((str(m["micrograph_id"]), pd.read_csv(out_dir / f)))
    figs = [
        _histogram_figure(sizes, xlabel=f"equivalent circular diameter ({unit})",
                          title="Particle size (number-weighted)"),
        _histogram_figure(ars, xlabel="aspect ratio (major/minor)", title="Aspect ratio"),
        _rdf_figure(rdfs, unit),
    ]
    parts.append("<h2>Distributions</h2><div class='row'>" + "".join(
        f"<img src='{_fig_to_data_uri(f)}' alt='plot'>" for f in figs) + "</div>")
    parts.append(_models_html(micrographs))
    parts.append("<h2>Micrographs</h2>")
    cols = [c for c in ["micrograph_id", "path", "doi", "figure", "panel", "nm_per_px",
                        "calibration_source", "backend", "n_particles", "n_measured", "size_unit",
                        "d10", "d50", "d90", "lognormal_gm", "lognormal_gsd",
                        "mean_aspect_ratio"] if c in micrographs]
    parts.append(_table_html(micrographs[cols] if cols else micrographs))
    parts.append("<h2>Overlays</h2><div class='grid'>")
    for i, (_, m) in enumerate(micrographs.iterrows()):
        if i >= max_overlays:
            parts.append(f"<p>{n_mic - max_overlays} more overlay(s) in <code>overlays/</code>.</p>")
            break
        f = m.get("overlay_file")
        if isinstance(f, str) and (out_dir / f).is_file():
            n = m.get("n_particles", 0)
            cap = html.escape(f"{m['micrograph_id']} — "
                              + (f"{n} particles" if n else "no particles found"))
            parts.append(f"<figure><img src='{_file_to_data_uri(out_dir / f)}' alt='overlay'>"
                         f"<figcaption>{cap}</figcaption></figure>")
    parts.append("</div><h2>Failures</h2>")
    parts.append(_table_html(failures))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
             ".row img{max-width:32%;margin-right:1%}.grid{display:flex;flex-wrap:wrap;gap:12px}"
             "figure{margin:0;max-width:360px}figure img{max-width:360px}"
             "figcaption{font-size:12px}.tbl{border-collapse:collapse;font-size:12px}"
             ".tbl td,.tbl th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = out_dir / "report.html"
    tmp = out_dir / "report.html.tmp"
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path
