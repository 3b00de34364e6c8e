"""Learned rescoring of the ``bpartis`` backend's particles.

The clustering proposes particles; many of its mistakes (a patch of
background, a fragment of a large particle, two particles merged into one)
look different from real particles once the whole proposal is in view: an
outline that does not follow an edge in the image, an area far from the
image's other particles, a seed map that was barely above threshold, MC
samples that disagree.  As in Mask Scoring R-CNN, a small model reads such
per-particle features and gives each proposal the probability that it is a
real particle, outlined well enough to match it (IoU > 0.5); proposals below
a threshold are dropped.

Here the model is a logistic regression on the features and their squares
(:data:`FEATURES`), fitted on the network's own proposals on training
images (:func:`fit_rescorer`, labels from :func:`match_labels`).  It is
torch-free and lives in ``config.json`` (``inference.rescore``).  A second
kind, a small ensemble of perceptrons (:class:`MLPRescorer`, fitted with
torch, evaluated in NumPy), can learn combinations of features; it was not
better end to end (``benchmarks/bench_rescorer_kind.py``).
:func:`load_rescorer` reads either from ``config.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from .cluster import instance_means

logger = logging.getLogger(__name__)

#: Per-particle features, in column order (see :func:`instance_features`).
FEATURES = (
    "score",      # mean seed inside the particle
    "uncertainty",  # the backend's per-particle uncertainty
    "mi",         # mean seed mutual information inside the particle (nats)
    "log_rel_area",  # log(area / median area of the confident particles)
    "log_size",   # log(area at the working scale / area of the training disc)
    "solidity",   # area / area of the convex hull of its pixel squares
    "border",     # 1 if the particle touches the image border
    "contrast",   # |mean inside - mean of a 4-px ring outside| / image std
    "log_count",  # log(number of particles proposed in the image)
    "area_frac",  # area / image area
    "log_scale",  # log(working scale)
    "extent",     # longest bounding-box side / longest image side
    "neighbours",  # fraction of the outer outline that touches other particles
    "edge",       # mean gradient on the outline / mean gradient of the image
    "texture",    # intensity std inside / image std
    "holes",      # fraction of the filled outline that is not particle
    "log_rel_max",  # log(area / largest area)
)


def _row_extents(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``m`` holding pixels, and the first and last pixel's
    column in each."""
    rows = np.flatnonzero(m.any(axis=1))
    sub = m[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    return rows, first, last


def _convex_area(rows: np.ndarray, first: np.ndarray, last: np.ndarray) -> float:
    """Area of the convex hull of the pixel squares of a mask, from its
    :func:`_row_extents`.

    The hull of a set of pixel squares is the hull of the outer corners of
    each row's first and last pixel, so only those (four per row) go to
    Qhull.
    """
    ys = np.concatenate([rows, rows + 1, rows, rows + 1]).astype(np.float64)
    xs = np.concatenate([first, first, last + 1, last + 1]).astype(np.float64)
    try:
        return float(ConvexHull(np.stack([ys, xs], 1)).volume)
    except QhullError:  # only for degenerate input, which pixel squares never are
        return float(np.sum(last - first + 1))


def _pad1(m: np.ndarray) -> np.ndarray:
    """``m`` with a one-pixel frame of False around it."""
    mp = np.zeros((m.shape[0] + 2, m.shape[1] + 2), bool)
    mp[1:-1, 1:-1] = m
    return mp


def _neighbours(mp: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four 4-neighbour views (up, down, left, right) of the inner part of
    the 1-px padded array ``mp``."""
    return mp[:-2, 1:-1], mp[2:, 1:-1], mp[1:-1, :-2], mp[1:-1, 2:]


def _dilate(m: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_dilation(m, iterations=...)`` with the 4-connected cross
    (outside the array counts as background), by shifted ORs."""
    for _ in range(iterations):
        up, down, left, right = _neighbours(_pad1(m))
        m = m | up | down | left | right
    return m


def _holes(m: np.ndarray, first: np.ndarray, last: np.ndarray) -> int:
    """Pixels that ``ndi.binary_fill_holes(m)`` adds: background pixels not
    4-connected to the border of the array.  A hole pixel lies between two
    pixels of ``m`` in its row, so a mask without such gaps (``first`` and
    ``last`` from :func:`_row_extents`) has none."""
    if np.count_nonzero(m) == int(np.sum(last - first + 1)):
        return 0
    lbl, n = ndi.label(~m)
    edge = np.unique(np.concatenate([lbl[0], lbl[-1], lbl[:, 0], lbl[:, -1]]))
    inside = np.ones(n + 1, bool)
    inside[edge] = False
    inside[0] = False
    return int(np.count_nonzero(inside[lbl]))


def image_statistics(image: np.ndarray) -> dict:
    """The image-wide inputs of :func:`instance_features` (grey image, its
    standard deviation and gradient magnitude), to compute once when the
    same image is rescored at several working scales."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    gy, gx = np.gradient(ndi.gaussian_filter(img, 1.0))
    grad = np.hypot(gy, gx)
    return {"grey": img, "sd": img.std() + 1e-6, "grad": grad, "grad_mean": grad.mean() + 1e-6}


def instance_features(image: np.ndarray, labels: np.ndarray, *, scores: np.ndarray,
                      uncertainty: np.ndarray, mi: np.ndarray, scale: float,
                      target_diameter: float = 48.0, confident: float = 0.82,
                      stats: dict | None = None) -> np.ndarray:
    """Features (:data:`FEATURES`) of the ``K`` particles of ``labels``.

    Parameters
    ----------
    image : (M, N) or (M, N, 3) array
        The micrograph at the resolution of ``labels``.
    labels : (M, N) int
        Particles 1..K (0 = background).
    scores, uncertainty : (K,) arrays
        Mean seed and per-particle uncertainty from the backend.
    mi : (M, N) array
        Per-pixel seed mutual information.
    scale : float
        Working scale the network ran at (output px per input px).
    target_diameter : float
        Particle diameter (px) the network was trained at.
    confident : float
        Particles with a score at least this set the median area.
    stats : dict, optional
        :func:`image_statistics` of ``image``, when already computed.

    Returns
    -------
    (K, len(FEATURES)) float64
    """
    labels = np.asarray(labels)
    shape = np.shape(image)[:2]
    if shape != labels.shape:
        raise ValueError(f"image shape {shape} does not match labels shape {labels.shape}")
    k = int(np.asarray(scores).size)
    out = np.zeros((k, len(FEATURES)))
    if k == 0:
        return out
    st = image_statistics(image) if stats is None else stats
    img, sd, grad, grad_mean = st["grey"], st["sd"], st["grad"], st["grad_mean"]
    scores = np.asarray(scores, dtype=np.float64)
    h, w = labels.shape
    area = np.bincount(labels.ravel(), minlength=k + 1)[1:k + 1].astype(np.float64)
    conf = scores >= confident
    med = np.median(area[conf]) if conf.any() else np.median(area)
    med = max(med, 1.0)
    mi_mean = instance_means(np.asarray(mi), labels, k)
    disc = np.pi / 4 * target_diameter ** 2
    pad = 6
    for i, sl in enumerate(ndi.find_objects(labels, k)):
        if sl is None or area[i] == 0:
            continue
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, h)
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, w)
        lab = labels[y0:y1, x0:x1]
        m = lab == i + 1
        # one-pixel erosion and dilation by the 4-connected cross, with
        # outside the window as background (as scipy's binary_erosion and
        # binary_dilation); the window is padded, so that edge is the image's
        up, down, left, right = _neighbours(_pad1(m))
        dil1 = m | up | down | left | right
        outline = m & ~(up & down & left & right)
        outer = dil1 & ~m
        ring = _dilate(dil1, 3) & ~m & (lab == 0)
        win = img[y0:y1, x0:x1]
        inside = win[m]
        contrast = abs(inside.mean() - win[ring].mean()) / sd if ring.any() else 0.0
        touching = np.count_nonzero((lab > 0) & outer) / max(np.count_nonzero(outer), 1)
        rows, first, last = _row_extents(m)
        filled = area[i] + _holes(m, first, last)
        hull = _convex_area(rows, first, last)
        border = float(sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h
                       or sl[1].stop == w)
        extent = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) / max(h, w)
        out[i] = [
            scores[i], uncertainty[i], mi_mean[i], np.log(area[i] / med),
            np.log(area[i] * scale ** 2 / disc + 1e-9), area[i] / max(hull, 1.0),
            border, contrast, np.log(k), area[i] / (h * w), np.log(scale), extent, touching,
            grad[y0:y1, x0:x1][outline].mean() / grad_mean, inside.std() / sd,
            1.0 - area[i] / max(filled, 1), np.log(area[i] / area.max()),
        ]
    return out


def match_labels(truth: np.ndarray, labels: np.ndarray, k: int | None = None, *,
                 iou: float = 0.5) -> np.ndarray:
    """1.0 for each predicted particle that is the best match (IoU > ``iou``)
    of some true particle, else 0.0 (false, merged, fragmented or duplicate).

    >>> t = np.array([[1, 1, 0, 2, 2]]); p = np.array([[1, 1, 0, 2, 0]])
    >>> match_labels(t, p).tolist()
    [1.0, 0.0]
    """
    from ...evaluation.metrics import _check_pair, _overlap

    truth, labels = _check_pair(truth, labels)
    k = int(labels.max(initial=0)) if k is None else int(k)
    y = np.zeros(k)
    ov = _overlap(truth, labels)  # the metrics' contingency table, present ids only
    for row in ov.iou():
        cand = np.nonzero(row > iou)[0]
        if cand.size:
            y[ov.pred_ids[cand[np.argmax(row[cand])]] - 1] = 1.0
    return y


def _expand(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, x ** 2], axis=1)


@dataclass(kw_only=True)
class _Filter:
    """The settings both rescorer kinds have, and what they do with their
    probabilities (their own fields come first, these by keyword)."""

    threshold: float = 0.5
    features: tuple[str, ...] = FEATURES
    cluster: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    notes: str = ""

    def _rows(self, features: np.ndarray) -> np.ndarray:
        """``features`` as (N, len(:attr:`features`)) float64, or a ValueError."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if x.shape[1] != len(self.features):
            raise ValueError(f"expected {len(self.features)} features per particle "
                             f"({', '.join(self.features)}), got {x.shape[1]}")
        return x

    def matches(self, **settings) -> bool:
        """Whether ``settings`` agree with :attr:`inputs` (where it has them)."""
        return all(self.inputs.get(k, v) == v for k, v in settings.items())

    def keep(self, probability: np.ndarray) -> np.ndarray:
        """Particles to keep: probability >= ``threshold``."""
        return np.asarray(probability) >= self.threshold


@dataclass
class Rescorer(_Filter):
    """Logistic regression on standardised features and their squares.

    ``threshold``: particles with a probability below it are dropped by
    :meth:`keep`.  ``cluster``: the clustering filters its training
    proposals were made with (the backend must propose the same way).
    ``inputs``: the backend settings its features were computed with
    (``mc_samples``, ``uncertainty``); with others the features mean
    something else, and the backend does not use the rescorer.
    """

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: float

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probability that each row is a real, well-outlined particle."""
        x = self._rows(features)
        z = (_expand(x) - self.mean) / self.std
        return 1.0 / (1.0 + np.exp(-np.clip(z @ self.coef + self.intercept, -50, 50)))

    def to_dict(self) -> dict:
        return {"kind": "logistic-quadratic", "features": list(self.features),
                "mean": self.mean.tolist(), "std": self.std.tolist(),
                "coef": self.coef.tolist(), "intercept": float(self.intercept),
                "threshold": float(self.threshold), "cluster": dict(self.cluster),
                "inputs": dict(self.inputs), "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict) -> Rescorer:
        if d.get("kind", "logistic-quadratic") != "logistic-quadratic":
            raise ValueError(f"unknown rescorer kind {d.get('kind')!r}")
        feats = _check_features(d)
        n = 2 * len(feats)
        arrays = {key: np.asarray(d[key], np.float64) for key in ("mean", "std", "coef")}
        for key, a in arrays.items():
            if a.shape != (n,):
                raise ValueError(f"rescorer {key} must have {n} values, got shape {a.shape}")
        return cls(arrays["mean"], arrays["std"], arrays["coef"], float(d["intercept"]),
                   threshold=float(d.get("threshold", 0.5)), features=feats,
                   **_common(d))


def _check_features(d: dict) -> tuple[str, ...]:
    feats = tuple(d.get("features", FEATURES))
    unknown = [f for f in feats if f not in FEATURES]
    if unknown or len(feats) != len(FEATURES):
        raise ValueError(f"rescorer features {list(feats)} do not match this version's "
                         f"{list(FEATURES)}")
    return feats


def _common(d: dict) -> dict:
    return {"cluster": dict(d.get("cluster", {})), "inputs": dict(d.get("inputs", {})),
            "notes": str(d.get("notes", ""))}


@dataclass
class MLPRescorer(_Filter):
    """A small ensemble of perceptrons on the standardised features (two
    hidden ReLU layers each; the probability is the members' mean).  Where
    the logistic :class:`Rescorer` can only weigh each feature on its own, a
    perceptron can learn combinations (crowded *and* touching *and*
    confident, as touching rods are).  Same interface and attributes as
    :class:`Rescorer`; ``members`` holds each member's layers
    ``[(W, b), ...]``."""

    mean: np.ndarray
    std: np.ndarray
    members: list

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probability that each row is a real, well-outlined particle."""
        x = self._rows(features)
        z = (x - self.mean) / self.std
        out = np.zeros(x.shape[0])
        for layers in self.members:
            a = z
            for i, (w, b) in enumerate(layers):
                a = a @ w + b
                if i < len(layers) - 1:
                    a = np.maximum(a, 0.0)
            out += 1.0 / (1.0 + np.exp(-np.clip(a[:, 0], -50, 50)))
        return out / max(len(self.members), 1)

    def to_dict(self) -> dict:
        return {"kind": "mlp", "features": list(self.features),
                "mean": self.mean.tolist(), "std": self.std.tolist(),
                "members": [[{"weight": w.tolist(), "bias": b.tolist()} for w, b in layers]
                            for layers in self.members],
                "threshold": float(self.threshold), "cluster": dict(self.cluster),
                "inputs": dict(self.inputs), "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict) -> MLPRescorer:
        if d.get("kind") != "mlp":
            raise ValueError(f"unknown rescorer kind {d.get('kind')!r}")
        feats = _check_features(d)
        mean, std = (np.asarray(d[key], np.float64) for key in ("mean", "std"))
        if mean.shape != (len(feats),) or std.shape != (len(feats),):
            raise ValueError(f"rescorer mean and std must have {len(feats)} values, got "
                             f"shapes {mean.shape} and {std.shape}")
        members = []
        for layers in d["members"]:
            ls = [(np.asarray(m["weight"], np.float64), np.asarray(m["bias"], np.float64))
                  for m in layers]
            width = len(feats)
            for w, b in ls:
                if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                    raise ValueError(f"rescorer layer of shape {w.shape} (bias {b.shape}) "
                                     f"does not follow one of width {width}")
                width = w.shape[1]
            if not ls or width != 1:
                raise ValueError("each rescorer member must end in one output")
            members.append(ls)
        if not members:
            raise ValueError("an mlp rescorer needs at least one member")
        return cls(mean, std, members, threshold=float(d.get("threshold", 0.5)),
                   features=feats, **_common(d))


#: Rescorer classes by their ``kind`` in ``config.json``.
KINDS = {"logistic-quadratic": Rescorer, "mlp": MLPRescorer}


def rescorer_class(kind: str) -> type:
    """The rescorer class of ``kind`` (:data:`KINDS`), or a ValueError
    naming the kinds there are."""
    if kind not in KINDS:
        raise ValueError(f"unknown rescorer kind {kind!r} (expected one of {list(KINDS)})")
    return KINDS[kind]


def load_rescorer(d: dict) -> Rescorer | MLPRescorer:
    """The rescorer described by ``d`` (``inference.rescore`` of
    ``config.json``; ``kind`` defaults to ``logistic-quadratic``)."""
    return rescorer_class(d.get("kind", "logistic-quadratic")).from_dict(d)


def fit_rescorer(features: np.ndarray, labels: np.ndarray, *, weights: np.ndarray | None = None,
                 l2: float = 1e-2, iterations: int = 50, threshold: float = 0.5) -> Rescorer:
    """Fit a :class:`Rescorer` by Newton's method (L2 penalty ``l2`` on the
    standardised coefficients, none on the intercept).

    Parameters
    ----------
    features : (N, len(FEATURES)) array
    labels : (N,) array of 0/1 (:func:`match_labels`)
    weights : (N,) array, optional
        Per-particle weights (e.g. ``1/sqrt(particles in its image)``, so
        crowded images do not outvote the rest).
    """
    x, y = _check_fit_input(features, labels)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.mean()
    e = _expand(x)
    mean, std = e.mean(0), e.std(0) + 1e-9
    z = np.concatenate([(e - mean) / std, np.ones((len(y), 1))], axis=1)
    b = np.zeros(z.shape[1])
    pen = np.full(z.shape[1], l2)
    pen[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ b, -50, 50)))
        grad = z.T @ (w * (p - y)) + pen * b
        hess = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(pen)
        step = np.linalg.solve(hess, grad)
        b -= step
        if np.abs(step).max() < 1e-8:
            break
    return Rescorer(mean, std, b[:-1], float(b[-1]), threshold=threshold)


def _check_fit_input(features, labels) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURES) or y.shape != (x.shape[0],):
        raise ValueError(f"expected features (N, {len(FEATURES)}) and labels (N,), "
                         f"got {x.shape} and {y.shape}")
    if x.shape[0] == 0 or y.min() == y.max():
        raise ValueError("need both matched and unmatched particles to fit a rescorer")
    return x, y


def fit_mlp_rescorer(features: np.ndarray, labels: np.ndarray, *,
                     weights: np.ndarray | None = None, hidden: int = 32,
                     dropout: float = 0.2, weight_decay: float = 1e-2, steps: int = 300,
                     lr: float = 1e-2, members: int = 3, seed: int = 0,
                     threshold: float = 0.5) -> MLPRescorer:
    """Fit an :class:`MLPRescorer`: ``members`` perceptrons (two hidden
    layers of ``hidden``, dropout between them), each from its own seed, by
    full-batch AdamW on the weighted binary cross-entropy for ``steps``
    steps.  The dropout, the weight decay and the short schedule keep them
    from memorising a few thousand proposals.  It runs on one thread (at
    this size more only add overhead), which also makes the fit the same on
    any machine."""
    import torch

    x, y = _check_fit_input(features, labels)
    mean, std = x.mean(0), x.std(0) + 1e-9
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        nets = _fit_members(torch, (x - mean) / std, y, weights, hidden=hidden,
                            dropout=dropout, weight_decay=weight_decay, steps=steps, lr=lr,
                            members=members, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return MLPRescorer(mean, std, nets, threshold=threshold)


def _fit_members(torch, z, y, weights, *, hidden, dropout, weight_decay, steps, lr, members,
                 seed) -> list:
    """The layers of each member, fitted on standardised features ``z``."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    xt = torch.tensor(z, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    wt = torch.tensor(w / w.mean(), dtype=torch.float32)
    nets = []
    for m in range(members):
        torch.manual_seed(seed + m)
        net = torch.nn.Sequential(
            torch.nn.Linear(z.shape[1], hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=weight_decay)
        for _ in range(steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(xt)[:, 0], yt, weight=wt)
            opt.zero_grad()
            loss.backward()
            opt.step()
        nets.append([(layer.weight.detach().double().numpy().T.copy(),
                      layer.bias.detach().double().numpy().copy())
                     for layer in net if isinstance(layer, torch.nn.Linear)])
    return nets


__all__ = ["FEATURES", "KINDS", "MLPRescorer", "Rescorer", "fit_mlp_rescorer", "fit_rescorer",
           "instance_features", "load_rescorer", "match_labels", "rescorer_class"]
