"""Learned outline refinement of the ``bpartis`` backend's particles.

The network's seed map is computed at the working scale, where a particle is
about 48 px across; its outlines are therefore blurred by the zoom back to the
native image, and they follow the seed map's 0.5 level, which training pushes
slightly inside the particle.  The image itself usually shows where the edge
is.  This module re-decides every pixel in a thin band around each particle's
outline (``band`` working-scale pixels on either side) from what the image
and the seed map say there:

- where the pixel is relative to the outline (signed distance, working and
  native pixels) and the particle's size;
- the seed map;
- the pixel's grey level at three smoothings, expressed on the particle's own
  scale (0 = the median grey of a ring just outside, 1 = the median grey of
  its interior), so dark and bright particles, TEM and SEM, read the same;
- the first and second derivatives of the grey level across the outline
  (an edge is a steep, turning profile);
- the particle's contrast and the working scale.

A small perceptron (two hidden layers) gives the probability that the pixel
belongs to the particle; the band is then relabelled: each pixel goes to
the particle whose outline is nearest if that probability is above
``threshold``, else to the background (the probabilities are first smoothed
over ``smooth`` working-scale px, so that image noise does not fray the
outline).  A particle whose area would change by more than ``gate`` allows
keeps its old outline (the refiner is for outlines, not for re-drawing
particles); each particle then keeps only its main piece, with its holes
filled (:func:`tidy_particles`).

The band is a few pixels wide, so one pass moves an outline by a few pixels
at most.  Where the network's outline lies further inside a particle (on
some dense images a crescent of each particle is left out), ``passes`` > 1
applies the refiner again to its own result, each pass from the outline the
previous one drew (and gated against it), until nothing changes or the
passes are spent.

The perceptron is fitted on the network's own particles on training images
(:func:`fit_outline_refiner`; the label of a band pixel is whether it lies in
the ground-truth particle that its particle matches at IoU > 0.5).  It is
evaluated in NumPy and lives in ``config.json`` (``inference.outline``); only
fitting it runs torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .inference import core_bounds, resize_map, tile_starts

logger = logging.getLogger(__name__)

#: Per-pixel features, in column order (see :func:`outline_features`).
FEATURES = (
    "distance",      # signed distance to the outline, working px (+ outside)
    "seed",          # seed map, bilinearly resized to the image
    "grey",          # grey (smoothed 0.5 working px) on the particle's scale
    "grey_raw",      # unsmoothed grey on the particle's scale
    "gradient",      # gradient magnitude per working px, in contrast units
    "contrast",      # |interior - ring| median grey of the particle
    "log_scale",     # log(working scale)
    "distance_px",   # signed distance in native px, clipped to +-10
    "log_area",      # log(particle area in working px^2)
    "grey_1",        # grey smoothed 1 working px, on the particle's scale
    "grey_2",        # grey smoothed 2 working px, on the particle's scale
    "slope",         # first derivative of grey across the outline (outwards)
    "curvature",     # second derivative of grey across the outline
)

_MIN_CONTRAST = 0.03
_ROWS = 1 << 17  # band pixels per block of the perceptron


def normalised_grey(rgb: np.ndarray) -> np.ndarray:
    """Mean of the channels of ``rgb`` (M, N, 3) rescaled so that its 1st and
    99th percentiles are 0 and 1; (M, N) float32."""
    g = np.asarray(rgb, np.float32)
    g = g.mean(2) if g.ndim == 3 else g
    lo, hi = np.percentile(g, (1, 99))
    return ((g - lo) / max(float(hi - lo), 1.0)).astype(np.float32)


def _outline_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels of a particle with a 4-neighbour of another label (or 0)."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[:-1] != labels[1:]
    dx = labels[:, :-1] != labels[:, 1:]
    edge[:-1] |= dy
    edge[1:] |= dy
    edge[:, :-1] |= dx
    edge[:, 1:] |= dx
    return edge & (labels > 0)


def _medians(values: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    """Median of ``values`` per owner label 1..k; (k + 1,), NaN where none."""
    out = np.full(k + 1, np.nan)
    if owner.size == 0:
        return out
    order = np.argsort(owner, kind="stable")
    own, val = owner[order], values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(own)) + 1]
    for a, b in zip(starts, np.r_[starts[1:], own.size]):
        out[own[a]] = np.median(val[a:b])
    return out


def outline_features(rgb: np.ndarray, labels: np.ndarray, seed: np.ndarray, *,
                     scale: float, band: float = 4.0, tile: int = 1024,
                     cache: dict | None = None):
    """Features (:data:`FEATURES`) of the pixels near the particles' outlines.

    Parameters
    ----------
    rgb : (M, N, 3) or (M, N) array
        The image.
    labels : (M, N) int array
        Particles 1..K, 0 = background.
    seed : (m, n) float array
        The network's seed map at the working scale.
    scale : float
        Working scale (working px per native px).
    band : float
        Half-width of the band, in working-scale pixels.
    tile : int
        Larger images are processed in pieces of at most ``tile`` x ``tile``
        px (each with the margin its filters and distances need), so that
        the temporaries stay bounded; the result is the same.
    cache : dict, optional
        Holds what depends only on the image, the seed map, ``scale`` and
        ``band`` (the normalised grey, its smoothings and derivatives) between
        calls on the same image with different ``labels``, as the passes of
        :meth:`OutlineRefiner.refine` make (the same ``rgb`` and ``seed``
        arrays, unchanged); start with an empty dict.  The result is the same
        as without it; it costs the memory of about eight float32 copies of
        the image.

    Returns
    -------
    flat : (P,) int64
        Flat indices of the band pixels, ascending.
    owner : (P,) int
        The particle each band pixel belongs to or lies nearest to.
    X : (P, len(FEATURES)) float32
        ``None`` for all three when there is no particle.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label map, got shape {labels.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if tile < 64:
        raise ValueError(f"tile must be at least 64 px, got {tile}")
    edge = _outline_pixels(labels)
    if not edge.any():
        return None, None, None
    h, w = labels.shape
    px = 1.0 / scale
    cache = {} if cache is None else cache
    # another image or seed map (even of the same shape) starts afresh
    key = (id(rgb), id(seed), (h, w), float(scale), float(band), int(tile))
    if cache.get("key") != key:
        cache.clear()
        cache["key"] = key
    if "grey" not in cache:
        g = normalised_grey(rgb)
        if g.shape != (h, w):
            raise ValueError(f"image of shape {g.shape} does not match labels of shape "
                             f"{(h, w)}")
        cache["grey"], cache["seed"] = g, resize_map(seed, (h, w))
    g, seed_full = cache["grey"], cache["seed"]
    # what a pixel's features depend on lies within this many px of it: the
    # outline (band + ring), the widest Gaussian (4 sigma) and two derivatives
    halo = int(np.ceil((band + 1.5) * px + 4 * max(2 * px, 0.5))) + 4
    k = int(labels.max())
    parts = []   # per window: band pixels' flat index, owner and raw columns
    stats = {"core": [], "shell": [], "ring": [], "outside": []}
    # the pieces: the kept cores of the network's tiling, without overlap
    rows = core_bounds(tile_starts(h, tile, 0), tile, h)
    cols = core_bounds(tile_starts(w, tile, 0), tile, w)
    for y0, y1 in rows:
        for x0, x1 in cols:
            Y0, Y1 = max(0, y0 - halo), min(h, y1 + halo)
            X0, X1 = max(0, x0 - halo), min(w, x1 + halo)
            maps = cache.get((Y0, Y1, X0, X1))
            if maps is None:
                maps = cache[Y0, Y1, X0, X1] = _grey_maps(g[Y0:Y1, X0:X1], scale=scale)
            part = _window_features(maps, labels[Y0:Y1, X0:X1], edge[Y0:Y1, X0:X1],
                                    seed_full[Y0:Y1, X0:X1], (y0 - Y0, y1 - Y0, x0 - X0, x1 - X0),
                                    scale=scale, band=band, stats=stats)
            if part is not None:
                fy, fx, own, raw = part
                parts.append(((fy + Y0) * w + (fx + X0), own, raw))
    cat = {key: (np.concatenate([o for o, _ in v]), np.concatenate([x for _, x in v]))
           for key, v in stats.items()}
    i_in = _medians(cat["core"][1], cat["core"][0], k)
    # a particle without core pixels is all shell: its whole interior
    i_all = _medians(cat["shell"][1], cat["shell"][0], k)
    i_in = np.where(np.isnan(i_in), i_all, i_in)
    i_out = _medians(cat["ring"][1], cat["ring"][0], k)
    fallback = float(np.median(cat["outside"][1])) if cat["outside"][1].size else 0.0
    i_out = np.where(np.isnan(i_out), fallback, i_out)
    del cat, stats

    flat = np.concatenate([f for f, _, _ in parts])
    own = np.concatenate([o for _, o, _ in parts])
    raw = np.concatenate([r for _, _, r in parts])
    del parts
    if len(rows) * len(cols) > 1:
        order = np.argsort(flat, kind="stable")
        flat, own, raw = flat[order], own[order], raw[order]
    con = i_in[own] - i_out[own]
    den = np.where(np.abs(con) < _MIN_CONTRAST, _MIN_CONTRAST * np.sign(con + 1e-9), con)
    base = i_out[own]

    def rel(col):
        return np.clip((raw[:, col] - base) / den, -3, 3)

    area = np.bincount(labels.ravel(), minlength=k + 1).astype(np.float64)
    sd = raw[:, _RAW.index("sd")]
    columns = (
        lambda: sd,
        lambda: raw[:, _RAW.index("seed")],
        lambda: rel(_RAW.index("gs")),
        lambda: rel(_RAW.index("g")),
        lambda: np.clip(raw[:, _RAW.index("grad")] / np.abs(den), 0, 5),
        lambda: np.abs(con),
        lambda: np.log(scale),
        lambda: np.clip(sd / scale, -10, 10),
        lambda: np.log(np.maximum(area[own], 1) * scale * scale),
        lambda: rel(_RAW.index("g1")),
        lambda: rel(_RAW.index("g2")),
        lambda: np.clip(raw[:, _RAW.index("slope")] * px / den, -5, 5),
        lambda: np.clip(raw[:, _RAW.index("curv")] * px * px / den, -5, 5),
    )
    X = np.empty((flat.size, len(FEATURES)), np.float32)
    for i, column in enumerate(columns):  # one float64 column at a time
        X[:, i] = column()
    return flat, own, X


#: Raw per-pixel columns of :func:`_window_features`, before they are put on
#: each particle's grey scale.
_RAW = ("sd", "seed", "gs", "g", "grad", "g1", "g2", "slope", "curv")


def _grey_maps(g: np.ndarray, *, scale: float) -> dict:
    """What :func:`_window_features` reads of one window's grey ``g``: the
    grey itself, smoothed over 0.5, 1 and 2 working px, the gradient of the
    first and its Sobel magnitude."""
    px = 1.0 / scale
    gs = ndi.gaussian_filter(g, max(0.5 * px, 0.5))
    gy, gx = np.gradient(gs)
    return {"g": g, "gs": gs, "gy": gy, "gx": gx,
            "grad": np.hypot(ndi.sobel(gs, 0), ndi.sobel(gs, 1)) / 8.0,
            "g1": ndi.gaussian_filter(g, max(px, 0.5)),
            "g2": ndi.gaussian_filter(g, max(2 * px, 0.5))}


def _window_features(maps, labels, edge, seed, core, *, scale, band, stats):
    """Raw columns (:data:`_RAW`) of the band pixels inside ``core`` (y0, y1,
    x0, x1) of one window of the image (its grey maps ``maps``, see
    :func:`_grey_maps`), whose margin holds everything they depend on;
    appends the (owner, grey) pairs of the core's particle cores, shells
    (interior pixels off the core), rings and background to ``stats`` for
    the medians.  Returns (rows, cols, owner, raw) in window coordinates, or
    None."""
    y0, y1, x0, x1 = core
    g, gs = maps["g"], maps["gs"]
    inside = labels > 0
    if edge.any():
        d, (iy, ix) = ndi.distance_transform_edt(~edge, return_indices=True)
        owner_map = np.where(inside, labels, labels[iy, ix])
        del iy, ix
    else:  # no outline within reach: all interior or all background
        d = np.full(labels.shape, np.inf)
        owner_map = labels
    sd = (np.where(inside, -d, d) * scale).astype(np.float32)
    del d
    c = (slice(y0, y1), slice(x0, x1))
    sd_c, in_c, own_c, gs_c = sd[c], inside[c], owner_map[c], gs[c]
    core_px = in_c & (sd_c < -1.5)
    ring = ~in_c & (sd_c > 1.5) & (sd_c <= band + 1.5)
    for key, mask in (("core", core_px), ("shell", in_c & ~core_px), ("ring", ring)):
        stats[key].append((own_c[mask].astype(np.int32), gs_c[mask]))
    stats["outside"].append((np.zeros(0, np.int32), gs_c[~in_c]))
    in_band = (np.abs(sd_c) <= band) & (own_c > 0)
    if not in_band.any():
        return None
    fy, fx = np.nonzero(in_band)
    wy, wx = fy + y0, fx + x0  # window coordinates
    ny, nx = np.gradient(sd)
    norm = np.hypot(ny, nx) + 1e-6
    slope = (maps["gy"] * ny + maps["gx"] * nx) / norm  # outward derivative per native px
    sy, sx = np.gradient(slope)
    curv = (sy * ny + sx * nx) / norm
    del sy, sx, ny, nx, norm
    raw = np.stack([
        sd[wy, wx], seed[wy, wx], gs[wy, wx], g[wy, wx], maps["grad"][wy, wx],
        maps["g1"][wy, wx], maps["g2"][wy, wx], slope[wy, wx], curv[wy, wx],
    ], 1).astype(np.float32)
    return wy, wx, owner_map[wy, wx], raw


def relabel_band(labels: np.ndarray, flat: np.ndarray, owner: np.ndarray, prob: np.ndarray, *,
                 threshold: float = 0.5, gate: tuple[float, float] | None = (0.7, 1.4)
                 ) -> np.ndarray:
    """``labels`` with each band pixel ``flat`` given to its ``owner`` where
    ``prob`` > ``threshold`` and to the background elsewhere.

    A particle whose area would change by a factor outside ``gate`` keeps
    its old pixels, and gives back the pixels it would have taken.  Returns a
    new label map; the particles keep their numbers.

    >>> lab = np.array([[0, 1, 1, 0]], np.int32)
    >>> relabel_band(lab, np.array([0, 3]), np.array([1, 1]), np.array([0.9, 0.2]),
    ...              gate=None).tolist()
    [[1, 1, 1, 0]]
    """
    out = np.array(labels, copy=True).ravel()
    out[flat] = np.where(prob > threshold, owner, 0)
    if gate is not None:
        k = int(labels.max(initial=0))
        before = np.bincount(labels.ravel(), minlength=k + 1).astype(np.float64)
        after = np.bincount(out, minlength=k + 1).astype(np.float64)
        ratio = after / np.maximum(before, 1.0)
        bad = (ratio < gate[0]) | (ratio > gate[1])
        bad[0] = False
        if bad.any():
            old = labels.ravel()
            out = np.where(bad[old] | bad[out], old, out)
    return out.reshape(labels.shape)


def smooth_band(labels: np.ndarray, flat: np.ndarray, prob: np.ndarray, *,
                sigma: float) -> np.ndarray:
    """``prob`` of the band pixels ``flat`` smoothed by a Gaussian of
    ``sigma`` px, with the pixels off the band counted as 1 inside a particle
    and 0 outside; (P,)."""
    if sigma <= 0:
        return np.asarray(prob)
    full = (np.asarray(labels) > 0).astype(np.float32).ravel()
    full[flat] = prob
    full = ndi.gaussian_filter(full.reshape(labels.shape), sigma)
    return full.ravel()[flat]


def tidy_particles(labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each particle of ``labels`` cut down to its connected piece (8-connected)
    that overlaps its pixels in ``reference`` most (the other pieces become
    background), with its holes filled from the background.

    >>> lab = np.array([[1, 1, 0, 0, 1], [1, 0, 1, 0, 0], [1, 1, 1, 0, 0]], np.int32)
    >>> tidy_particles(lab, lab).tolist()
    [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    """
    out = np.array(labels, copy=True)
    ref = np.asarray(reference)
    eight = np.ones((3, 3), bool)
    for i, box in enumerate(ndi.find_objects(out), 1):
        if box is None:
            continue
        mine = out[box] == i
        pieces, n = ndi.label(mine, structure=eight)
        if n > 1:
            overlap = np.bincount(pieces[mine & (ref[box] == i)], minlength=n + 1)
            overlap[0] = -1
            keep = int(overlap.argmax()) if overlap[1:].max() > 0 else \
                int(np.bincount(pieces[mine], minlength=n + 1)[1:].argmax()) + 1
            out[box][mine & (pieces != keep)] = 0
            mine = out[box] == i
        holes = ndi.binary_fill_holes(mine) & (out[box] == 0)
        out[box][holes] = i
    return out


@dataclass
class OutlineRefiner:
    """A fitted outline refiner: feature standardisation, the perceptron's
    layers ``[(W, b), ...]`` (ReLU between them, sigmoid at the end) and the
    band, threshold, gate, smoothing and number of passes it was fitted and
    tuned with."""

    mean: np.ndarray
    std: np.ndarray
    layers: list
    band: float = 4.0
    threshold: float = 0.5
    gate: tuple[float, float] | None = (0.7, 1.4)
    smooth: float = 0.5
    passes: int = 1
    meta: dict = field(default_factory=dict)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability that each band pixel (a row of :func:`outline_features`)
        belongs to its particle; (P,)."""
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ValueError(f"expected features of shape (P, {len(self.mean)}), got {X.shape}")
        out = np.empty(X.shape[0], np.float32)
        for i0 in range(0, X.shape[0], _ROWS):  # bounded hidden activations
            a = (X[i0:i0 + _ROWS] - self.mean) / self.std
            for i, (W, b) in enumerate(self.layers):
                a = a @ W + b
                if i < len(self.layers) - 1:
                    np.maximum(a, 0, out=a)
            out[i0:i0 + _ROWS] = 1.0 / (1.0 + np.exp(-np.clip(a[:, 0], -30, 30)))
        return out

    def refine(self, rgb: np.ndarray, labels: np.ndarray, seed: np.ndarray, *,
               scale: float) -> np.ndarray:
        """``labels`` with refined outlines (see the module docstring):
        :attr:`passes` passes, each from the previous one's outlines, fewer
        where a pass changes nothing."""
        out = np.array(labels, copy=True)
        cache: dict = {}  # the image's grey maps, shared by the passes
        for _ in range(self.passes):
            new = self._refine_once(rgb, out, seed, scale=scale, cache=cache)
            if np.array_equal(new, out):
                break
            out = new
        return out

    def _refine_once(self, rgb: np.ndarray, labels: np.ndarray, seed: np.ndarray, *,
                     scale: float, cache: dict) -> np.ndarray:
        flat, owner, X = outline_features(rgb, labels, seed, scale=scale, band=self.band,
                                          cache=cache)
        if flat is None or flat.size == 0:
            return np.array(labels, copy=True)
        prob = smooth_band(labels, flat, self.predict_proba(X), sigma=self.smooth / scale)
        new = relabel_band(labels, flat, owner, prob, threshold=self.threshold, gate=self.gate)
        return tidy_particles(new, labels)

    def to_dict(self) -> dict:
        return {"kind": "mlp", "features": list(FEATURES),
                "mean": self.mean.tolist(), "std": self.std.tolist(),
                "layers": [{"W": np.asarray(W).tolist(), "b": np.asarray(b).tolist()}
                           for W, b in self.layers],
                "band": self.band, "threshold": self.threshold,
                "gate": None if self.gate is None else list(self.gate),
                "smooth": self.smooth, "passes": self.passes, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "OutlineRefiner":
        """Inverse of :meth:`to_dict`; a ``ValueError`` names what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"expected an object, got {type(d).__name__}")
        if d.get("kind") != "mlp":
            raise ValueError(f"unknown kind {d.get('kind')!r} (expected 'mlp')")
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"features {d.get('features')} do not match this version's "
                             f"{list(FEATURES)}")
        try:
            mean = np.asarray(d["mean"], np.float32)
            std = np.asarray(d["std"], np.float32)
            layers = [(np.asarray(layer["W"], np.float32), np.asarray(layer["b"], np.float32))
                      for layer in d["layers"]]
            band, threshold = float(d.get("band", 4.0)), float(d.get("threshold", 0.5))
            gate = d.get("gate")
            gate = None if gate is None else (float(gate[0]), float(gate[1]))
            smooth = float(d.get("smooth", 0.0))
            passes = d.get("passes", 1)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"malformed outline refiner: {err}") from None
        n = len(FEATURES)
        if mean.shape != (n,) or std.shape != (n,) or not layers:
            raise ValueError(f"mean/std must have {n} entries and layers must not be empty")
        width = n
        for W, b in layers:
            if W.ndim != 2 or W.shape[0] != width or b.shape != (W.shape[1],):
                raise ValueError(f"layer of shape {W.shape} / {b.shape} does not follow a "
                                 f"layer of width {width}")
            width = W.shape[1]
        if width != 1:
            raise ValueError(f"the last layer must have one output, has {width}")
        if not band > 0 or not 0 < threshold < 1:
            raise ValueError(f"band must be > 0 and threshold in (0, 1), got {band}, {threshold}")
        if gate is not None and not 0 < gate[0] <= 1 <= gate[1]:
            raise ValueError(f"gate must be (low <= 1 <= high), got {gate}")
        if not smooth >= 0:
            raise ValueError(f"smooth must be >= 0 working-scale px, got {smooth}")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be a whole number >= 1, got {passes!r}")
        return cls(mean=mean, std=np.maximum(std, 1e-6), layers=layers, band=band,
                   threshold=threshold, gate=gate, smooth=smooth, passes=passes,
                   meta=dict(d.get("meta", {})))


def band_targets(gt: np.ndarray, labels: np.ndarray, flat: np.ndarray, owner: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Training labels of band pixels: 1 where the pixel lies in the
    ground-truth particle that its owner matches (IoU > 0.5).  Returns
    ``(y float32, usable bool)``; pixels of unmatched particles are not usable.
    """
    from ...evaluation.metrics import matched_pairs

    gt = np.asarray(gt).astype(np.int64, copy=False)
    lab = np.asarray(labels).astype(np.int64, copy=False)
    if gt.shape != lab.shape:
        raise ValueError(f"ground truth of shape {gt.shape} does not match labels {lab.shape}")
    pairs = matched_pairs(gt, lab)  # IoU > 0.5: at most one true particle each
    match = np.full(int(lab.max(initial=0)) + 1, -1, np.int64)
    match[pairs["pred_id"]] = pairs["gt_id"]
    m = match[owner]
    usable = m > 0
    y = usable & (gt.ravel()[flat] == m)
    return y.astype(np.float32), usable


def fit_outline_refiner(X: np.ndarray, y: np.ndarray, *, hidden: int = 32, epochs: int = 6,
                        batch_size: int = 4096, lr: float = 3e-3, seed: int = 0,
                        **settings) -> OutlineRefiner:
    """Fit the perceptron on band pixels ``X`` (P, F) with labels ``y`` (P,)
    by Adam on the binary cross-entropy; ``settings`` (``band``,
    ``threshold``, ``gate``, ``meta``) are stored with it."""
    import torch

    X = np.asarray(X, np.float32)
    y = np.asarray(y, np.float32)
    if X.ndim != 2 or X.shape[1] != len(FEATURES) or y.shape != (X.shape[0],):
        raise ValueError(f"expected X (P, {len(FEATURES)}) and y (P,), got {X.shape}, {y.shape}")
    if X.shape[0] == 0 or y.min() == y.max():
        raise ValueError("need band pixels of both classes to fit an outline refiner")
    mean, std = X.mean(0), np.maximum(X.std(0), 1e-6)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr)
    xt = torch.from_numpy((X - mean) / std)
    yt = torch.from_numpy(y)
    for epoch in range(epochs):
        perm = torch.randperm(len(yt), generator=gen)
        total = 0.0
        for i in range(0, len(yt), batch_size):
            b = perm[i:i + batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[b])[:, 0], yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        logger.info("outline refiner epoch %d: loss %.4f", epoch + 1, total / len(yt))
    layers = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
              for m in net if isinstance(m, torch.nn.Linear)]
    return OutlineRefiner(mean=mean, std=std, layers=layers, **settings)
