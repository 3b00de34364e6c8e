"""Split compound figures into panels, read panel labels, classify panel kinds.

The splitter is a recursive XY-cut:

1. Inside the current region, rows (then columns) whose pixels are all of
   one colour (white or black gutters, thin frame lines) form separating
   bands; the region is cut at every band.  When no band is found, a
   *seam* — a row or column where neighbouring lines stop being correlated,
   as where two micrographs touch — is looked for, and cut only when both
   sides are substantial.  A weaker seam is accepted at a regular-grid
   position (1/2, 1/3, 2/3) when most pixels jump across it along most of
   the line, the lines around it do not, and the content does not run on
   across it (one micrograph with a stitching or upscaling artefact).
2. Leaves are trimmed of uniform margins and of a thin frame.
3. Small leaves (stray text, an axis title split off a chart, a scale bar
   in a banner) are merged into the nearest large neighbour; a small,
   compact leaf at a panel's top-left corner is read as that panel's label.
4. Each panel gets a kind (``micrograph``, ``chart``, ``other``) from simple
   image statistics: charts have a flat white background and axis lines;
   schemes are flat or colourful without axes; micrographs are grey and
   textured.  Labels printed inside a panel's top-left corner are read with
   OCR.

Insets stay inside their panel: no band or seam crosses a whole panel at an
inset's edge.  A figure that is a single micrograph comes back as one panel.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from ..types import Figure, Panel
from ._image import saturation, to_grey01

logger = logging.getLogger(__name__)

__all__ = ["split_panels", "classify_panel", "panel_boxes"]

_MAX_LEAVES = 40  # more pieces than this: not a grid of panels
_LABEL_RE = re.compile(r"^[(\[]?([A-Za-z])([0-9]?)[)\].:]?$")


@dataclass
class _Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.w) * max(0, self.h)

    def t(self) -> tuple[int, int, int, int]:
        return (int(self.x0), int(self.y0), int(self.x1), int(self.y1))


# --------------------------------------------------------------------------- cutting

def _uniform_lines(g: np.ndarray, axis: int, tol: float, colour: float,
                   dark_lines: bool = True) -> np.ndarray:
    """Boolean per row (axis=1) or column (axis=0): a gutter line.

    A gutter line has all its pixels within ``tol`` of each other and of the
    figure's gutter ``colour``; with ``dark_lines``, flat black lines (frames,
    separator rules) count too.  A flat line of another colour may be the
    background of a drawing or a micrograph, so it does not separate panels.
    """
    lo = g.min(axis=axis)
    hi = g.max(axis=axis)
    mean = 0.5 * (lo + hi)
    ok = np.abs(mean - colour) <= max(0.06, tol / 2)
    if dark_lines:
        ok |= hi <= 0.15
    return ((hi - lo) <= tol) & ok


def _gutter_colour(g: np.ndarray) -> float:
    """Colour of the figure's margins: white (1.0) unless the border is mostly black."""
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    return 0.0 if float(np.median(border)) < 0.2 else 1.0


def _bands(flags: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as (start, stop)."""
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]))


def _trim(g: np.ndarray, b: _Box, tol: float, colour: float = 1.0) -> _Box | None:
    """Shrink a box past outer rows/columns of the gutter colour."""
    sub = g[b.y0:b.y1, b.x0:b.x1]
    if sub.size == 0:
        return None
    rows = ~_uniform_lines(sub, 1, tol, colour, dark_lines=False)
    cols = ~_uniform_lines(sub, 0, tol, colour, dark_lines=False)
    if not rows.any() or not cols.any():
        return None
    ys, xs = np.nonzero(rows)[0], np.nonzero(cols)[0]
    return _Box(b.x0 + int(xs[0]), b.y0 + int(ys[0]), b.x0 + int(xs[-1]) + 1, b.y0 + int(ys[-1]) + 1)


def _seam(g: np.ndarray, axis: int, min_frac: float, relaxed: bool = False) -> int | None:
    """Index of the last row (axis=0) or column (axis=1) before a seam, or None.

    Where two images touch, the absolute difference between one line and the
    next (its 40th percentile along the line) jumps to several times its value
    on the neighbouring lines; inside one image it changes smoothly.  With
    ``relaxed`` (inside a mosaic where one seam was already found), weaker
    jumps count, but only where a regular grid would put a seam (1/2, 1/3,
    2/3 of the length).
    """
    a = g if axis == 0 else g.T
    n, m = a.shape
    if n < 60 or m < 40:
        return None
    # d1[i]: between line i and i + 1; a low quantile, so that a drawn line
    # (a scale bar's edge) over part of the length does not count
    diff = np.abs(a[1:] - a[:-1])
    d1 = np.percentile(diff, 40, axis=1)
    q = m // 4
    dq = np.percentile(diff[:, :4 * q].reshape(n - 1, 4, q), 40, axis=2)  # per quarter
    lo = max(12, int(min_frac * n))
    best = None
    grid = [int(round(f * n)) - 1 for f in (1 / 2, 1 / 3, 2 / 3)]
    d_min, r_min = (0.03, 1.7) if relaxed else (0.07, 2.2)
    for i in range(lo - 1, n - lo - 1):
        if d1[i] < d_min or (relaxed and min(abs(i - j) for j in grid) > 3):
            continue
        nb = np.concatenate([d1[max(0, i - 12):i - 2], d1[i + 3:i + 13]])
        if nb.size < 8:
            continue
        r = float(d1[i] / (np.median(nb) + 1e-3))
        if r >= r_min and (best is None or r > best[0]):
            # the jump must hold in at least three quarters of the line
            rows = [j for j in range(max(0, i - 10), min(n - 1, i + 11)) if abs(j - i) > 2]
            near = np.median(dq[rows], axis=0)
            if int((dq[i] < 1.5 * near + 0.02).sum()) <= 1:
                best = (r, i)
    if best is None:
        return None
    k = best[1]
    top, bot = a[max(0, k - 40):k + 1], a[k + 1:k + 42]
    if not relaxed and abs(float(top.mean()) - float(bot.mean())) < 0.04 and \
            max(top.std(), bot.std()) < 1.3 * min(top.std(), bot.std()) + 1e-3:
        return None  # same brightness and texture on both sides: one image
    return k


def _jump_map(a: np.ndarray, nseg: int = 8) -> np.ndarray:
    """Per line boundary and per segment: the fraction of pixels that jump.

    ``out[k, s]`` is for the boundary between line k and k + 1, in segment s
    of the line.  A pixel jumps where the step across the boundary is well
    above the steps just before and after it: at a seam between two touching
    images most pixels jump; inside one (smooth or blurred) image an edge
    crossing the line changes over several pixels and does not.
    """
    n, m = a.shape
    out = np.zeros((n - 1, nseg))
    if n < 4 or m < nseg:
        return out
    j = np.abs(a[2:-1] - a[1:-2])
    nb = np.maximum(np.abs(a[1:-2] - a[:-3]), np.abs(a[3:] - a[2:-1]))
    jump = j > 2 * nb + 0.012
    q = m // nseg
    out[1:-1] = jump[:, :nseg * q].reshape(jump.shape[0], nseg, q).mean(axis=2)
    return out


def _grid_seam(g: np.ndarray, axis: int, relaxed: bool = False) -> int | None:
    """A seam at a regular-grid position (1/2, 1/3, 2/3), or None.

    Weaker than :func:`_seam`'s jump but consistent: most pixels along most
    of the line jump (see :func:`_jump_map`), and the lines around it do not
    (an image upscaled by pixel repetition jumps every few lines).
    """
    a = g if axis == 0 else g.T
    n, m = a.shape
    if n < 60 or m < 40:
        return None
    jm = _jump_map(a)
    mean = jm.mean(axis=1)
    best = None
    for f in (1 / 2, 1 / 3, 2 / 3):
        c = int(round(f * n)) - 1
        for k in range(c - 2, c + 3):
            if k < 14 or k > n - 16:
                continue
            around = np.concatenate([mean[k - 12:k - 2], mean[k + 3:k + 13]])
            bg = float(np.percentile(around, 90))
            s = float(mean[k])
            cons = int((jm[k] >= (0.1 if relaxed else 0.15)).sum())
            ok = (cons >= (6 if relaxed else 7) and s >= (0.2 if relaxed else 0.3)
                  and s >= (2 * bg + 0.04 if relaxed else 3 * bg + 0.05))
            if ok and (best is None or s > best[0]) and not _continues(a, k):
                best = (s, k)
    return None if best is None else best[1]


def _corr(u: np.ndarray, v: np.ndarray) -> float:
    u = u - u.mean()
    v = v - v.mean()
    d = float(np.sqrt((u * u).sum() * (v * v).sum()))
    return float((u * v).sum()) / d if d > 1e-9 else 0.0


def _continues(a: np.ndarray, k: int, d: int = 5) -> bool:
    """True when the image content runs on across the boundary after line k.

    Lines ``d`` apart on one side of a seam are correlated; across a seam
    between two images they are not.  A line artefact in one micrograph (a
    stitching or upscaling step) has its structures run straight across.
    """
    cross, within = _cross_within(a, k, d)
    return cross >= 0.45 and cross > within - 0.2


def _cross_within(a: np.ndarray, k: int, d: int = 5) -> tuple[float, float]:
    n = a.shape[0]
    lo, hi = k - 2, k + 3  # lines d apart across the boundary (after line k)
    if lo - d < 0 or hi + d >= n:
        return 0.0, 1.0
    cross = _corr(a[lo], a[hi])
    within = min(_corr(a[lo - d], a[lo]), _corr(a[hi], a[hi + d]))
    return cross, within


def _seam_candidates(sub: np.ndarray, in_mosaic: bool):
    """(axis, k) seams to try: strong jumps first, then regular-grid seams."""
    for axis in (0, 1):
        k = _seam(sub, axis, 0.2, relaxed=in_mosaic)
        if k is not None:
            yield axis, k
    for axis in (0, 1):
        k = _grid_seam(sub, axis, relaxed=in_mosaic)
        if k is not None:
            yield axis, k


def _xy_cut(g: np.ndarray, box: _Box, *, tol: float, min_gutter: int, min_side: int,
            depth: int = 0, seams: bool = True, colour: float = 1.0,
            in_mosaic: bool = False) -> list[_Box]:
    b = _trim(g, box, tol, colour)
    if b is None:
        return []
    if depth > 12 or (b.w < 2 * min_side and b.h < 2 * min_side):
        return [b]
    sub = g[b.y0:b.y1, b.x0:b.x1]
    for axis in (1, 0):  # rows first, then columns
        gut = _uniform_lines(sub, axis, tol, colour, dark_lines=False)
        dark = _uniform_lines(sub, axis, tol, colour) & ~gut
        # black lines separate panels only as thin rules (frames); a wider
        # black band is the background of a dark micrograph
        for s_, e_ in _bands(dark):
            if e_ - s_ > 4:
                dark[s_:e_] = False
        flags = gut | dark
        bands = [(s, e) for s, e in _bands(flags) if e - s >= min_gutter]
        if not bands:
            continue
        cuts, prev = [], 0
        for s, e in bands:
            cuts.append((prev, s))
            prev = e
        cuts.append((prev, flags.size))
        cuts = [(s, e) for s, e in cuts if e > s]
        if len(cuts) < 2:
            continue
        out: list[_Box] = []
        for s, e in cuts:
            child = (_Box(b.x0, b.y0 + s, b.x1, b.y0 + e) if axis == 1
                     else _Box(b.x0 + s, b.y0, b.x0 + e, b.y1))
            out.extend(_xy_cut(g, child, tol=tol, min_gutter=min_gutter, min_side=min_side,
                               depth=depth + 1, seams=seams, colour=colour))
        return out
    if seams:
        for axis, k in _seam_candidates(sub, in_mosaic):
            if axis == 0:
                parts = [_Box(b.x0, b.y0, b.x1, b.y0 + k + 1), _Box(b.x0, b.y0 + k + 1, b.x1, b.y1)]
            else:
                parts = [_Box(b.x0, b.y0, b.x0 + k + 1, b.y1), _Box(b.x0 + k + 1, b.y0, b.x1, b.y1)]
            # only micrographs touch without a gutter; drawings have straight lines
            if any(_kind_grey(g[p.y0:p.y1, p.x0:p.x1]) != "micrograph" for p in parts):
                continue
            out = []
            for p in parts:
                out.extend(_xy_cut(g, p, tol=tol, min_gutter=min_gutter, min_side=min_side,
                                   depth=depth + 1, seams=seams, colour=colour, in_mosaic=True))
            return out
    return [b]


def _frame_line(line: np.ndarray, tol: float) -> bool:
    """A flat black or white line (a drawn frame), not a flat grey image row."""
    lo, hi = float(line.min()), float(line.max())
    return hi - lo <= tol and (hi <= 0.2 or lo >= 0.85)


def _strip_frame(g: np.ndarray, b: _Box, max_px: int = 4, tol: float = 0.12) -> _Box:
    """Remove up to ``max_px`` flat black or white outer lines (a drawn frame) from each side."""
    x0, y0, x1, y1 = b.t()
    for _ in range(max_px):
        changed = False
        if y1 - y0 > 8 and _frame_line(g[y0, x0:x1], tol):
            y0 += 1
            changed = True
        if y1 - y0 > 8 and _frame_line(g[y1 - 1, x0:x1], tol):
            y1 -= 1
            changed = True
        if x1 - x0 > 8 and _frame_line(g[y0:y1, x0], tol):
            x0 += 1
            changed = True
        if x1 - x0 > 8 and _frame_line(g[y0:y1, x1 - 1], tol):
            x1 -= 1
            changed = True
        if not changed:
            break
    return _Box(x0, y0, x1, y1)


def panel_boxes(figure, *, min_gutter_px: int = 2, min_panel_frac: float = 0.2,
                tol: float = 0.1, seams: bool = True) -> tuple[list[tuple], list[tuple]]:
    """Panel boxes and the small leftover boxes (labels, stray text) of a figure.

    Parameters
    ----------
    figure : (M, N) or (M, N, 3) ndarray, or Figure
    min_gutter_px : int
        Thinnest gutter or frame line that separates panels.
    min_panel_frac : float
        A box smaller than this fraction of the figure's shorter side (in
        both directions) is not a panel.
    tol : float
        Grey-level range (0..1) of a uniform row or column.
    seams : bool
        Also cut where panels touch without a gutter.

    Returns
    -------
    panels : list of (x0, y0, x1, y1)
    small : list of (x0, y0, x1, y1)

    Examples
    --------
    >>> img = np.full((100, 210), 255, np.uint8)
    >>> img[5:95, 5:100] = 90; img[5:95, 110:205] = 160
    >>> panel_boxes(img)[0]
    [(5, 5, 100, 95), (110, 5, 205, 95)]
    """
    arr = np.asarray(getattr(figure, "image", figure))
    g = to_grey01(arr)
    h, w = g.shape
    min_side = max(12, int(min_panel_frac * min(h, w)))
    colour = _gutter_colour(g)
    # a micrograph on a blank (saturated) background falls apart into many
    # pieces along its blank lines: ask for wider gutters, then give up cutting
    for gutter in (min_gutter_px, max(min_gutter_px, 6), max(min_gutter_px, 12)):
        leaves = _xy_cut(g, _Box(0, 0, w, h), tol=tol, min_gutter=gutter,
                         min_side=min_side, seams=seams, colour=colour)
        if len(leaves) <= _MAX_LEAVES:
            break
    else:
        t = _trim(g, _Box(0, 0, w, h), tol, colour) or _Box(0, 0, w, h)
        return [t.t()], []
    big = [b for b in leaves if b.w >= min_side and b.h >= min_side and b.area >= 0.015 * h * w]
    small = [b for b in leaves if b not in big]
    if len(big) > 1 and sum(_object_like(g, b, colour, tol) for b in big) >= 0.5 * len(big):
        big = []  # particles on a blank background, not panels: one micrograph
    if not big:  # nothing panel-sized: the whole figure is one panel
        t = _trim(g, _Box(0, 0, w, h), tol, colour) or _Box(0, 0, w, h)
        return [t.t()], []
    # merge small leaves that belong to a panel (axis titles, tick labels, a
    # scale bar in a banner): agglomerate, nearest pair first, so that the
    # pieces of one chart join each other before anything crosses a gutter.
    # Small, compact leaves at a panel's top-left are its label.
    labels: list[_Box] = []
    small = [s for s in small if not (_label_of(big, s) is not None and not labels.append(s))]
    is_mic = {id(b): classify_panel(arr[b.y0:b.y1, b.x0:b.x1]) == "micrograph" for b in big}
    items = [(b, True) for b in big] + [(s, False) for s in small]
    while True:
        pairs = []
        for i, (s, s_big) in enumerate(items):
            if s_big:
                continue
            for j, (o, _) in enumerate(items):
                if i != j:
                    gap = _gap(s, o)
                    if gap is not None:
                        pairs.append((gap, i, j))
        pairs.sort()
        done = False
        for gap, i, j in pairs:  # the nearest pair that may merge
            s, _ = items[i]
            o, o_big = items[j]
            limit = max(30, 0.25 * min(o.w, o.h)) if o_big else max(30, 2 * max(s.h, s.w))
            if o_big and is_mic.get(id(o), False):
                limit = 12  # a banner or data strip sits right under its micrograph
            if gap > limit:
                continue
            if (o_big and s.w <= 60 and s.h <= 60 and 0.2 <= s.w / max(s.h, 1) <= 4.0
                    and s.y1 <= o.y0 + 2 and s.x0 < o.x0 + 0.3 * o.w):
                labels.append(s)  # a letter above a panel's top-left: its label
                items.pop(i)
                done = True
                break
            merged = _Box(min(o.x0, s.x0), min(o.y0, s.y0), max(o.x1, s.x1), max(o.y1, s.y1))
            if any(k not in (i, j) and kb and _inter(merged, ob) > 0 for k, (ob, kb) in enumerate(items)):
                continue
            o.x0, o.y0, o.x1, o.y1 = merged.t()
            items.pop(i)
            done = True
            break
        if not done:
            break
    big = [b for b, is_big in items if is_big]
    big = [_strip_frame(g, b) for b in big]
    big.sort(key=lambda b: (b.y0, b.x0))
    big = _reading_order(big)
    return [b.t() for b in big], [b.t() for b in labels]


def _object_like(g: np.ndarray, b: _Box, colour: float, tol: float) -> bool:
    """True when the box's outer ring is mostly the gutter colour: an object
    cut out of a blank background, not a rectangular image."""
    sub = g[b.y0:b.y1, b.x0:b.x1]
    if sub.shape[0] < 6 or sub.shape[1] < 6:
        return False
    ring = np.concatenate([sub[:2].ravel(), sub[-2:].ravel(), sub[:, :2].ravel(), sub[:, -2:].ravel()])
    return float((np.abs(ring - colour) <= tol).mean()) > 0.6 and _kind_grey(sub) == "micrograph"


def _gap(a: _Box, b: _Box) -> float | None:
    """Gap between two boxes that overlap in the other direction (None if they do not)."""
    ox = min(a.x1, b.x1) - max(a.x0, b.x0)
    oy = min(a.y1, b.y1) - max(a.y0, b.y0)
    if ox > 0.3 * min(a.w, b.w) or (ox > 0 and oy <= 0):
        return float(max(0, b.y0 - a.y1, a.y0 - b.y1)) if oy <= 0 else 0.0
    if oy > 0.3 * min(a.h, b.h) or oy > 0:
        return float(max(0, b.x0 - a.x1, a.x0 - b.x1))
    return None


def _label_of(big: list[_Box], s: _Box) -> _Box | None:
    """The panel whose letter the small box ``s`` is (just above or left of its top-left)."""
    if not (s.w <= 60 and s.h <= 60 and 0.2 <= s.w / max(s.h, 1) <= 4.0):
        return None
    for p in big:
        above = 0 <= p.y0 - s.y1 <= 30 and abs(s.x0 - p.x0) <= max(12, 0.15 * p.w)
        left = 0 <= p.x0 - s.x1 <= 30 and abs(s.y0 - p.y0) <= max(12, 0.15 * p.h)
        if above or left:
            return p
    return None


def _inter(a: _Box, b: _Box) -> int:
    return max(0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0, min(a.y1, b.y1) - max(a.y0, b.y0))


def _nearest(big: list[_Box], s: _Box) -> tuple[_Box, float] | None:
    best = None
    for b in big:
        dx = max(0, b.x0 - s.x1, s.x0 - b.x1)
        dy = max(0, b.y0 - s.y1, s.y0 - b.y1)
        # prefer neighbours that overlap in the other direction
        ox = min(b.x1, s.x1) - max(b.x0, s.x0)
        oy = min(b.y1, s.y1) - max(b.y0, s.y0)
        if ox <= 0 and oy <= 0:
            d = dx + dy + 1000
        else:
            d = dx + dy
        if best is None or d < best[1]:
            best = (b, d)
    return best


def _reading_order(boxes: list[_Box]) -> list[_Box]:
    """Rows top to bottom (boxes whose vertical centres fall in one row), then left to right."""
    rows: list[list[_Box]] = []
    for b in sorted(boxes, key=lambda b: b.y0):
        for r in rows:
            ref = r[0]
            if min(ref.y1, b.y1) - max(ref.y0, b.y0) > 0.5 * min(ref.h, b.h):
                r.append(b)
                break
        else:
            rows.append([b])
    return [b for r in rows for b in sorted(r, key=lambda b: b.x0)]


# --------------------------------------------------------------------------- kinds

def classify_panel(image: np.ndarray) -> str:
    """``"micrograph"``, ``"chart"`` or ``"other"`` for one panel.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray

    Returns
    -------
    str

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> classify_panel((rng.random((64, 64)) * 255).astype(np.uint8))
    'micrograph'
    >>> classify_panel(np.full((64, 64), 255, np.uint8))
    'other'
    """
    arr = np.asarray(image)
    g = to_grey01(arr)
    sat = saturation(arr)
    if float((sat > 0.25).mean()) > 0.2 and not _has_axes(g):
        return "other"
    return _kind_grey(g)


def _kind_grey(g: np.ndarray) -> str:
    """Kind from the grey image alone (see :func:`classify_panel`)."""
    h, w = g.shape
    if h < 8 or w < 8:
        return "other"
    q = np.clip(np.rint(g * 255), 0, 255).astype(np.int32)
    hist = np.bincount(q.ravel(), minlength=256)
    mode = int(np.argmax(hist))
    flat = float(hist[max(0, mode - 2):mode + 3].sum()) / q.size
    extreme_bg = mode >= 230 or mode <= 25
    axes = _has_axes(g)
    if axes and flat > 0.35 and extreme_bg:
        return "chart"
    if flat > 0.45 and extreme_bg:
        return "other"
    if flat > 0.75:
        return "other"  # a drawing on a flat coloured background
    # few grey levels and large flat areas: a drawing
    levels = int((hist > 0.001 * q.size).sum())
    if levels < 12:
        return "other"
    return "micrograph"


def _has_axes(g: np.ndarray) -> bool:
    """A long dark horizontal line in the lower part and a long vertical one on the left."""
    h, w = g.shape
    dark = g < 0.5
    rows = dark.mean(axis=1)
    cols = dark.mean(axis=0)
    horiz = np.nonzero(rows[h // 3:] > 0.55)[0]
    vert = np.nonzero(cols[: 2 * w // 3] > 0.55)[0]
    return bool(horiz.size and vert.size)


# --------------------------------------------------------------------------- labels

def _clean_label(text: str) -> str | None:
    t = text.strip().replace(" ", "")
    m = _LABEL_RE.match(t)
    if not m:
        return None
    return m.group(1) + m.group(2)


def _read_label(engine, g: np.ndarray, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    crop = g[y0:y1, x0:x1]
    if crop.size == 0 or engine is None:
        return ""
    from .ocr import dark_on_light

    img = dark_on_light(np.clip(np.rint(crop * 255), 0, 255).astype(np.uint8))
    try:
        text, score = engine.read_line(img)
    except Exception as err:  # OCR failure: no label, not a lost figure
        logger.warning("OCR engine %s failed on a panel label: %s", engine.name, err)
        return ""
    lab = _clean_label(text)
    return lab if lab and score >= 0.5 else ""


def _inside_label_box(g: np.ndarray, b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """Box of a letter printed in a panel's top-left corner, or None."""
    from scipy import ndimage as ndi

    x0, y0, x1, y1 = b
    cw = min(x1 - x0, max(24, int(0.22 * (x1 - x0))), 90)
    ch = min(y1 - y0, max(20, int(0.2 * (y1 - y0))), 70)
    corner = g[y0:y0 + ch, x0:x0 + cw]
    best = None
    for ink in (corner < 0.2, corner > 0.85):
        lab, n = ndi.label(ink, structure=np.ones((3, 3), bool))
        if n == 0 or n > 60:
            continue
        boxes = []
        for s in ndi.find_objects(lab):
            hh, ww = s[0].stop - s[0].start, s[1].stop - s[1].start
            if 6 <= hh <= 0.8 * ch and ww <= 2.5 * hh + 4 and s[0].start < 0.6 * ch:
                boxes.append((s[1].start, s[0].start, s[1].stop, s[0].stop))
        if not boxes:
            continue
        # the glyphs nearest the corner, on one line
        boxes.sort(key=lambda t: t[0] + t[1])
        ref = boxes[0]
        line = [t for t in boxes if min(t[3], ref[3]) - max(t[1], ref[1]) > 0.5 * (ref[3] - ref[1])
                and t[0] - ref[2] < 2 * (ref[3] - ref[1])]
        bx0 = min(t[0] for t in line)
        by0 = min(t[1] for t in line)
        bx1 = max(t[2] for t in line)
        by1 = max(t[3] for t in line)
        if bx1 - bx0 > 4 * (by1 - by0) + 4:
            continue
        cand = (x0 + max(0, bx0 - 3), y0 + max(0, by0 - 3), x0 + min(cw, bx1 + 3), y0 + min(ch, by1 + 3))
        if best is None or (bx0 + by0) < best[0]:
            best = (bx0 + by0, cand)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- API

def split_panels(figure, *, ocr=None, read_labels: bool = True, min_gutter_px: int = 2,
                 min_panel_frac: float = 0.2, seams: bool = True) -> list[Panel]:
    """Cut a compound figure into panels.

    Parameters
    ----------
    figure : Figure or (M, N) / (M, N, 3) ndarray
    ocr : str, OCREngine or None
        Engine for panel labels (see :func:`imageextract.figures.ocr.get_engine`);
        ``"none"`` skips label reading.
    read_labels : bool
        Read panel letters ("a", "(b)", "C") where present.
    min_gutter_px, min_panel_frac : see :func:`panel_boxes`
    seams : bool
        Also split panels that touch without a gutter.

    Returns
    -------
    list of Panel
        In reading order; one panel (the whole image, margins trimmed) for a
        single micrograph.

    Raises
    ------
    ValueError
        ``figure`` is not an image.

    Examples
    --------
    >>> from imageextract.figures.synthetic import compose_figure, micrograph_texture
    >>> rng = np.random.default_rng(0)
    >>> mics = [(micrograph_texture(rng, (120, 150)) * 255).astype(np.uint8) for _ in range(2)]
    >>> img, truth = compose_figure(seed=4, panels=mics, kinds=["micrograph"] * 2,
    ...                             layout=(1, 2), gutter="white")
    >>> [p.bbox for p in split_panels(img, read_labels=False)] == [t["bbox"] for t in truth]
    True
    """
    if isinstance(figure, Figure):
        arr, doi, fid = figure.image, figure.doi, figure.figure_id
    else:
        arr, doi, fid = np.asarray(figure), "", ""
    if arr.ndim not in (2, 3) or arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"expected an (M, N) or (M, N, 3) figure of at least 8x8, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    boxes, small = panel_boxes(arr, min_gutter_px=min_gutter_px,
                               min_panel_frac=min_panel_frac, seams=seams)
    g = to_grey01(arr)
    engine = None
    if read_labels and ocr != "none":
        from .ocr import get_engine

        engine = get_engine(ocr)
    panels = []
    for i, b in enumerate(boxes):
        x0, y0, x1, y1 = b
        img = np.ascontiguousarray(arr[y0:y1, x0:x1])
        kind = classify_panel(img)
        label = ""
        if engine is not None:
            outside = [s for s in small if _label_of([_Box(*b)], _Box(*s)) is not None]
            outside.sort(key=lambda s: abs(s[0] - x0) + abs(s[3] - y0))
            if outside:
                label = _read_label(engine, g, outside[0])
                if label:
                    small.remove(outside[0])
            if not label:
                lb = _inside_label_box(g, b)
                if lb is not None:
                    label = _read_label(engine, g, lb)
        panels.append(Panel(image=img, doi=doi, figure_id=fid, label=label, bbox=b,
                            kind=kind, index=i))  # type: ignore[arg-type]
    return panels
