"""Read scale bars: find the bar, read its label, return nm per pixel.

Steps, for each polarity (dark bar on a light background and the reverse):

1. **Bar candidates.**  Threshold at two levels; collect horizontal runs of
   at least ``min_bar_px`` pixels; stack runs that start and end at the same
   columns on consecutive rows.  A stack is a candidate when it is thin
   (thickness ≤ a third of its length), uniform and in contrast with the rows
   just above and below it (end ticks are allowed).
2. **Label.**  Around each candidate, pixels of the bar's colour are grouped
   into glyphs and text lines; the lines nearest the bar (below, above, left,
   right) are cropped, normalised to dark-on-light, read by the OCR engine
   (:mod:`imageextract.figures.ocr`) and parsed
   (:func:`~imageextract.figures.units.parse_scale_text`).
3. **Length.**  The bar length is measured with sub-pixel care: on each inner
   row of the bar, the partial coverage of the end pixels is
   ``(g - background) / (bar - background)``, with the background taken on
   each side separately; the median over rows is the length.

The best labelled bar wins (OCR × parse × bar-quality confidence; the lowest
bar on ties).  A bar that has no readable label is kept by
:func:`find_scale_bars` so that :func:`calibrate_panels` can borrow the label
of a sibling panel whose bar has the same length.

Importing this module is cheap: OCR engines load on first use, and when none
is installed :func:`read_scale_bar` logs a warning and returns None.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..types import Calibration
from ._image import to_grey01
from .units import NM_PER_UNIT, ScaleText, _nice, find_scale_texts

logger = logging.getLogger(__name__)

_UNIT_ONLY = re.compile(r"(nm|[uμµ]m|Å)\s*$", re.IGNORECASE)

#: Bar candidates examined per image, best first (:func:`find_scale_bars`
#: looks for a label beside each; :func:`drawn_scale_bars` checks each is flat).
MAX_BAR_CANDIDATES = 8

__all__ = ["ScaleBarReading", "read_scale_bar", "find_scale_bars", "calibrate_panels",
           "scale_bar_details"]


@dataclass(frozen=True)
class ScaleBarReading:
    """One scale bar found in an image.

    Parameters
    ----------
    bar_px : float
        Bar length in pixels (sub-pixel estimate).
    bar_box : (x0, y0, x1, y1) floats
        Box of the bar, exclusive right/bottom edges.
    polarity : {"dark", "light"}
        Bar darker or lighter than its surroundings.
    value, unit : float or None, str or None
        The label, when one was read (unit is ``"nm"``, ``"um"``, ``"mm"`` or ``"A"``).
    text : str
        OCR text of the label ("" when none).
    text_box : (x0, y0, x1, y1) or None
        Box of the label.
    confidence : float
        0..1 for the whole reading (bar quality × OCR × parse).
    bar_quality : float
        0..1, how bar-like the bar is (contrast, straightness, uniformity).
    touches_border : bool
        The bar reaches the left or right image edge (its length may be cut).
    """

    bar_px: float
    bar_box: tuple[float, float, float, float]
    polarity: str
    value: float | None = None
    unit: str | None = None
    text: str = ""
    text_box: tuple[int, int, int, int] | None = None
    confidence: float = 0.0
    bar_quality: float = 0.0
    touches_border: bool = False

    @property
    def labelled(self) -> bool:
        """True when a value and unit were read."""
        return self.value is not None and self.unit is not None

    @property
    def length_nm(self) -> float | None:
        """The labelled length in nm (None when unlabelled)."""
        if not self.labelled:
            return None
        return float(self.value) * NM_PER_UNIT[str(self.unit)]

    @property
    def nm_per_px(self) -> float | None:
        """Pixel size in nm (None when unlabelled)."""
        ln = self.length_nm
        return None if ln is None or self.bar_px <= 0 else ln / self.bar_px

    def calibration(self, *, source: str = "scalebar") -> Calibration:
        """This reading as a :class:`~imageextract.types.Calibration`."""
        return Calibration(nm_per_px=self.nm_per_px, source=source,  # type: ignore[arg-type]
                           confidence=round(float(self.confidence), 4), text=self.text,
                           bar_px=round(float(self.bar_px), 3), bar_box=self.bar_box)


@dataclass
class _Bar:
    x0: int          # first column (inclusive)
    x1: int          # last column (inclusive)
    y0: int          # first row (inclusive)
    y1: int          # last row (inclusive)
    polarity: str
    level: float     # grey level of the bar
    background: float
    quality: float
    sides: tuple[float, ...] = ()  # grey level just above and just below

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def thickness(self) -> int:
        return self.y1 - self.y0 + 1


# --------------------------------------------------------------------------- bars

def _runs(mask: np.ndarray, min_len: int, max_len: int):
    """Horizontal runs of True: arrays (row, start, end_exclusive)."""
    pad = np.zeros((mask.shape[0], 1), bool)
    d = np.diff(np.hstack([pad, mask, pad]).astype(np.int8), axis=1)
    sr, sc = np.nonzero(d == 1)
    er, ec = np.nonzero(d == -1)
    ln = ec - sc
    keep = (ln >= min_len) & (ln <= max_len)
    return sr[keep], sc[keep], ec[keep]


def _stack_runs(rows, starts, ends, tol: int = 2):
    """Group runs on consecutive rows with matching ends → list of (x0, x1, y0, y1)."""
    groups: list[list[int]] = []  # [ref x0, ref x1 (excl), y0, y1, n, min x0, max x1]
    active: list[list[int]] = []
    cur_row = -10
    new_active: list[list[int]] = []
    order = np.lexsort((starts, rows))
    for i in order:
        r, s, e = int(rows[i]), int(starts[i]), int(ends[i])
        if r != cur_row:
            active = new_active if r == cur_row + 1 else []
            new_active = []
            cur_row = r
        hit = None
        for g in active:
            if abs(g[0] - s) <= tol and abs(g[1] - e) <= tol:
                hit = g
                break
        if hit is not None:
            active.remove(hit)
            hit[3] = r
            hit[4] += 1
            hit[5] = min(hit[5], s)
            hit[6] = max(hit[6], e)
            new_active.append(hit)
        else:
            g = [s, e, r, r, 1, s, e]
            groups.append(g)
            new_active.append(g)
    return [(g[5], g[6] - 1, g[2], g[3]) for g in groups]


def _bar_candidates(g: np.ndarray, *, min_bar_px: int, max_frac: float = 0.8) -> list[_Bar]:
    h, w = g.shape
    out: list[_Bar] = []
    max_len = int(max_frac * w)
    for polarity, levels in (("dark", (0.22, 0.42)), ("light", (0.78, 0.58))):
        for t in levels:
            mask = g <= t if polarity == "dark" else g >= t
            rows, starts, ends = _runs(mask, min_bar_px, max_len)
            if rows.size == 0 or rows.size > 20000:
                continue
            cs = np.zeros((h, w + 1), np.int32)
            np.cumsum(mask, axis=1, out=cs[:, 1:])
            for x0, x1, y0, y1 in _stack_runs(rows, starts, ends):
                width, thick = x1 - x0 + 1, y1 - y0 + 1
                if thick > max(2, width / 3.0):
                    continue
                # cheap test first: the rows two off the bar must be mostly background
                busy = False
                for yy in (y0 - 2, y1 + 2):
                    if 0 <= yy < h and (cs[yy, x1 + 1] - cs[yy, x0]) > 0.5 * width:
                        busy = True
                if busy:
                    continue
                bar = _check_bar(g, mask, x0, x1, y0, y1, polarity)
                if bar is not None:
                    out.append(bar)
    # de-duplicate (two thresholds find the same bar): keep the better one
    out.sort(key=lambda b: -b.quality)
    kept: list[_Bar] = []
    for b in out:
        if any(_overlap(b, k) for k in kept):
            continue
        kept.append(b)
    return kept


def _overlap(a: _Bar, b: _Bar) -> bool:
    if a.polarity != b.polarity:
        return False
    ix = min(a.x1, b.x1) - max(a.x0, b.x0) + 1
    iy = min(a.y1, b.y1) - max(a.y0, b.y0) + 1
    return ix > 0.5 * min(a.width, b.width) and iy > -2


def _check_bar(g, mask, x0, x1, y0, y1, polarity) -> _Bar | None:
    h, w = g.shape
    width, thick = x1 - x0 + 1, y1 - y0 + 1
    if thick > max(2, width / 3.0) or thick > 0.12 * h + 2:
        return None
    body = g[y0:y1 + 1, x0:x1 + 1]
    level = float(np.median(body))
    spread = float(np.percentile(body, 90) - np.percentile(body, 10)) if thick > 2 else float(body.std())
    if spread > 0.35:
        return None
    # rows just outside the bar, away from the end ticks
    m = max(2, int(0.15 * width))
    xa, xb = x0 + m, x1 - m + 1
    if xb - xa < 3:
        xa, xb = x0, x1 + 1
    sides = []      # grey levels of the two rows just above, and just below
    fill_out = []
    for rows_ in ((y0 - 3, y0 - 2), (y1 + 2, y1 + 3)):
        vals = [g[yy, xa:xb] for yy in rows_ if 0 <= yy < h]
        if vals:
            sides.append(float(np.median(np.concatenate(vals))))
    for yy in (y0 - 2, y1 + 2):  # one row off: the row next to the bar may be anti-aliased
        if 0 <= yy < h:
            fill_out.append(float(mask[yy, xa:xb].mean()))
    if not sides:
        return None
    sign = 1.0 if polarity == "dark" else -1.0
    contrast = min(sign * (sv - level) for sv in sides)
    bg = float(np.mean(sides))
    if contrast < 0.18:
        return None
    if fill_out and max(fill_out) > 0.5:
        return None
    # ends: just past each end, on the bar rows, the background must come back
    ends_ok = 0
    for xx in (x0 - 2, x1 + 2):
        if 0 <= xx < w:
            col = g[y0:y1 + 1, xx]
            c = (float(np.median(col)) - level) if polarity == "dark" else (level - float(np.median(col)))
            ends_ok += c > 0.5 * contrast
        else:
            ends_ok += 1
    if ends_ok < 2:
        return None
    straight = 1.0 - min(1.0, spread / 0.35)
    quality = float(np.clip(contrast / 0.5, 0, 1) * (0.6 + 0.4 * straight)
                    * (1.0 - 0.5 * (max(fill_out) if fill_out else 0.0)))
    return _Bar(int(x0), int(x1), int(y0), int(y1), polarity, level, bg, quality, tuple(sides))


def _has_ticks(g: np.ndarray, bar: _Bar) -> bool:
    """True when bar-coloured pixels stand above or below either end of the bar."""
    h, w = g.shape
    mid = 0.5 * (bar.level + bar.background)
    for yy in (bar.y0 - 2, bar.y1 + 2):
        if not 0 <= yy < h:
            continue
        for xa, xb in ((bar.x0 - 1, bar.x0 + 3), (bar.x1 - 2, bar.x1 + 2)):
            seg = g[yy, max(0, xa):min(w, xb)]
            if seg.size and ((seg < mid).any() if bar.polarity == "dark" else (seg > mid).any()):
                return True
    return False


def _subpixel_length(g: np.ndarray, bar: _Bar) -> float:
    """Bar length from partial coverage of the end pixels, median over inner rows."""
    h, w = g.shape
    rows = list(range(bar.y0, bar.y1 + 1))
    if bar.thickness <= 2 and not _has_ticks(g, bar):
        # thin lines: the anti-aliased rows next to them help too
        rows = [r for r in (bar.y0 - 1, *rows, bar.y1 + 1) if 0 <= r < h]
    lengths: list[float] = []
    weights: list[float] = []
    k = 4
    a, b = bar.x0, bar.x1
    if b - a < 2 * k + 4:
        k = max(1, (b - a) // 4)
    for r in rows:
        row = g[r].astype(np.float64)
        inner = row[a + k:b - k + 1]
        f = float(inner.mean())  # this row's own bar level (edge rows are partial)
        lo, hi = max(0, a - k), min(w, b + k + 1)
        lb = row[max(0, lo - 4):lo]
        rb = row[hi:min(w, hi + 4)]
        bg_l = float(np.median(lb)) if lb.size else bar.background
        bg_r = float(np.median(rb)) if rb.size else bar.background
        if abs(f - bg_l) < 0.05 or abs(f - bg_r) < 0.05:
            continue
        # interior pixels count as 1; the end windows by their partial coverage
        if abs(f - 0.5 * (bg_l + bg_r)) < 0.3 * abs(bar.level - bar.background):
            continue  # a row that the bar barely touches
        cl = np.clip((row[lo:a + k] - bg_l) / (f - bg_l), -0.5, 1.5).sum()
        cr = np.clip((row[b - k + 1:hi] - bg_r) / (f - bg_r), -0.5, 1.5).sum()
        lengths.append(float(inner.size + cl + cr))
        weights.append(abs(f - 0.5 * (bg_l + bg_r)))
    if not lengths:
        return float(bar.width)
    if len(lengths) >= 5:
        return float(np.median(lengths))
    return float(np.average(lengths, weights=weights))


# --------------------------------------------------------------------------- text

def _text_lines(win: np.ndarray, *, hmax: int, grey: np.ndarray | None = None,
                bg: float | tuple[float, ...] = 0.0, contrast: float = 1.0):
    """Glyph-like components of a boolean window grouped into text lines.

    With ``grey``, a glyph must sit on the label background: the median of the
    non-ink pixels around it must be within ``0.35 * contrast`` of ``bg`` (or
    of one of several background levels; texture blobs on a grey micrograph
    are not).

    Returns a list of (x0, y0, x1, y1, n_glyphs) boxes (exclusive ends) in
    window coordinates.
    """
    lab, n = ndi.label(win, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    sl = ndi.find_objects(lab)
    areas = ndi.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    glyphs = []
    for i, s in enumerate(sl):
        if s is None:
            continue
        gh = s[0].stop - s[0].start
        gw = s[1].stop - s[1].start
        if gh < 3 or gh > hmax or gw > max(4 * gh, 8) + 2 or areas[i] < 4:
            continue
        if areas[i] > 0.9 * gh * gw and gh > 4 and gw > 4:
            continue  # solid block, not a glyph
        if grey is not None:
            ys0, ys1 = max(0, s[0].start - 2), s[0].stop + 2
            xs0, xs1 = max(0, s[1].start - 2), s[1].stop + 2
            around = grey[ys0:ys1, xs0:xs1][~win[ys0:ys1, xs0:xs1]]
            bgs = bg if isinstance(bg, tuple) else (bg,)
            if around.size and min(abs(float(np.median(around)) - b) for b in bgs) > 0.45 * abs(contrast):
                continue
        glyphs.append((s[1].start, s[0].start, s[1].stop, s[0].stop))
    if not glyphs:
        return []
    # greedy left-to-right line building against each line's running box, so
    # that a line cannot drift up or down through texture
    glyphs.sort()
    lines: list[list] = []  # [x0, y0, x1, y1, heights]
    for gx0, gy0, gx1, gy1 in glyphs:
        gh = gy1 - gy0
        best, best_gap = None, None
        for ln in lines:
            lx0, ly0, lx1, ly1, hs = ln
            mh = float(np.median(hs))
            ov = min(ly1, gy1) - max(ly0, gy0)
            gap = gx0 - lx1
            if ov < 0.5 * min(gh, ly1 - ly0) or not (-2 <= gap <= 1.2 * max(mh, gh) + 1):
                continue
            if max(mh, gh) > 2.6 * min(mh, gh):
                continue
            if max(ly1, gy1) - min(ly0, gy0) > 1.8 * max(mh, gh) + 2:
                continue
            if best is None or gap < best_gap:
                best, best_gap = ln, gap
        if best is None:
            lines.append([gx0, gy0, gx1, gy1, [gh]])
        else:
            best[0], best[1] = min(best[0], gx0), min(best[1], gy0)
            best[2], best[3] = max(best[2], gx1), max(best[3], gy1)
            best[4].append(gh)
    boxes = [(ln[0], ln[1], ln[2], ln[3], len(ln[4])) for ln in lines]
    return boxes


def _label_candidates(g: np.ndarray, bar: _Bar, *, polarity: str):
    """Text lines near ``bar`` that may be its label, best first.

    Returns ``(candidates, ink, origin, text_level, background)``:
    candidates are ``(rank, (x0, y0, x1, y1))`` in image coordinates (lower
    rank first), ``ink`` the boolean text mask of the search window whose
    top-left corner is ``origin``.
    """
    h, w = g.shape
    hmax = int(np.clip(max(0.1 * min(h, w), 36, 0.2 * bar.width), 14, 120))  # tallest label, px
    span = max(bar.width, 5 * hmax)
    wx0, wx1 = max(0, bar.x0 - span), min(w, bar.x1 + 1 + span)
    wy0, wy1 = max(0, bar.y0 - int(2.2 * hmax)), min(h, bar.y1 + 1 + int(2.2 * hmax))
    win = g[wy0:wy1, wx0:wx1]
    # text normally has the bar's colour; on a banner it may have the other one
    bg = bar.background
    text_level = bar.level if polarity == bar.polarity else 1.0 - bar.level
    # pixels at least ~40 % covered by ink count (thin strokes of small text)
    thr = bg + 0.4 * (text_level - bg)
    ink = win <= thr if polarity == "dark" else win >= thr
    # remove the bar and its end ticks from the ink (by geometry: a glyph that
    # touches the bar must survive)
    ink = ink.copy()
    if polarity == bar.polarity:
        ry0, ry1 = max(0, bar.y0 - wy0 - 1), bar.y1 - wy0 + 2
        rx0, rx1 = max(0, bar.x0 - wx0 - 1), bar.x1 - wx0 + 2
        ink[ry0:ry1, rx0:rx1] = False
        lab, n = ndi.label(ink, structure=np.ones((3, 3), bool))
        if n:
            for i, sl in enumerate(ndi.find_objects(lab), start=1):
                if sl is None:
                    continue
                cy0, cy1, cx0, cx1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
                near_end = ((abs(cx0 - rx0) <= 4 or abs(cx1 - rx1) <= 4)
                            and cx1 - cx0 <= max(6, bar.thickness + 4))
                touching = cy1 >= ry0 - 1 and cy0 <= ry1 + 1
                if near_end and touching and cy1 - cy0 <= 3 * (ry1 - ry0) + 16:
                    ink[sl][lab[sl] == i] = False
    lines = _text_lines(ink, hmax=hmax, grey=win, bg=tuple(bar.sides) or bg, contrast=text_level - bg)
    cands = []
    bx0, bx1 = bar.x0 - wx0, bar.x1 - wx0 + 1
    by0, by1 = bar.y0 - wy0, bar.y1 - wy0 + 1
    singles = []  # lone glyphs: not a label alone, but maybe its number ("2" of "2 µm")
    for x0, y0, x1, y1, n_glyph in lines:
        lh = y1 - y0
        lone = n_glyph < 2 and (x1 - x0) < 1.2 * lh
        dx = max(0, bx0 - x1, x0 - bx1)
        dy = max(0, by0 - y1, y0 - by1)
        beside = dx > 0 and dy == 0 or (dx > 0 and min(y1, by1) - max(y0, by0) > -0.5 * lh)
        if dy > 0:
            if dy > 1.6 * lh + 6 or dx > max(lh, 0.5 * (bx1 - bx0)):
                continue
            dist = dy + 0.5 * dx
        elif beside:
            if dx > 3.5 * lh + 6:
                continue
            dist = dx + 0.3 * lh
        else:
            dist = 0.0  # overlapping the bar box (text inside a thick bar)
        # rank: distance in line heights, and how text-like the line is
        rank = dist / max(lh, 4) + (1.0 if n_glyph < 3 else 0.0) + (0.7 if lh < 6 else 0.0)
        (singles if lone else cands).append((rank, (x0 + wx0, y0 + wy0, x1 + wx0, y1 + wy0)))
    # a label split into two lines ("20" and "µm") is also tried as one
    extra = []
    pool = cands + singles
    for i, (d1, b1) in enumerate(pool):
        for d2, b2 in pool[i + 1:]:
            lh = max(b1[3] - b1[1], b2[3] - b2[1])
            ov = min(b1[3], b2[3]) - max(b1[1], b2[1])
            gap = max(b2[0] - b1[2], b1[0] - b2[2])
            if ov > 0.4 * lh and 0 <= gap <= 2.5 * lh:
                extra.append((max(d1, d2) + 0.3, (min(b1[0], b2[0]), min(b1[1], b2[1]),
                                                  max(b1[2], b2[2]), max(b1[3], b2[3]))))
    cands = sorted(cands + extra, key=lambda c: c[0])
    return cands, ink, (wx0, wy0), text_level, bg


def _crop_for_ocr(g: np.ndarray, box, *, text_level: float, bg: float,
                  ink_bar_free: np.ndarray | None = None, origin=(0, 0)) -> np.ndarray:
    """Crop a text box, stretched to black text on white (uint8)."""
    h, w = g.shape
    x0, y0, x1, y1 = box
    lh = y1 - y0
    p = max(2, int(round(0.25 * lh)))
    cx0, cy0, cx1, cy1 = max(0, x0 - p), max(0, y0 - p), min(w, x1 + p), min(h, y1 + p)
    crop = g[cy0:cy1, cx0:cx1].astype(np.float32)
    den = bg - text_level
    if abs(den) < 0.05:
        den = 0.05 if den >= 0 else -0.05
    norm = np.clip((crop - text_level) / den, 0.0, 1.0)
    if ink_bar_free is not None:
        # blank pixels of the bar colour that are not text (the bar itself, specks)
        ox, oy = origin
        sub = ink_bar_free[cy0 - oy:cy1 - oy, cx0 - ox:cx1 - ox]
        if sub.shape == norm.shape:
            inside = np.zeros_like(sub)
            inside[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = True
            norm = np.where((norm < 0.5) & ~sub & ~inside, 1.0, norm)
    return np.clip(np.rint(norm * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- API

def _as_image(image) -> np.ndarray:
    arr = getattr(image, "image", image)  # Panel, Figure or Micrograph
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"expected an (M, N) or (M, N, 3) image of at least 8x8, "
                         f"got shape {arr.shape}")
    return arr


def find_scale_bars(image, *, ocr=None, min_bar_px: int | None = None,
                    max_candidates: int = MAX_BAR_CANDIDATES,
                    max_ocr_calls: int = 14) -> list[ScaleBarReading]:
    """Every scale bar in an image, labelled ones first.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray, or an object with an ``image`` array
        Panel, micrograph or figure.
    ocr : str, OCREngine or None
        Engine name (``"rapidocr"``, ``"tesseract"``, ``"auto"``) or object; None
        picks the default (:func:`imageextract.figures.ocr.get_engine`);
        ``"none"`` skips reading labels.  When no engine is installed, bars
        are still found but none is labelled.
    min_bar_px : int, optional
        Shortest bar considered (default: 1 % of the width, at least 10 px).
    max_candidates : int
        Bar candidates for which a label is looked for.
    max_ocr_calls : int
        Upper bound on OCR calls per image.

    Returns
    -------
    list of ScaleBarReading
        Best first: labelled bars by confidence, then unlabelled bars by quality.

    Examples
    --------
    >>> from imageextract.figures.synthetic import render_scale_bar
    >>> img, truth = render_scale_bar(seed=0)
    >>> bars = find_scale_bars(img, ocr="none")
    >>> abs(bars[0].bar_px - truth["bar_px"]) < 0.05 * truth["bar_px"]
    True
    """
    return _readings(to_grey01(_as_image(image)), ocr=ocr, min_bar_px=min_bar_px,
                     max_candidates=max_candidates, max_ocr_calls=max_ocr_calls)


def _readings(g: np.ndarray, *, ocr, min_bar_px: int | None, max_candidates: int,
              max_ocr_calls: int) -> list[ScaleBarReading]:
    """:func:`find_scale_bars` of the grey image ``g`` (``to_grey01``)."""
    from .ocr import get_engine

    h, w = g.shape
    if min_bar_px is None:
        min_bar_px = max(10, int(0.01 * w))
    engine = None if ocr == "none" else get_engine(ocr)
    bars = _bar_candidates(g, min_bar_px=int(min_bar_px))
    bars.sort(key=lambda b: -(b.quality + 0.15 * (b.y0 / h) + 0.2 * min(1.0, b.width / 100)))
    bars = bars[:max_candidates]
    readings: list[ScaleBarReading] = []
    calls = 0
    for bar in bars:
        length = _subpixel_length(g, bar)
        touches = bar.x0 <= 0 or bar.x1 >= w - 1
        base = ScaleBarReading(
            bar_px=length,
            bar_box=(float(bar.x0), float(bar.y0), float(bar.x1 + 1), float(bar.y1 + 1)),
            polarity=bar.polarity, bar_quality=round(bar.quality, 4),
            touches_border=touches, confidence=0.0)
        best: tuple[float, ScaleText, tuple, str, float] | None = None
        if engine is not None and calls < max_ocr_calls:
            for pol in (bar.polarity, "light" if bar.polarity == "dark" else "dark"):
                cands, ink, origin, text_level, bg = _label_candidates(g, bar, polarity=pol)
                for dist, box in cands[:5]:
                    if calls >= max_ocr_calls:
                        break
                    if bar.width < 1.5 * (box[3] - box[1]):
                        continue  # a stroke of a letter, not a bar: bars outsize their label
                    crop = _crop_for_ocr(g, box, text_level=text_level, bg=bg,
                                         ink_bar_free=ink, origin=origin)
                    calls += 1
                    try:
                        text, score = engine.read_line(crop)
                    except Exception as err:  # an engine failure must not lose the image
                        logger.warning("OCR engine %s failed: %s", engine.name, err)
                        text, score = "", 0.0
                    parsed = find_scale_texts(text)
                    if not parsed and _UNIT_ONLY.search(text) and calls < max_ocr_calls:
                        # a unit without its number ("nm", "00 nm"): the digits
                        # sit on a darker patch and were not taken as glyphs;
                        # read a crop that reaches further left and right
                        lh = box[3] - box[1]
                        wide = (max(0, int(box[0] - 3 * lh)), box[1],
                                min(g.shape[1], int(box[2] + lh)), box[3])
                        calls += 1
                        t2, s2 = engine.read_line(_crop_for_ocr(g, wide, text_level=text_level, bg=bg))
                        p2 = find_scale_texts(t2)
                        if p2:
                            text, score, parsed, box = t2, s2 * 0.95, p2, wide
                    if parsed and not _nice(parsed[0].value) and calls < max_ocr_calls:
                        # an odd value ("8.2 µm") is often a misread: read a
                        # larger copy and keep a round value if that gives one
                        calls += 1
                        t2, s2 = engine.read_line(np.kron(crop, np.ones((2, 2), np.uint8)))
                        p2 = find_scale_texts(t2)
                        if p2 and _nice(p2[0].value):
                            text, score, parsed = t2, s2, p2
                    if not parsed:
                        continue
                    prox = 1.0 / (1.0 + max(0.0, dist - 1.0) / 2.0)
                    c = float(score) * parsed[0].confidence * prox
                    if pol != bar.polarity:
                        c *= 0.75  # text and bar usually share a colour
                    if best is None or c > best[0]:
                        best = (c, parsed[0], box, text, score)
                    if c > 0.6:
                        break
                if best is not None:
                    break
        if best is not None:
            c, st, box, text, score = best
            conf = float(np.clip(c * (0.7 + 0.3 * bar.quality) * (0.5 if touches else 1.0), 0, 1))
            readings.append(replace(base, value=st.value, unit=st.unit, text=text.strip(),
                                    text_box=tuple(int(v) for v in box),
                                    confidence=round(conf, 4)))
        else:
            readings.append(base)
    readings.sort(key=lambda r: (not r.labelled, -r.confidence, -r.bar_quality, -r.bar_box[1]))
    return readings


def drawn_scale_bars(image, *, min_flat: float = 0.5, tolerance: float = 2.5 / 255,
                     min_bar_px: int | None = None) -> list[tuple[float, float, float, float]]:
    """Boxes of the scale bars drawn on an image (not imaged with it).

    A bar of :func:`find_scale_bars` (no OCR: labels are not read) counts
    as drawn when at least ``min_flat`` of the pixels inside it (its outer
    rows and columns left out: they may be anti-aliased) lie within
    ``tolerance`` of their median grey level.  A rendered bar is flat; a
    rod or an edge of the specimen that looks like a bar carries the
    micrograph's noise and texture.  A segmentation backend uses these
    boxes to drop a bar it took for a particle.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray, or an object with an ``image`` array
    min_flat : float
        Smallest fraction of flat inner pixels, in [0, 1].
    tolerance : float
        Grey-level distance from the median that counts as flat, the image
        scaled to [0, 1] (the default: two grey levels of an 8-bit image).
    min_bar_px : int, optional
        Shortest bar considered (as in :func:`find_scale_bars`).

    Returns
    -------
    list of (x0, y0, x1, y1)
        Boxes with exclusive right and bottom edges, as
        :attr:`ScaleBarReading.bar_box`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(0.6, 0.04, (96, 128)).clip(0, 1)
    >>> img[80:86, 20:90] = 0.0  # a drawn bar
    >>> img[30:36, 20:90] = rng.normal(0.1, 0.02, (6, 70))  # a dark rod, imaged
    >>> len(find_scale_bars((img * 255).astype(np.uint8), ocr="none"))  # both look like bars
    2
    >>> drawn_scale_bars((img * 255).astype(np.uint8))
    [(20.0, 80.0, 90.0, 86.0)]
    """
    if not 0.0 <= min_flat <= 1.0:
        raise ValueError(f"min_flat must be in [0, 1], got {min_flat!r}")
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    g = to_grey01(_as_image(image))
    boxes = []
    for r in _readings(g, ocr="none", min_bar_px=min_bar_px,
                       max_candidates=MAX_BAR_CANDIDATES, max_ocr_calls=0):
        x0, y0, x1, y1 = (int(round(v)) for v in r.bar_box)
        body = g[y0:y1, x0:x1]
        if min(body.shape) > 2:
            body = body[1:-1, 1:-1]
        if body.size and np.mean(np.abs(body - np.median(body)) <= tolerance) >= min_flat:
            boxes.append(r.bar_box)
    return boxes


def read_scale_bar(image, *, ocr=None, min_confidence: float = 0.2,
                   min_bar_px: int | None = None) -> Calibration | None:
    """Calibration of a micrograph or panel from its scale bar.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) ndarray, or an object with an ``image`` array
    ocr : str, OCREngine or None
        OCR engine (default: rapidocr when installed, else tesseract).
    min_confidence : float
        Readings below this confidence are not returned.
    min_bar_px : int, optional
        Shortest bar considered.

    Returns
    -------
    Calibration or None
        ``source="scalebar"`` with ``text``, ``bar_px`` and ``bar_box`` set;
        None when no labelled bar is found (never raises for that).

    Examples
    --------
    >>> from imageextract.figures.synthetic import render_scale_bar
    >>> img, truth = render_scale_bar(seed=3)
    >>> cal = read_scale_bar(img)
    >>> cal is None or abs(cal.nm_per_px / truth["nm_per_px"] - 1) < 0.05
    True
    """
    r = scale_bar_details(image, ocr=ocr, min_confidence=min_confidence, min_bar_px=min_bar_px)
    return None if r is None else r.calibration()


def scale_bar_details(image, *, ocr=None, min_confidence: float = 0.2,
                      min_bar_px: int | None = None) -> ScaleBarReading | None:
    """Like :func:`read_scale_bar` but returns the full :class:`ScaleBarReading`.

    >>> scale_bar_details(np.full((64, 64), 128, np.uint8)) is None
    True
    """
    for r in find_scale_bars(image, ocr=ocr, min_bar_px=min_bar_px):
        if r.labelled and r.confidence >= min_confidence and (r.nm_per_px or 0) > 0:
            return r
    return None


def calibrate_panels(panels: Sequence, *, ocr=None, rel_tol: float = 0.02,
                     min_confidence: float = 0.2) -> list[Calibration | None]:
    """Calibrate each panel of a figure, borrowing labels between siblings.

    A panel whose bar has no readable label takes the label of a sibling
    panel whose labelled bar has the same length (within ``rel_tol``, at
    least 1.5 px); its calibration then has ``source="sibling"`` and a lower
    confidence.  Panels that are not micrographs (``kind`` other than
    ``"micrograph"``) get None.

    Parameters
    ----------
    panels : sequence of Panel (or of images)
    ocr : str, OCREngine or None
    rel_tol : float
        Relative bar-length tolerance for the sibling rule.
    min_confidence : float

    Returns
    -------
    list of Calibration or None, one per panel

    Examples
    --------
    >>> calibrate_panels([])
    []
    """
    readings: list[list[ScaleBarReading] | None] = []
    for p in panels:
        if getattr(p, "kind", "micrograph") != "micrograph":
            readings.append(None)
            continue
        try:
            readings.append(find_scale_bars(p, ocr=ocr))
        except ValueError as err:
            logger.warning("panel %s: %s", getattr(p, "index", "?"), err)
            readings.append(None)
    own: list[ScaleBarReading | None] = []
    for rs in readings:
        best = None
        for r in rs or []:
            if r.labelled and r.confidence >= min_confidence:
                best = r
                break
        own.append(best)
    donors = [r for r in own if r is not None and not r.touches_border]
    out: list[Calibration | None] = []
    for rs, mine in zip(readings, own):
        if mine is not None:
            out.append(mine.calibration())
            continue
        cal = None
        for r in rs or []:  # unlabelled bars, best quality first
            if r.labelled or r.touches_border or r.bar_quality < 0.3:
                continue
            tol = max(1.5, rel_tol * r.bar_px)
            matches = [d for d in donors if abs(d.bar_px - r.bar_px) <= tol]
            if not matches:
                continue
            values = {round(d.length_nm or 0, 6) for d in matches}
            if len(values) > 1:
                logger.info("unlabelled bar of %.1f px matches siblings with different labels; "
                            "not calibrated", r.bar_px)
                continue
            d = min(matches, key=lambda d: abs(d.bar_px - r.bar_px))
            cal = Calibration(nm_per_px=(d.length_nm or 0) / r.bar_px, source="sibling",
                              confidence=round(0.8 * d.confidence * min(1.0, r.bar_quality + 0.3), 4),
                              text=d.text, bar_px=round(r.bar_px, 3), bar_box=r.bar_box)
            break
        out.append(cal)
    return out

