"""Synthetic scale bars and compound figures with known ground truth.

Used by the tests, the doctests and ``benchmarks/bench_figures.py``.  Text is
drawn with the DejaVu and STIX fonts that ship inside matplotlib, so the same
seed gives the same image on every machine.

:func:`render_scale_bar` returns ``(image, truth)`` with ``truth`` holding
``value``, ``unit`` (``nm``/``um``/``mm``/``A``), ``text``, ``bar_px`` (exact,
sub-pixel), ``bar_box`` and ``nm_per_px``.  :func:`compose_figure` returns
``(image, truth)`` with one entry per panel: ``bbox`` (x0, y0, x1, y1),
``kind`` and ``label``.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

__all__ = ["render_scale_bar", "compose_figure", "micrograph_texture", "chart_image",
           "font_paths", "text_image"]

_FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf",
               "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf",
               "STIXGeneralBol.ttf", "DejaVuSans-Oblique.ttf")
_VALUES = {"nm": (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 300, 500, 0.5, 2.5, 1.5),
           "um": (0.1, 0.2, 0.25, 0.5, 1, 1.5, 2, 2.5, 5, 10, 20, 50, 100, 0.3),
           "mm": (0.1, 0.5, 1, 2, 5),
           "A": (2, 5, 10, 20, 50, 100)}
_SPELLINGS = {"nm": ("nm",), "um": ("\u00b5m", "\u03bcm", "um"), "mm": ("mm",), "A": ("\u00c5",)}
_UNIT_P = (("nm", 0.45), ("um", 0.35), ("A", 0.12), ("mm", 0.08))
_NM = {"nm": 1.0, "um": 1000.0, "mm": 1e6, "A": 0.1}


@lru_cache(maxsize=None)
def font_paths() -> tuple[str, ...]:
    """Paths of the TrueType fonts used for labels (shipped with matplotlib)."""
    import matplotlib

    d = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    return tuple(os.path.join(d, f) for f in _FONT_FILES if os.path.isfile(os.path.join(d, f)))


@lru_cache(maxsize=256)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def text_image(text: str, *, font_path: str, size: int, pad: int = 2) -> np.ndarray:
    """``text`` set in the font at ``font_path`` (one of :func:`font_paths`)
    at ``size`` px: ink coverage in [0, 1], (H, W) float32, with ``pad`` px
    of empty margin on every side.

    >>> m = text_image("50 nm", font_path=font_paths()[0], size=14)
    >>> m.dtype.name, float(m.max()), float(m[0].max())
    ('float32', 1.0, 0.0)
    """
    return _text_mask(text, _font(font_path, int(size)), pad=pad)


def micrograph_texture(rng: np.random.Generator, shape: tuple[int, int], *,
                       style: str | None = None,
                       keep_clear: tuple[float, float, float, float] | None = None,
                       bar_light: bool | None = None) -> np.ndarray:
    """A micrograph-like float image in [0, 1]: particles or SEM-like texture.

    ``keep_clear`` (x0, y0, x1, y1) is a box that particles avoid (where a
    scale bar will be drawn, as authors place bars on empty background);
    ``bar_light`` picks a background that contrasts with a light (True) or
    dark (False) bar.

    >>> micrograph_texture(np.random.default_rng(0), (32, 48)).shape
    (32, 48)
    """
    h, w = shape
    style = style or rng.choice(["tem", "tem", "sem", "grain"])
    if style == "tem":
        bg = rng.uniform(0.45, 0.8) if bar_light is None else (
            rng.uniform(0.3, 0.62) if bar_light else rng.uniform(0.5, 0.85))
        img = np.full(shape, bg, np.float32)
        n = int(rng.integers(5, 40))
        r = rng.uniform(0.02, 0.08) * min(h, w)
        yy, xx = np.ogrid[:h, :w]
        dark = rng.random() < 0.8
        for _ in range(n):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            rr = r * rng.uniform(0.6, 1.4)
            if keep_clear is not None:
                kx0, ky0, kx1, ky1 = keep_clear
                if kx0 - rr - 3 < cx < kx1 + rr + 3 and ky0 - rr - 3 < cy < ky1 + rr + 3:
                    continue
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= rr * rr
            img[m] = bg - rng.uniform(0.25, 0.4) if dark else bg + rng.uniform(0.15, 0.2)
        img = ndi.gaussian_filter(img, 1.0)
    elif style == "sem":
        base = ndi.gaussian_filter(rng.normal(0, 1, shape), rng.uniform(4, 12))
        base = (base - base.min()) / (np.ptp(base) + 1e-9)
        img = 0.1 + 0.5 * base
        if (rng.random() < 0.5) if bar_light is None else not bar_light:
            img = 1.0 - img
    else:
        base = ndi.gaussian_filter(rng.normal(0, 1, shape), 2.0)
        img = 0.3 + 0.4 * (base > 0) + 0.05 * base
    img = img + rng.normal(0, rng.uniform(0.01, 0.05), shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _text_mask(text: str, font, pad: int = 2) -> np.ndarray:
    from PIL import Image, ImageDraw

    l, t, r, b = font.getbbox(text)
    im = Image.new("L", (r - l + 2 * pad, b - t + 2 * pad), 0)
    ImageDraw.Draw(im).text((pad - l, pad - t), text, font=font, fill=255)
    return np.asarray(im, dtype=np.float32) / 255.0


def _paste(img: np.ndarray, cov: np.ndarray, x: int, y: int, colour: float) -> None:
    h, w = img.shape
    ch, cw = cov.shape
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(w, x + cw), min(h, y + ch)
    if x1 <= x0 or y1 <= y0:
        return
    c = cov[y0 - y:y1 - y, x0 - x:x1 - x]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - c) + colour * c


def _paste_rgb(canvas: np.ndarray, cov: np.ndarray, x: int, y: int, colour: float) -> None:
    for k in range(canvas.shape[2]):
        ch = canvas[..., k].astype(np.float32) / 255.0
        _paste(ch, cov, x, y, colour)
        canvas[..., k] = np.rint(ch * 255).astype(np.uint8)


def _bar_cov(h: int, w: int, x0: float, x1: float, y0: float, y1: float, ss: int = 8) -> np.ndarray:
    """Exact-area coverage of the rectangle [x0, x1) × [y0, y1) on an (h, w) grid."""
    def axis(n, a, b):
        e = np.arange(n + 1, dtype=np.float64)
        return np.clip(np.minimum(e[1:], b) - np.maximum(e[:-1], a), 0, 1)
    return np.outer(axis(h, y0, y1), axis(w, x0, x1)).astype(np.float32)


def _format_value(v: float, rng) -> str:
    if float(v).is_integer():
        s = str(int(v))
        if v < 10 and rng.random() < 0.1:
            s = f"{v:.1f}"   # "2.0 µm"
        return s
    s = f"{v:g}"
    if rng.random() < 0.15:
        s = s.replace(".", ",")  # decimal comma
    return s


def render_scale_bar(seed: int = 0, *, shape: tuple[int, int] | None = None,
                     style: str | None = None, unit: str | None = None,
                     text_px: int | None = None, jpeg: bool | None = None,
                     with_text: bool = True) -> tuple[np.ndarray, dict]:
    """A synthetic micrograph with one scale bar and its ground truth.

    Parameters
    ----------
    seed : int
    shape : (M, N), optional
        Micrograph size before any banner is added.
    style : {"overlay", "box", "banner", "strip", "ticks"}, optional
        Bar drawn on the image, in a box on the image, in a banner under the
        image, in an instrument data strip, or as a thin line with end ticks.
    unit : {"nm", "um", "mm", "A"}, optional
    text_px : int, optional
        Font size in pixels (8–24 by default).
    jpeg : bool, optional
        Pass the image through JPEG compression.
    with_text : bool
        False draws the bar alone (for the sibling rule).

    Returns
    -------
    image : (M', N) ndarray of uint8
    truth : dict
        ``value, unit, text, bar_px, bar_box, nm_per_px, style``.

    Examples
    --------
    >>> img, truth = render_scale_bar(seed=1)
    >>> img.dtype, truth["unit"] in ("nm", "um", "mm", "A")
    (dtype('uint8'), True)
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    if shape is None:
        h = int(rng.integers(320, 760))
        shape = (h, int(h * rng.uniform(0.9, 1.5)))
    h, w = shape
    style = style or str(rng.choice(["overlay", "overlay", "box", "banner", "strip", "ticks"],
                                     p=[0.3, 0.1, 0.2, 0.2, 0.1, 0.1]))
    if unit is None:
        unit = str(rng.choice([u for u, _ in _UNIT_P], p=[p for _, p in _UNIT_P]))
    value = float(rng.choice(_VALUES[unit]))
    spelled = str(rng.choice(_SPELLINGS[unit]))
    sep = " " if rng.random() < 0.8 else ""
    text = f"{_format_value(value, rng)}{sep}{spelled}"
    size = int(text_px or rng.integers(8, 25))
    font = _font(str(rng.choice(font_paths())), size)
    tm = _text_mask(text, font)
    bar_len = float(rng.uniform(max(30.0, tm.shape[1] * 0.5), max(60.0, 0.4 * w)))
    thick = float(rng.uniform(2.0, max(3.0, size * 0.45)))
    light = bool(rng.random() < 0.5)
    ink = 1.0 if light else 0.0
    bg_col = 1.0 - ink
    margin = int(rng.integers(8, 30))
    right = rng.random() < 0.7
    ticks = False
    span = max(bar_len, tm.shape[1])
    if style in ("banner", "strip"):
        img = micrograph_texture(rng, (h, w))
        bh = int(max(tm.shape[0] + thick + 18, 0.08 * h))
        band = np.full((bh, w), bg_col if style == "banner" else 0.0, np.float32)
        if style == "strip":
            ink, bg_col, right = 1.0, 0.0, True
            info = f"EHT = {rng.integers(2, 30)}.00 kV  WD = {rng.uniform(3, 12):.1f} mm"
            im = _text_mask(info, _font(font_paths()[0], max(8, min(size, 14) - 2)))
            im = im[:, : max(1, int(w - span - margin - 30))]
            _paste(band, im, 6, max(0, (bh - im.shape[0]) // 2), 1.0)
            ticks = rng.random() < 0.5
        img = np.vstack([img, band])
        y_bar = float(h + 5 + (tm.shape[0] + 2 if rng.random() < 0.5 else 0))
        x_bar = float(w - margin - span if right else margin + 2) + rng.random()
    else:
        y_bar = float(h - margin - thick - (tm.shape[0] + 4)) + rng.random()
        x_bar = float(w - margin - span if right else margin) + rng.random()
        if style == "ticks":
            thick = float(rng.uniform(1.0, 2.5))
            ticks = True
        clear = (x_bar - 6, y_bar - tm.shape[0] - 10, x_bar + span + 6, y_bar + thick + tm.shape[0] + 10)
        tex = "grain" if style == "box" and rng.random() < 0.3 else str(rng.choice(["tem", "tem", "sem"]))
        img = micrograph_texture(rng, (h, w), style=tex, keep_clear=clear, bar_light=light)
    H = img.shape[0]
    text_below = rng.random() < 0.6
    y0, y1 = y_bar, y_bar + thick
    x0, x1 = x_bar, x_bar + bar_len
    tx = int(round((x0 + x1) / 2 - tm.shape[1] / 2))
    if style == "strip" and rng.random() < 0.5 and x0 - tm.shape[1] - 8 > w * 0.6:
        tx = int(x0 - tm.shape[1] - 6)          # label left of the bar
        ty = int(round((y0 + y1) / 2 - tm.shape[0] / 2))
    elif text_below or style in ("banner", "strip"):
        ty = int(np.ceil(y1)) + int(rng.integers(2, 5))
        if ty + tm.shape[0] > H:
            ty = int(y0) - tm.shape[0] - 3
    else:
        ty = int(y0) - tm.shape[0] - int(rng.integers(2, 5))
    tx = int(np.clip(tx, 0, w - tm.shape[1]))
    if style == "box":
        bx0 = int(min(x0, tx)) - 7
        bx1 = int(max(x1, tx + tm.shape[1])) + 8
        by0 = int(min(y0, ty)) - 6
        by1 = int(max(y1, ty + tm.shape[0])) + 7
        img[max(0, by0):by1, max(0, bx0):bx1] = bg_col
    cov = _bar_cov(H, w, x0, x1, y0, y1)
    if ticks:
        tick_h = float(rng.uniform(4, 9))
        tw = max(1.0, thick)
        cov = np.maximum(cov, _bar_cov(H, w, x0, x0 + tw, y0 - tick_h / 2, y1 + tick_h / 2))
        cov = np.maximum(cov, _bar_cov(H, w, x1 - tw, x1, y0 - tick_h / 2, y1 + tick_h / 2))
    img = img * (1 - cov) + ink * cov
    tx = int(np.clip(tx, 0, w - tm.shape[1]))
    if with_text:
        _paste(img, tm, tx, ty, ink)
    noise = float(rng.uniform(0.0, 0.03))
    img = img + rng.normal(0, noise, img.shape)
    out = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    use_jpeg = (rng.random() < 0.35) if jpeg is None else jpeg
    if use_jpeg:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=int(rng.integers(45, 92)))
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    truth = {"value": value, "unit": unit, "text": text, "bar_px": x1 - x0,
             "bar_box": (x0, y0, x1, y1), "nm_per_px": value * _NM[unit] / (x1 - x0),
             "style": style, "text_px": size, "jpeg": bool(use_jpeg), "light": light}
    return out, truth


# --------------------------------------------------------------------------- figures

def chart_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A plot (line, histogram or spectrum) rendered with matplotlib, RGB uint8.

    >>> chart_image(np.random.default_rng(0), (120, 160)).shape
    (120, 160, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    h, w = size
    dpi = 100
    fig = MplFigure(figsize=(w / dpi, h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    kind = rng.choice(["hist", "line", "spectrum", "scatter"])
    fs = float(rng.uniform(6, 9))
    if kind == "hist":
        ax.hist(rng.lognormal(3, 0.3, 300), bins=int(rng.integers(8, 25)),
                color=str(rng.choice(["grey", "tab:blue", "black", "tab:red"])))
        ax.set_xlabel("Diameter (nm)", fontsize=fs)
        ax.set_ylabel("Count", fontsize=fs)
    elif kind == "line":
        x = np.linspace(0, 10, 100)
        for k in range(int(rng.integers(1, 4))):
            ax.plot(x, np.sin(x * rng.uniform(0.3, 1.5)) + k, lw=1.2)
        ax.set_xlabel("Time (h)", fontsize=fs)
        ax.set_ylabel("Absorbance", fontsize=fs)
    elif kind == "spectrum":
        x = np.linspace(10, 80, 400)
        y = sum(np.exp(-((x - c) / 0.4) ** 2) * rng.uniform(0.2, 1) for c in rng.uniform(20, 75, 6))
        ax.plot(x, y + rng.normal(0, 0.01, x.size), color="black", lw=0.8)
        ax.set_xlabel("2θ (degree)", fontsize=fs)
        ax.set_ylabel("Intensity (a.u.)", fontsize=fs)
    else:
        ax.scatter(rng.uniform(0, 1, 40), rng.uniform(0, 1, 40), s=8)
        ax.set_xlabel("x", fontsize=fs)
    ax.tick_params(labelsize=fs)
    fig.tight_layout(pad=0.3)
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return arr


def _scheme_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A schematic: coloured shapes and arrows on white, RGB uint8."""
    from PIL import Image, ImageDraw

    h, w = size
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    card = tuple(int(c) for c in rng.integers(205, 236, 3))
    d.rectangle([0, 0, w - 1, h - 1], fill=card, outline=(0, 0, 0), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(3, 8))):
        x, y = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
        r = rng.uniform(0.05, 0.2) * min(h, w)
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x, y, x + r, y + r], fill=col, outline=(0, 0, 0))
        else:
            d.rectangle([x, y, x + r * 1.5, y + r], fill=col, outline=(0, 0, 0))
    for _ in range(2):
        y = rng.uniform(0.2, 0.8) * h
        d.line([w * 0.2, y, w * 0.8, y], fill=(0, 0, 0), width=2)
        d.polygon([(w * 0.8, y - 5), (w * 0.8 + 10, y), (w * 0.8, y + 5)], fill=(0, 0, 0))
    return np.asarray(im)


def _label_text(rng, i: int) -> str:
    c = "abcdefghijkl"[i]
    style = rng.integers(0, 4)
    return [c, f"({c})", c.upper(), f"{c})"][style]


def compose_figure(seed: int = 0, *, panels: list[np.ndarray] | None = None,
                   kinds: list[str] | None = None, layout: tuple[int, int] | None = None,
                   gutter: str | None = None,
                   cell_px: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """A compound figure with known panel boxes.

    Parameters
    ----------
    seed : int
    panels : list of ndarray, optional
        Panel images to place (grey or RGB uint8); generated when None.
    kinds : list of str, optional
        Kind of each given panel.
    layout : (rows, cols), optional
    gutter : {"white", "black", "border", "touch"}, optional
        White or black gutters, thin black frame lines, or panels touching.
    cell_px : int, optional
        Panel height in pixels (random 180–320 by default).

    Returns
    -------
    image : (M, N, 3) ndarray of uint8
    truth : list of dict
        Per panel: ``bbox`` (x0, y0, x1, y1), ``kind``, ``label`` ("" when none).

    Examples
    --------
    >>> img, truth = compose_figure(seed=2)
    >>> img.ndim, len(truth) >= 2
    (3, True)
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    if layout is None:
        layout = tuple(int(v) for v in rng.choice([(1, 2), (2, 2), (2, 3), (1, 3), (3, 2), (2, 1)]))
    rows, cols = layout
    n = rows * cols
    gutter = gutter or str(rng.choice(["white", "white", "black", "border", "touch"]))
    cell = int(rng.integers(180, 320))
    if cell_px:
        cell = int(cell_px)
    aspect = float(rng.uniform(0.75, 1.35))
    cw, ch = int(cell * aspect), cell
    if panels is None:
        kinds = []
        panels = []
        for i in range(n):
            k = str(rng.choice(["micrograph", "micrograph", "micrograph", "chart", "other"]))
            if gutter == "touch":
                k = "micrograph"  # touching panels are micrograph mosaics
            kinds.append(k)
            if k == "micrograph":
                img, _ = render_scale_bar(int(rng.integers(1 << 30)), shape=(ch, cw),
                                          style=str(rng.choice(["overlay", "box"])), jpeg=False)
                panels.append(img)
            elif k == "chart":
                panels.append(chart_image(rng, (ch, cw)))
            else:
                panels.append(_scheme_image(rng, (ch, cw)))
    kinds = list(kinds or ["micrograph"] * len(panels))
    g = {"white": int(rng.integers(6, 24)), "black": int(rng.integers(4, 16)),
         "border": int(rng.integers(4, 14)), "touch": 0}[gutter]
    fill = 0 if gutter == "black" else 255
    outside_labels = gutter in ("white",) and rng.random() < 0.5
    top = 22 if outside_labels else 0
    H = rows * (ch + top) + (rows + 1) * g
    W = cols * cw + (cols + 1) * g
    canvas = np.full((H, W, 3), fill, np.uint8)
    truth = []
    for i, p in enumerate(panels[:n]):
        r, c = divmod(i, cols)
        p = np.asarray(p)
        if p.dtype != np.uint8:
            from ._image import to_grey01
            p = np.clip(np.rint(to_grey01(p) * 255), 0, 255).astype(np.uint8)
        src_w = int(p.shape[1])
        if p.ndim == 2:
            p = np.repeat(p[..., None], 3, axis=2)
        if p.shape[:2] != (ch, cw):
            p = np.asarray(Image.fromarray(p).resize((cw, ch), Image.Resampling.BILINEAR))
        x0 = g + c * (cw + g)
        y0 = g + r * (ch + top + g) + top
        canvas[y0:y0 + ch, x0:x0 + cw] = p
        if gutter == "border":
            canvas[y0 - 2:y0, x0 - 2:x0 + cw + 2] = 0
            canvas[y0 + ch:y0 + ch + 2, x0 - 2:x0 + cw + 2] = 0
            canvas[y0 - 2:y0 + ch + 2, x0 - 2:x0] = 0
            canvas[y0 - 2:y0 + ch + 2, x0 + cw:x0 + cw + 2] = 0
        label = _label_text(rng, i) if rng.random() < 0.85 else ""
        if label:
            size = int(rng.integers(13, 20))
            fnt = _font(str(rng.choice(font_paths()[:4])), size)
            tm = _text_mask(label, fnt)
            if outside_labels:
                lx, ly = x0, y0 - tm.shape[0] - 3
                col = 0.0
            else:
                lx, ly = x0 + 4, y0 + 4
                if kinds[i] != "micrograph" or rng.random() < 0.5:
                    canvas[ly - 2:ly + tm.shape[0] + 2, lx - 2:lx + tm.shape[1] + 2] = 255
                    col = 0.0
                else:
                    col = 1.0 if p[..., 0].mean() < 128 else 0.0
            _paste_rgb(canvas, tm, lx, ly, col)
        if kinds[i] == "micrograph" and rng.random() < 0.25:
            # an inset in the top-right corner, framed
            iw, ih = cw // 3, ch // 3
            ins = (micrograph_texture(rng, (ih, iw)) * 255).astype(np.uint8)
            ix, iy = x0 + cw - iw - 6, y0 + 6
            canvas[iy - 2:iy + ih + 2, ix - 2:ix + iw + 2] = 255
            canvas[iy:iy + ih, ix:ix + iw] = ins[..., None]
        bbox = (int(x0), int(y0), int(x0 + cw), int(y0 + ch))
        if kinds[i] == "chart":  # a plot's box is its content (axes, ticks, titles)
            cell = canvas[y0:y0 + ch, x0:x0 + cw].min(axis=2) < 235
            if label and not outside_labels:
                cell[:tm.shape[0] + 6, :tm.shape[1] + 8] = False
            ys, xs = np.nonzero(cell)
            if ys.size:
                bbox = (int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max() + 1),
                        int(y0 + ys.max() + 1))
        truth.append({"bbox": bbox, "kind": kinds[i], "label": label, "src_w": src_w})
    return canvas, truth
