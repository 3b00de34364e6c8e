"""Join the pieces of a long rod that the network cut across.

The ``bpartis`` networks were trained on rods whose aspect ratio rarely
passes 7.  Shown a longer rod or wire they often cluster it into a few
pieces lying end to end along it: each piece is a fair rod of its own, so
neither the rescorer nor the outline refiner objects.  Two such pieces touch
across the rod, lie on one line, have the rod's width, and together make a
longer rod than either.  :func:`join_fragments` joins every touching pair
that meets all of that, repeatedly, so a rod cut into four comes out whole.

Two particles that merely touch end to end meet the same tests more often
than one would like (short ellipsoids in a chain), so the joined particle
must also be a long rod (``min_union_elongation``); on the EMPS training
and validation images no pair of distinct particles came close to the
default.

Where the pieces do not touch (a piece between them, or the rod's ends, was
dropped), :func:`whole_rods` takes the rod from the network's foreground
instead: a straight, even band of foreground whose particles are all pieces
of it becomes one particle.

Pure numpy (and scipy.ndimage): the geometry comes from each label's pixel
moments, and the moments of a union are the sums of its parts'.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: the defaults of :func:`join_fragments`, the keys of ``inference.join_fragments``
DEFAULTS = {"min_elongation": 2.0, "max_angle": 15.0, "max_width_ratio": 1.3,
            "min_gain": 1.2, "min_union_elongation": 6.0, "gap": 2, "min_contact": 0.5}

#: the short axis of :func:`shape_of` (4 standard deviations) over a bar's width
SHORT_AXIS_PER_WIDTH = 4.0 / math.sqrt(12.0)


def label_moments(labels: np.ndarray) -> np.ndarray:
    """Raw pixel moments of each label of ``labels``: ``(K + 1, 6)`` rows of
    ``(n, sum y, sum x, sum y^2, sum x^2, sum xy)``, row ``k`` for label ``k``
    (row 0: background, left zero).

    >>> lab = np.zeros((3, 4), np.int32); lab[1, 1:4] = 1
    >>> label_moments(lab)[1].tolist()
    [3.0, 3.0, 6.0, 3.0, 14.0, 6.0]
    """
    lab = np.asarray(labels)
    k = int(lab.max()) if lab.size else 0
    fg = lab.ravel() > 0
    ids = lab.ravel()[fg]
    y, x = np.divmod(np.flatnonzero(fg), lab.shape[1])
    y, x = y.astype(np.float64), x.astype(np.float64)
    out = np.zeros((k + 1, 6))
    for j, v in enumerate((np.ones_like(y), y, x, y * y, x * x, x * y)):
        out[:, j] = np.bincount(ids, v, minlength=k + 1)
    return out


def shapes(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centroids ``(y, x)`` (N, 2), elongations (long over short axis of the
    pixels' covariance ellipse; 1 for a row without pixels), short-axis
    lengths (4 standard deviations; 1.15 x the width of a bar) and unit long
    axes ``(dy, dx)`` (N, 2) of rows of :func:`label_moments`.

    >>> lab = np.zeros((10, 40), np.int32); lab[4:7, 5:35] = 1  # a 30 x 3 bar along x
    >>> c, e, w, d = shapes(label_moments(lab))
    >>> c[1].tolist(), e.round(1).tolist(), round(float(w[1]), 2), np.abs(d[1]).tolist()
    ([5.0, 19.5], [1.0, 10.0], 3.46, [0.0, 1.0])
    """
    m = np.atleast_2d(moments).astype(np.float64)
    n = np.maximum(m[:, 0], 1.0)
    c = np.stack([m[:, 1] / n, m[:, 2] / n], axis=1)
    vyy = m[:, 3] / n - c[:, 0] ** 2 + 1.0 / 12.0  # a pixel's own spread
    vxx = m[:, 4] / n - c[:, 1] ** 2 + 1.0 / 12.0
    vxy = m[:, 5] / n - c[:, 0] * c[:, 1]
    half = (vyy + vxx) / 2.0
    root = np.sqrt(np.maximum(half * half - (vyy * vxx - vxy * vxy), 0.0))
    big, small = half + root, np.maximum(half - root, 1e-9)
    tilted = np.abs(vxy) > 1e-12
    d = np.where(tilted[:, None], np.stack([big - vxx, vxy], axis=1),
                 np.where((vyy >= vxx)[:, None], [1.0, 0.0], [0.0, 1.0]))
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    return c, np.sqrt(big / small), 4.0 * np.sqrt(small), d


def shape_of(m: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray]:
    """:func:`shapes` of one row of :func:`label_moments`: centroid,
    elongation, short-axis length and unit long axis.

    >>> lab = np.zeros((10, 40), np.int32); lab[4:7, 5:35] = 1  # a 30 x 3 bar along x
    >>> c, e, w, d = shape_of(label_moments(lab)[1])
    >>> c.tolist(), round(e, 1), round(w, 2), np.abs(d).round(3).tolist()
    ([5.0, 19.5], 10.0, 3.46, [0.0, 1.0])
    """
    c, e, w, d = shapes(m)
    return c[0], float(e[0]), float(w[0]), d[0]


def contacts(labels: np.ndarray, *, gap: int = 2) -> dict[tuple[int, int], int]:
    """For each pair ``(a, b)``, ``a < b``, of labels with pixels at most
    ``gap`` pixels apart (chessboard distance): the length of their contact,
    the most pixels of ``a`` that face a pixel of ``b`` across one offset
    ``(dy, dx)`` of the shortest chessboard length at which they meet.  A rod
    cut straight across touches its other piece along its whole width; two
    rounded ends touch at a few pixels.

    >>> lab = np.zeros((8, 20), np.int32); lab[2:7, :10] = 1; lab[2:7, 10:] = 2  # a cut bar
    >>> lab[0, 0] = 3  # a pixel two rows above the bar's corner
    >>> contacts(lab)
    {(1, 2): 5, (1, 3): 1}
    """
    lab = np.asarray(labels)
    h, w = lab.shape
    base = np.int64(lab.max()) + 1 if lab.size else 1
    found: dict[tuple[int, int], int] = {}
    shortest: dict[tuple[int, int], int] = {}
    offsets = [(dy, dx) for dy in range(gap + 1) for dx in range(-gap, gap + 1)
               if not (dy == 0 and dx <= 0) and dy < h and abs(dx) < w]
    for dy, dx in sorted(offsets, key=lambda o: max(o[0], abs(o[1]))):
        length = max(dy, abs(dx))
        a = lab[:h - dy, max(0, -dx):w - max(0, dx)]
        b = lab[dy:, max(0, dx):w - max(0, -dx)]
        hit = (a > 0) & (b > 0) & (a != b)
        if hit.any():
            lo = np.minimum(a[hit], b[hit]).astype(np.int64)
            codes, n = np.unique(lo * base + np.maximum(a[hit], b[hit]),
                                 return_counts=True)
            for c, k in zip(codes.tolist(), n.tolist()):
                key = (c // int(base), c % int(base))
                if shortest.setdefault(key, length) == length:
                    found[key] = max(found.get(key, 0), k)
    return found


def _joinable(part_a: tuple, part_b: tuple, union: np.ndarray, contact: int, *,
              min_elongation: float, cos_max: float, max_width_ratio: float, min_gain: float,
              min_union_elongation: float, min_contact: float) -> float | None:
    """How well two touching particles line up (cosine of the angle between
    the line through their centroids and the rod's axis) when they pass every
    test of :func:`join_fragments`, else None.  ``part_a``, ``part_b``: their
    :func:`shape_of`; ``union``: the moments of the two together."""
    ca, ea, wa, da = part_a
    cb, eb, wb, db = part_b
    if max(ea, eb) < min_elongation:
        return None
    both = min(ea, eb) >= min_elongation
    if both and abs(float(da @ db)) < cos_max:
        return None
    axis, width = (da, wa) if ea >= eb else (db, wb)
    if both:
        width = max(wa, wb)
    v = cb - ca
    dist = float(np.linalg.norm(v))
    if dist == 0.0:
        return None
    along = abs(float(v @ axis)) / dist
    if along < cos_max or contact < min_contact * width / SHORT_AXIS_PER_WIDTH:
        return None
    _, eu, wu, _ = shape_of(union)
    if wu > max_width_ratio * width or eu < min_gain * max(ea, eb) or eu < min_union_elongation:
        return None
    return along


def join_fragments(result: dict, *, min_elongation: float = 2.0, max_angle: float = 15.0,
                   max_width_ratio: float = 1.3, min_gain: float = 1.2,
                   min_union_elongation: float = 6.0, gap: int = 2,
                   min_contact: float = 0.5) -> dict:
    """Join touching pieces of one rod in a ``segment_image`` result.

    Two particles at most ``gap`` pixels apart are joined when

    - the more elongated of them has an elongation of at least
      ``min_elongation`` (and when both have, their long axes differ by at
      most ``max_angle`` degrees);
    - the line through their centroids lies within ``max_angle`` degrees of
      that particle's long axis (end to end, not side by side);
    - they touch across at least ``min_contact`` of its width
      (:func:`contacts`: a rod cut straight across, not two rounded ends);
    - the joined particle is at most ``max_width_ratio`` times as wide
      (short axis) as the elongated one (the wider of the two when both
      are), and at least ``min_gain`` times as elongated as the more
      elongated part and at least ``min_union_elongation`` in all.

    Pairs are taken best aligned first, and the tests are repeated on the
    joined particles until nothing more joins.  A joined particle takes the
    lower label; ``scores``, ``uncertainty`` and (when present)
    ``seed_scores`` become the area-weighted means of its parts'.  The
    labels are renumbered ``1..K'`` in the order of their lowest part;
    ``joined`` counts the joins.  The input dict is not modified.

    >>> lab = np.zeros((12, 80), np.int32)
    >>> lab[5:9, 2:27] = 1; lab[5:9, 27:52] = 2; lab[5:9, 52:78] = 3  # one rod in three
    >>> lab[0:3, 10:16] = 4  # a small particle beside it
    >>> r = join_fragments({"labels": lab, "scores": np.array([.8, .9, .7, .95]),
    ...                     "uncertainty": np.zeros(4)})
    >>> r["joined"], int(r["labels"].max()), r["scores"].round(3).tolist()
    (2, 2, [0.799, 0.95])
    """
    if not 0.0 <= max_angle < 90.0:
        raise ValueError(f"max_angle must be in [0, 90) degrees, got {max_angle}")
    if gap < 0 or int(gap) != gap:
        raise ValueError(f"gap must be a whole number of pixels >= 0, got {gap}")
    labels = np.asarray(result["labels"])
    out = dict(result)
    out["joined"] = 0
    k = int(labels.max()) if labels.size else 0
    if k < 2:
        return out
    moments = label_moments(labels)
    area = moments[1:, 0].copy()  # of the particles as given (moments[a] grows with joins)
    if not (shapes(moments)[1] >= min_elongation).any():
        return out  # no rod, nothing can join (the common case, at no pair search)
    touching = contacts(labels, gap=int(gap))
    if not touching:
        return out
    parent = np.arange(k + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    tests = dict(min_elongation=min_elongation, cos_max=math.cos(math.radians(max_angle)),
                 max_width_ratio=max_width_ratio, min_gain=min_gain,
                 min_union_elongation=min_union_elongation, min_contact=min_contact)
    joined = 0
    while True:
        cand = []
        cen, elong, wid, axis = shapes(moments)  # once per round, for every particle
        between: dict[tuple[int, int], int] = {}  # the parts' longest contact
        for (a, b), c in touching.items():
            key = (min(root(a), root(b)), max(root(a), root(b)))
            between[key] = max(between.get(key, 0), c)
        for (a, b), c in between.items():
            if a != b and max(elong[a], elong[b]) >= min_elongation:  # else never joined
                along = _joinable((cen[a], elong[a], wid[a], axis[a]),
                                  (cen[b], elong[b], wid[b], axis[b]),
                                  moments[a] + moments[b], c, **tests)
                if along is not None:
                    cand.append((-along, a, b))
        if not cand:
            break
        used = set()
        for _, a, b in sorted(cand):
            if a in used or b in used:
                continue  # re-tested as a whole on the next round
            parent[b] = a
            moments[a] = moments[a] + moments[b]
            used.update((a, b))
            joined += 1
    if not joined:
        return out
    out = regrouped(result, labels, np.array([root(i) for i in range(k + 1)]), area)
    out["joined"] = joined
    return out


def regrouped(result: dict, labels: np.ndarray, roots: np.ndarray, area: np.ndarray) -> dict:
    """A copy of ``result`` with its particles put together in groups:
    ``roots[i]`` is the lowest label of particle ``i``'s group (``roots[0]``
    0), ``labels`` the label image (each pixel a particle's label or its
    group's lowest), ``area`` the particles' pixel counts (``K``,).  The
    groups are renumbered ``1..K'`` in the order of their lowest part;
    ``scores``, ``uncertainty`` and (when present) ``seed_scores`` become
    the area-weighted means of their parts'.

    >>> lab = np.array([[1, 2, 0, 3]])
    >>> r = regrouped({"labels": lab, "scores": np.array([0.2, 0.4, 0.9])}, lab,
    ...               np.array([0, 1, 1, 3]), np.array([1.0, 1.0, 1.0]))
    >>> r["labels"].tolist(), r["scores"].round(2).tolist()
    ([[1, 1, 0, 2]], [0.3, 0.9])
    """
    k = roots.size - 1
    kept = np.unique(roots[1:])
    new_id = np.zeros(k + 1, np.int32)
    new_id[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    which = new_id[roots[1:]] - 1  # 0-based new index of each old particle
    out = dict(result)
    out["labels"] = new_id[roots][labels]
    for key in ("scores", "uncertainty", "seed_scores"):
        if key in result and np.size(result[key]) == k:
            v = np.asarray(result[key], dtype=np.float64)
            out[key] = (np.bincount(which, area * v, minlength=kept.size)
                        / np.maximum(np.bincount(which, area, minlength=kept.size), 1.0))
    return out


#: the defaults of :func:`whole_rods`, the keys of ``inference.whole_rods``
ROD_DEFAULTS = {"fg_threshold": 0.5, "min_elongation": 6.0, "max_angle": 15.0,
                "max_width_ratio": 1.3, "max_offset": 0.25, "min_inside": 0.5,
                "max_stray": 0.1, "max_cover": 0.8, "min_waist": 0.6}


def grown_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``shape`` (pixel centres aligned,
    as ``torch``'s ``align_corners=False``).

    >>> grown_map(np.array([[0.0, 1.0]]), (1, 4)).round(2).tolist()
    [[0.0, 0.25, 0.75, 1.0]]
    """
    v = np.asarray(values, dtype=np.float32)
    if v.shape == tuple(shape):
        return v
    grid = [np.clip((np.arange(n) + 0.5) * v.shape[i] / n - 0.5, 0, v.shape[i] - 1)
            for i, n in enumerate(shape)]
    return ndi.map_coordinates(v, np.meshgrid(*grid, indexing="ij"), order=1, mode="nearest")


def width_profile(ys: np.ndarray, xs: np.ndarray, centre: np.ndarray, axis: np.ndarray,
                  step: float) -> np.ndarray:
    """Width of a band of pixels ``(ys, xs)`` along its ``axis`` (unit
    ``(dy, dx)`` through ``centre``): pixels per unit length in consecutive
    slices ``step`` long across it.

    >>> ys, xs = np.nonzero(np.ones((4, 12)))  # a 4-wide band along x
    >>> width_profile(ys, xs, np.array([1.5, 5.5]), np.array([0.0, 1.0]), 3.0).tolist()
    [4.0, 4.0, 4.0, 4.0]
    """
    t = (ys - centre[0]) * axis[0] + (xs - centre[1]) * axis[1]
    lo = float(t.min())
    n = max(int(math.ceil((float(t.max()) - lo + 1.0) / step - 1e-9)), 1)
    idx = np.minimum(((t - lo + 0.5) / step).astype(np.int64), n - 1)
    return np.bincount(idx, minlength=n) / step


def _rod_pieces(parts: list[tuple[int, int]], band: tuple, pieces: tuple, *,
                cos_max: float, max_width_ratio: float, max_offset: float,
                min_inside: float, max_stray: float, max_cover: float,
                comp_area: float) -> list[int] | None:
    """The particles that are pieces of a band when every particle it holds
    is one (see :func:`whole_rods`), else None.  ``parts``: ``(label,
    pixels in the band)``; ``band``: its ``shapes`` centroid, width and axis;
    ``pieces``: ``(area, centroid, elongation, width, axis)`` arrays of all
    particles."""
    area, cen, elong, wid, axis = pieces
    bc, bw, bd = band
    inside = [p for p, n in parts if n >= min_inside * area[p]]
    if not inside or any(max_stray * area[p] < n < min_inside * area[p] for p, n in parts):
        return None  # nothing to make whole, or a particle half in, half out
    if len(inside) == 1 and area[inside[0]] >= max_cover * comp_area:
        return None  # already (nearly) the whole band
    for p in inside:
        if elong[p] >= 2.0 and abs(float(axis[p] @ bd)) < cos_max:
            return None  # a piece across the band
        if not bw / max_width_ratio <= wid[p] <= max_width_ratio * bw:
            return None  # a piece narrower or wider than the band: not its width
        off = cen[p] - bc
        if abs(off[0] * bd[1] - off[1] * bd[0]) > max_offset * bw:
            return None  # a piece beside the band's axis, not on it
    return inside


def whole_rods(result: dict, *, fg_threshold: float = 0.5, min_elongation: float = 6.0,
               max_angle: float = 15.0, max_width_ratio: float = 1.3, max_offset: float = 0.25,
               min_inside: float = 0.5, max_stray: float = 0.1, max_cover: float = 0.8,
               min_waist: float = 0.6) -> dict:
    """Make a long rod whole from the network's foreground, in a
    ``segment_image`` result with a ``seed`` map.

    The bands are the connected pieces of the foreground (``seed`` above
    ``fg_threshold``, grown to the labels' size) together with the
    particles.  A band replaces the particles it holds (they become one
    particle: the band and their pixels) when

    - it is a long rod: elongation (:func:`shapes`) at least
      ``min_elongation``;
    - it is even: across its middle (the slices of :func:`width_profile`,
      one width long, less a tenth, at least one, at each end) it is
      nowhere narrower than ``min_waist`` times its median width (two
      particles touching end to end have a waist);
    - every particle with at least ``min_inside`` of its pixels in it is a
      piece of it: as wide as the band (short axes within
      ``max_width_ratio``), on its axis (centroid at most ``max_offset``
      band widths from it) and, when elongated (2 or more), along it
      (within ``max_angle`` degrees);
    - no particle lies partly in it (more than ``max_stray`` of its pixels
      but less than ``min_inside``);
    - it holds at least one piece, and more than one or a single piece
      covering less than ``max_cover`` of it (else it is whole already).

    A particle the band leaves out is kept as it is.  The new particle
    takes its lowest piece's place; ``scores``, ``uncertainty`` and (when
    present) ``seed_scores`` become the area-weighted means of the pieces'.
    Labels are renumbered ``1..K'``; ``whole_rods`` counts the bands made
    whole.  Without a ``seed`` map the result comes back unchanged.  The
    input dict is not modified.

    >>> lab = np.zeros((20, 120), np.int32)
    >>> lab[8:13, 10:40] = 1; lab[8:13, 60:100] = 2  # a rod whose middle was dropped
    >>> seed = np.zeros((20, 120)); seed[8:13, 5:110] = 0.9
    >>> r = whole_rods({"labels": lab, "seed": seed, "scores": np.array([0.8, 0.9]),
    ...                 "uncertainty": np.zeros(2)})
    >>> r["whole_rods"], int(r["labels"].max()), int((r["labels"] == 1).sum())
    (1, 1, 525)
    """
    labels = np.asarray(result["labels"])
    out = dict(result)
    out["whole_rods"] = 0
    seed = result.get("seed")
    k = int(labels.max()) if labels.size else 0
    if seed is None or k == 0:
        return out
    seed = np.asarray(seed)
    if seed.shape != labels.shape:  # a first look at the seed map's size: most images stop
        ys = (np.arange(seed.shape[0]) + 0.5) * labels.shape[0] / seed.shape[0]
        xs = (np.arange(seed.shape[1]) + 0.5) * labels.shape[1] / seed.shape[1]
        small = labels[ys.astype(np.int64)][:, xs.astype(np.int64)] > 0
        coarse, _ = ndi.label((seed > fg_threshold) | small)
        long = shapes(label_moments(coarse))[1] >= 0.8 * min_elongation
        long[0] = False
        if not long[coarse[small]].any():  # no long band that holds a particle
            return out
    band_lab, n = ndi.label((grown_map(seed, labels.shape) > fg_threshold) | (labels > 0))
    bm = label_moments(band_lab)
    bc, be, bw, bd = shapes(bm)
    rods = np.flatnonzero(be[1:] >= min_elongation) + 1
    if rods.size == 0:
        return out
    pm = label_moments(labels)
    pc, pe, pw, pd = shapes(pm)
    fg = labels > 0
    codes, counts = np.unique(labels[fg].astype(np.int64) * (n + 1) + band_lab[fg],
                              return_counts=True)
    held: dict[int, list[tuple[int, int]]] = {}
    for code, m in zip(codes.tolist(), counts.tolist()):
        held.setdefault(code % (n + 1), []).append((code // (n + 1), m))
    tests = dict(cos_max=math.cos(math.radians(max_angle)), max_width_ratio=max_width_ratio,
                 max_offset=max_offset, min_inside=min_inside, max_stray=max_stray,
                 max_cover=max_cover)
    pieces = (pm[:, 0], pc, pe, pw, pd)
    boxes = ndi.find_objects(band_lab)
    group = np.arange(k + 1)
    new = labels.copy()
    made = 0
    for c in rods.tolist():
        inside = _rod_pieces(held.get(c, []), (bc[c], bw[c], bd[c]), pieces,
                             comp_area=bm[c, 0], **tests)
        if inside is None:
            continue
        box = boxes[c - 1]
        ys, xs = np.nonzero(band_lab[box] == c)
        ys, xs = ys + box[0].start, xs + box[1].start
        prof = width_profile(ys, xs, bc[c], bd[c], max(bw[c] / SHORT_AXIS_PER_WIDTH, 2.0))
        cut = max(prof.size // 10, 1)  # the end slices are partial: a rod has ends
        middle = prof[cut:prof.size - cut] if prof.size > 2 * cut else prof
        if middle.min() < min_waist * np.median(middle):
            continue
        first = min(inside)
        new[ys, xs] = np.where((labels[ys, xs] == 0) | np.isin(labels[ys, xs], inside), first,
                               new[ys, xs])
        group[inside] = first
        made += 1
    if not made:
        return out
    out = regrouped(result, new, group, pm[1:, 0])
    out["whole_rods"] = made
    return out
