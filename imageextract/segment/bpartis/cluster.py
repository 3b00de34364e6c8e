"""Inference-time clustering of pixel embeddings into instances, and the
mutual-information uncertainty of MC-dropout seed maps (pure NumPy)."""

from __future__ import annotations

import math

import numpy as np

_LN2 = math.log(2.0)


def cluster(offsets: np.ndarray, log_s: np.ndarray, seed: np.ndarray, *,
            coord_scale: float, seed_threshold: float = 0.5, fg_threshold: float = 0.5,
            phi_threshold: float = 0.5, min_size: int = 10, min_unclaimed: float = 0.5,
            window_factor: float = 3.0, window_margin: int = 16,
            max_instances: int = 5000) -> tuple[np.ndarray, np.ndarray]:
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
    h, w = seed.shape
    labels = np.zeros((h, w), np.int32)
    fg = seed > fg_threshold
    if not fg.any():
        return labels, np.zeros(0, np.float64)
    ey = offsets[0].astype(np.float32) + (np.arange(h, dtype=np.float32)[:, None] / coord_scale)
    ex = offsets[1].astype(np.float32) + (np.arange(w, dtype=np.float32)[None, :] / coord_scale)
    cand = np.flatnonzero((seed > seed_threshold) & fg)
    cand = cand[_descending(seed.ravel()[cand])]
    claimed = ~fg  # background counts as claimed
    claimed_flat = claimed.ravel()  # a view: claims below show up in it
    scores = []
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
        sy = math.exp(float(log_s[0, cy, cx]))
        sx = math.exp(float(log_s[1, cy, cx]))
        ry = math.sqrt(ln_t / max(sy, 1e-12)) * coord_scale
        rx = math.sqrt(ln_t / max(sx, 1e-12)) * coord_scale
        my = int(min(h, window_factor * ry + window_margin))
        mx = int(min(w, window_factor * rx + window_margin))
        y0, y1 = max(0, cy - my), min(h, cy + my + 1)
        x0, x1 = max(0, cx - mx), min(w, cx + mx + 1)
        shape = (y1 - y0, x1 - x0)
        n = shape[0] * shape[1]
        if n > buf_d.size:
            size = min(h * w, max(n, 2 * buf_d.size))
            buf_d, buf_x = np.empty(size, np.float32), np.empty(size, np.float32)
            buf_p, buf_f = np.empty(size, bool), np.empty(size, bool)
        d, dx = buf_d[:n].reshape(shape), buf_x[:n].reshape(shape)
        prop, free = buf_p[:n].reshape(shape), buf_f[:n].reshape(shape)
        # d = (ey - ey_c)^2 sy + (ex - ex_c)^2 sx, in place
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
            scores.append(float(seed[y0:y1, x0:x1][free].mean()))
            if k >= max_instances:
                break
        claimed_win |= prop
    return labels, np.asarray(scores, np.float64)


def _descending(values: np.ndarray) -> np.ndarray:
    """``np.argsort(-values, kind="stable")`` for values >= 0: the order of
    decreasing value, ties in index order.  For float16/float32 values it
    sorts one int64 key per value (the inverted bits of the value, which
    order like the value for non-negative floats, then the index): every
    key differs, so the fast unstable sort gives the stable order, about
    twice as fast.

    >>> _descending(np.array([0.5, 0.9, 0.5, 1.0], np.float32)).tolist()
    [3, 1, 0, 2]
    """
    if values.dtype not in (np.float16, np.float32) or values.size >= 1 << 32 \
            or (values.size and values.min() < 0):
        return np.argsort(-values, kind="stable")
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
