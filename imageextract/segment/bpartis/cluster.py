"""Inference-time clustering of pixel embeddings into instances, and the
mutual-information uncertainty of MC-dropout seed maps (pure NumPy)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

_LN2 = math.log(2.0)


def cluster(offsets: np.ndarray, log_s: np.ndarray, seed: np.ndarray, *,
            coord_scale: float, seed_threshold: float = 0.5, fg_threshold: float = 0.5,
            phi_threshold: float = 0.5, min_size: int = 10, min_unclaimed: float = 0.5,
            window_factor: float = 3.0, window_margin: int = 16,
            max_instances: int = 5000, with_scores: bool = True,
            engine: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Greedy seed clustering (SpatialEmbeddings-style).

    Repeatedly take the highest unclaimed seed above ``seed_threshold``; its
    embedding is the centre and its ``log_s`` the (elliptical) bandwidth;
    claim the unclaimed foreground pixels (seed > ``fg_threshold``) with
    ``phi > phi_threshold``; keep the instance if it has at least
    ``min_size`` pixels and at least ``min_unclaimed`` of its proposal was
    still unclaimed.

    The search for a centre's pixels is limited to a window around the seed
    pixel: ``window_factor`` times the radius at which ``phi`` falls to
    ``phi_threshold``, plus ``window_margin`` pixels.

    Parameters
    ----------
    offsets : (2, M, N) float array
        Offsets (y, x) in embedding units; embedding = offset + coordinate.
    log_s : (2, M, N) float array
        ``log(1 / (2 sigma^2))`` per axis.
    seed : (M, N) float array in [0, 1]
    coord_scale : float
        Pixels per embedding unit.
    with_scores : bool
        False skips the scores (an empty array is returned in their place).
    engine : {"auto", "compiled", "numpy"}
        The greedy loop compiled with numba (``"compiled"``; ``"auto"``
        uses it when numba is installed) or in NumPy, one window at a time;
        the same labels either way (the compiled loop does the same float32
        arithmetic pixel by pixel), the compiled one about ten times faster.

    Returns
    -------
    labels : (M, N) int32
        Consecutive labels 1..K, 0 = background.
    scores : (K,) float64
        Mean seed inside each instance.

    Examples
    --------
    >>> off = np.zeros((2, 8, 8), np.float32); ls = np.full((2, 8, 8), -2.0, np.float32)
    >>> sd = np.zeros((8, 8), np.float32); sd[2:6, 2:6] = 0.9
    >>> labels, scores = cluster(off, ls, sd, coord_scale=8.0, min_size=1)
    >>> int(labels.max()), labels[3, 3]
    (1, np.int32(1))
    """
    if engine not in ("auto", "compiled", "numpy"):
        raise ValueError(f"engine must be 'auto', 'compiled' or 'numpy', got {engine!r}")
    h, w = seed.shape
    labels = np.zeros((h, w), np.int32)
    fg = seed > fg_threshold
    if not fg.any():
        return labels, np.zeros(0, np.float64)
    ey = offsets[0].astype(np.float32) + (np.arange(h, dtype=np.float32)[:, None] / coord_scale)
    ex = offsets[1].astype(np.float32) + (np.arange(w, dtype=np.float32)[None, :] / coord_scale)
    cand = np.flatnonzero((seed > seed_threshold) & fg)
    cand = cand[_descending(seed.ravel()[cand])]
    greedy = _greedy_compiled() if engine in ("auto", "compiled") else None
    if greedy is None:
        if engine == "compiled":
            raise ImportError("engine='compiled' needs numba (pip install numba)")
        k = _greedy_numpy(ey, ex, log_s, fg, cand, labels, coord_scale=coord_scale,
                          phi_threshold=phi_threshold, min_size=min_size,
                          min_unclaimed=min_unclaimed, window_factor=window_factor,
                          window_margin=window_margin, max_instances=max_instances)
    else:
        k = greedy(ey, ex, np.ascontiguousarray(log_s[0], np.float32),
                   np.ascontiguousarray(log_s[1], np.float32), fg, cand, labels,
                   float(coord_scale), -math.log(phi_threshold), int(min_size),
                   float(min_unclaimed), float(window_factor), int(window_margin),
                   int(max_instances))
    if not with_scores:
        return labels, np.zeros(0, np.float64)
    # each instance's mean seed, over its pixels in row-major order (as a
    # masked window gives them: the same float sum)
    scores = np.empty(k, np.float64)
    for i, box in enumerate(ndimage.find_objects(labels, k)):
        scores[i] = float(seed[box][labels[box] == i + 1].mean())
    return labels, scores


def sigma_px(log_s: np.ndarray, *, coord_scale: float) -> np.ndarray:
    """The bandwidth ``sigma`` in px of ``log_s`` = ``log(1 / (2 sigma^2))``
    in embedding units (the network's sigma output, as :func:`cluster` reads
    it); ``phi > 0.5`` reaches ``sqrt(2 ln 2) sigma``, about 1.18 sigma.
    Computed in the floating type of ``log_s`` (float64 for other input).

    >>> float(sigma_px(np.log(1 / (2 * 0.25 ** 2)), coord_scale=8.0))
    2.0
    """
    ls = np.asarray(log_s)
    if not np.issubdtype(ls.dtype, np.floating):
        ls = ls.astype(np.float64)
    return np.sqrt(0.5 * np.exp(-ls)) * coord_scale


def _window(ls_y, ls_x, cy, cx, h, w, coord_scale, ln_t, window_factor, window_margin):
    """A centre's bandwidths ``(sy, sx)`` (``exp`` of its ``log_s``), the
    ellipse's reach in px ``(ry, rx)`` and its window ``y0, y1, x0, x1``:
    the arithmetic both greedy loops share (float64), so they give the same
    labels.  Plain Python; the compiled loop calls a numba-compiled copy."""
    sy = math.exp(ls_y)
    sx = math.exp(ls_x)
    ry = math.sqrt(ln_t / max(sy, 1e-12)) * coord_scale
    rx = math.sqrt(ln_t / max(sx, 1e-12)) * coord_scale
    my = int(min(h, window_factor * ry + window_margin))
    mx = int(min(w, window_factor * rx + window_margin))
    return (sy, sx, ry, rx, max(0, cy - my), min(h, cy + my + 1), max(0, cx - mx),
            min(w, cx + mx + 1))


def _greedy_numpy(ey, ex, log_s, fg, cand, labels, *, coord_scale, phi_threshold, min_size,
                  min_unclaimed, window_factor, window_margin, max_instances) -> int:
    """The greedy loop of :func:`cluster` in NumPy (one window at a time);
    fills ``labels`` in place and returns the number of instances."""
    h, w = fg.shape
    claimed = ~fg  # background counts as claimed
    claimed_flat = claimed.ravel()  # a view: claims below show up in it
    k = 0
    ln_t = -math.log(phi_threshold)
    pos, n_cand = 0, cand.size
    # scratch space for the window arrays, grown as needed: allocating them
    # afresh for each centre cost as much as the arithmetic
    buf_d = buf_x = buf_p = buf_f = np.empty(0, np.float32)
    while pos < n_cand:
        flat = int(cand[pos])
        if claimed_flat[flat]:
            # skip the run of claimed candidates ahead in one vectorised look
            # (most are pixels of instances already taken)
            end = min(n_cand, pos + 4096)
            nxt = np.flatnonzero(~claimed_flat[cand[pos:end]])
            pos = pos + int(nxt[0]) if nxt.size else end
            continue
        pos += 1
        cy, cx = divmod(flat, w)
        sy, sx, _, _, y0, y1, x0, x1 = _window(
            float(log_s[0, cy, cx]), float(log_s[1, cy, cx]), cy, cx, h, w, coord_scale, ln_t,
            window_factor, window_margin)
        shape = (y1 - y0, x1 - x0)
        n = shape[0] * shape[1]
        if n > buf_d.size:
            size = min(h * w, max(n, 2 * buf_d.size))
            buf_d, buf_x = np.empty(size, np.float32), np.empty(size, np.float32)
            buf_p, buf_f = np.empty(size, bool), np.empty(size, bool)
        d, dx = buf_d[:n].reshape(shape), buf_x[:n].reshape(shape)
        prop, free = buf_p[:n].reshape(shape), buf_f[:n].reshape(shape)
        # d = (ey - ey_c)^2 sy + (ex - ex_c)^2 sx, in place, in float32
        np.subtract(ey[y0:y1, x0:x1], ey[cy, cx], out=d)
        d *= d
        d *= sy
        np.subtract(ex[y0:y1, x0:x1], ex[cy, cx], out=dx)
        dx *= dx
        dx *= sx
        d += dx
        np.less(d, ln_t, out=prop)
        prop &= fg[y0:y1, x0:x1]
        n_prop = np.count_nonzero(prop)
        claimed_win = claimed[y0:y1, x0:x1]
        np.greater(prop, claimed_win, out=free)  # prop & ~claimed
        n_free = np.count_nonzero(free)
        claimed[cy, cx] = True
        if n_prop == 0:
            continue
        if n_free >= min_size and n_free >= min_unclaimed * n_prop:
            k += 1
            np.copyto(labels[y0:y1, x0:x1], k, where=free)
            if k >= max_instances:
                break
        claimed_win |= prop
    return k


_COMPILED: list = []
_window_compiled = None  # _window compiled, set by _greedy_compiled


def compiled_clustering() -> bool:
    """Whether :func:`cluster` runs compiled (numba installed): then it also
    releases the GIL, and several clusterings can run on threads at once."""
    return _greedy_compiled() is not None


def _greedy_compiled():
    """The greedy loop compiled with numba (None without numba): the same
    arithmetic as :func:`_greedy_numpy` (float32 distances, float64 window
    sizes), pixel by pixel, so the same labels, about ten times faster.
    Compiled on first use and cached on disk by numba."""
    if _COMPILED:
        return _COMPILED[0]
    try:
        import numba
    except ImportError:
        _COMPILED.append(None)
        return None

    # a module global, not a closure variable: numba caches only functions
    # whose callees it can find again by name
    global _window_compiled
    _window_compiled = numba.njit(cache=True, nogil=True)(_window)

    @numba.njit(cache=True, nogil=True)
    def greedy(ey, ex, ls0, ls1, fg, cand, labels, coord_scale, ln_t, min_size,
               min_unclaimed, window_factor, window_margin, max_instances):
        h, w = fg.shape
        claimed = np.logical_not(fg)
        ln_t32 = np.float32(ln_t)
        # the foreground pixels bucketed by their embedding (cells of CELL
        # px): a centre's proposal is looked for among the pixels whose
        # embedding lies near its own, not over its whole window
        cell = 8.0
        pad = coord_scale + 2 * cell  # |offset| < 1 embedding unit
        gh = int((h + 2 * pad) / cell) + 1
        gw = int((w + 2 * pad) / cell) + 1
        start = np.zeros(gh * gw + 1, np.int64)
        where = np.full(h * w, -1, np.int32)  # each foreground pixel's cell
        n_fg = 0
        for y in range(h):
            for x in range(w):
                if fg[y, x]:
                    # the values are positive (pad exceeds any offset), so
                    # int() is floor(); the clip only guards odd inputs
                    gy = min(max(int((ey[y, x] * coord_scale + pad) / cell), 0), gh - 1)
                    gx = min(max(int((ex[y, x] * coord_scale + pad) / cell), 0), gw - 1)
                    c = gy * gw + gx
                    where[y * w + x] = c
                    start[c + 1] += 1
                    n_fg += 1
        for i in range(gh * gw):
            start[i + 1] += start[i]
        fill = start[:-1].copy()
        # each member's position and embedding, in cell order (no division
        # and no scattered reads in the queries)
        mem_y = np.empty(n_fg, np.int32)
        mem_x = np.empty(n_fg, np.int32)
        mem_ey = np.empty(n_fg, np.float32)
        mem_ex = np.empty(n_fg, np.float32)
        for y in range(h):
            for x in range(w):
                c = where[y * w + x]
                if c >= 0:
                    i = fill[c]
                    mem_y[i], mem_x[i] = y, x
                    mem_ey[i], mem_ex[i] = ey[y, x], ex[y, x]
                    fill[c] += 1
        prop = np.empty(n_fg, np.int64)
        k = 0
        for j in range(cand.size):
            flat = cand[j]
            cy, cx = flat // w, flat % w
            if claimed[cy, cx]:
                continue
            sy, sx, ry, rx, y0, y1, x0, x1 = _window_compiled(
                np.float64(ls0[cy, cx]), np.float64(ls1[cy, cx]), cy, cx, h, w, coord_scale,
                ln_t, window_factor, window_margin)
            sy32, sx32 = np.float32(sy), np.float32(sx)
            eyc, exc = ey[cy, cx], ex[cy, cx]
            # cells within the ellipse's reach in embedding space, one cell
            # to spare for rounding
            py, px = eyc * coord_scale + pad, exc * coord_scale + pad
            gy0 = max(int(math.floor((py - ry) / cell)) - 1, 0)
            gy1 = min(int(math.floor((py + ry) / cell)) + 1, gh - 1)
            gx0 = max(int(math.floor((px - rx) / cell)) - 1, 0)
            gx1 = min(int(math.floor((px + rx) / cell)) + 1, gw - 1)
            n_prop = 0
            n_free = 0
            for gy in range(gy0, gy1 + 1):
                for gx in range(gx0, gx1 + 1):
                    c = gy * gw + gx
                    for m in range(start[c], start[c + 1]):
                        y, x = mem_y[m], mem_x[m]
                        if y < y0 or y >= y1 or x < x0 or x >= x1:
                            continue
                        a = mem_ey[m] - eyc
                        b = mem_ex[m] - exc
                        if (a * a) * sy32 + (b * b) * sx32 < ln_t32:
                            prop[n_prop] = m
                            n_prop += 1
                            if not claimed[y, x]:
                                n_free += 1
            if n_prop == 0:
                claimed[cy, cx] = True
                continue
            accept = n_free >= min_size and n_free >= min_unclaimed * n_prop
            if accept:
                k += 1
            for i in range(n_prop):
                y, x = mem_y[prop[i]], mem_x[prop[i]]
                if accept and not claimed[y, x]:
                    labels[y, x] = k
                claimed[y, x] = True
            claimed[cy, cx] = True
            if accept and k >= max_instances:
                break
        return k

    _COMPILED.append(greedy)
    return greedy


def _descending(values: np.ndarray) -> np.ndarray:
    """``np.argsort(-values, kind="stable")`` for values >= 0: the order of
    decreasing value, ties in index order.  For float32 values it sorts one
    int64 key per value (the inverted bits of the value, which order like
    the value for non-negative floats, then the index): every key differs,
    so the fast unstable sort gives the stable order, about twice as fast.
    Float16 values (the MC samples' seeds) sort by their inverted 16 bits
    alone, with NumPy's stable radix sort.

    >>> _descending(np.array([0.5, 0.9, 0.5, 1.0], np.float32)).tolist()
    [3, 1, 0, 2]
    >>> _descending(np.array([0.5, 0.9, -0.0, 0.5, 1.0, 0.0], np.float16)).tolist()
    [4, 1, 0, 3, 2, 5]
    """
    if values.dtype not in (np.float16, np.float32) or values.size >= 1 << 32 \
            or (values.size and values.min() < 0):
        return np.argsort(-values, kind="stable")
    if values.dtype == np.float16:
        # 16-bit keys: NumPy's stable sort of them is a radix sort (a third faster)
        key16 = np.uint16(0xFFFF) - (values + np.float16(0)).view(np.uint16)
        return np.argsort(key16, kind="stable")
    # + 0 turns -0.0, whose sign bit would sort it last, into +0.0
    bits = (values.astype(np.float32) + np.float32(0)).view(np.uint32).astype(np.int64)
    key = ((0xFFFFFFFF - bits) << 32) | np.arange(values.size, dtype=np.int64)
    return np.sort(key) & 0xFFFFFFFF


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of Bernoulli(p), elementwise; 0 at p = 0 or 1."""
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def mutual_information(samples: np.ndarray) -> np.ndarray:
    """Per-pixel mutual information (BALD) of MC samples of a Bernoulli map.

    ``MI = H(mean_t p_t) - mean_t H(p_t)``, in nats (at most ``ln 2``).

    Parameters
    ----------
    samples : (T, ...) float array in [0, 1]

    Returns
    -------
    (...) float64 array

    Examples
    --------
    >>> bool(np.isclose(mutual_information(np.array([[0.0], [1.0]]))[0], np.log(2)))
    True
    """
    samples = np.asarray(samples, np.float64)
    mi = binary_entropy(samples.mean(0)) - binary_entropy(samples).mean(0)
    return np.clip(mi, 0.0, _LN2)


def instance_means(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``values`` (M, N) inside each label 1..k of ``labels``; (k,)."""
    if k == 0:
        return np.zeros(0, np.float64)
    lab = labels.ravel()
    sums = np.bincount(lab, weights=values.ravel().astype(np.float64), minlength=k + 1)
    counts = np.bincount(lab, minlength=k + 1)
    return sums[1:] / np.maximum(counts[1:], 1)


def instance_consistency(labels: np.ndarray, k: int, sample_labels) -> np.ndarray:
    """How steadily each instance comes back when the MC samples are
    clustered one by one: for instance ``i`` (label ``i + 1`` of ``labels``),
    the mean over the samples of its best IoU with an instance of that
    sample; (k,) in [0, 1].

    An instance that every sample reproduces scores 1; one that the samples
    split, merge with a neighbour or drop scores less.

    >>> lab = np.array([[1, 1, 0, 2, 2]], np.int32)
    >>> instance_consistency(lab, 2, [lab, np.array([[1, 1, 0, 2, 0]])]).tolist()
    [1.0, 0.75]
    """
    if k == 0:
        return np.zeros(0, np.float64)
    lab = np.asarray(labels).ravel()
    area = np.bincount(lab, minlength=k + 1)[1:].astype(np.float64)
    total = np.zeros(k, np.float64)
    n = 0
    for other in sample_labels:
        o = np.asarray(other).ravel()
        if o.shape != lab.shape:
            raise ValueError(f"sample labels of shape {np.shape(other)} do not match "
                             f"labels of shape {np.shape(labels)}")
        n += 1
        # sparse overlap counts: a dense (k + 1) x (m + 1) table reaches
        # gigabytes on large images with thousands of particles
        m1 = int(o.max(initial=0)) + 1
        both = (lab > 0) & (o > 0)
        pairs, inter = np.unique(lab[both].astype(np.int64) * m1 + o[both], return_counts=True)
        if not pairs.size:
            continue
        li, oi = np.divmod(pairs, m1)
        o_area = np.bincount(o).astype(np.float64)
        iou = inter / np.maximum(area[li - 1] + o_area[oi] - inter, 1.0)
        best = np.zeros(k, np.float64)
        np.maximum.at(best, li - 1, iou)
        total += best
    return total / max(n, 1)
