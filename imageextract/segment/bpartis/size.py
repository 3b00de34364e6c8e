"""Size model of the ``bpartis`` backend: the working scale from cheap
encoder passes.

As in Cellpose's size model, a ridge regression maps global statistics of the
network's encoder features (:func:`~.model.pooled_features`) of an image
shown at some scale to the log of its median particle diameter, in pixels at
that scale.  The features of the image at a few multiples of that scale
(``probes``, e.g. half and full) are read side by side: how the statistics
change with the zoom tells the particle size better than one view (probes
0.5 and 1 on one set of EMPS weights: val estimates at the probe scale within
25 % of the truth rose from 54 % to 73 %).  End to end it is not yet a
win: the networks segment best near the scale the one-probe model guesses
(EMPS val, both shipped and candidate weights), so one probe stays the
default.

The backend shows the image at a probe scale, reads the diameter, and
rescales the image so that its particles have the size the network was
trained at; the instances found there then confirm (or correct) the
estimate (:func:`~.inference.segment_image`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .inference import _pad32, median_diameter, resize_rgb, scaled_shape
from .model import BPartISNet, pooled_features

logger = logging.getLogger(__name__)


@dataclass
class SizeModel:
    """Ridge regression from pooled features to ``log(median diameter px)``.

    ``probes``: the multiples of the working scale at which the features are
    read (:func:`probe_features`); ``(1.0,)`` in models fitted before probes
    existed.
    """

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: float
    alpha: float = 1.0
    probes: tuple[float, ...] = (1.0,)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``log`` diameters for ``(N, F)`` (or ``(F,)``) features."""
        x = (np.atleast_2d(features) - self.mean) / self.std
        return x @ self.coef + self.intercept

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` file."""
        np.savez(path, mean=self.mean, std=self.std, coef=self.coef,
                 intercept=np.float64(self.intercept), alpha=np.float64(self.alpha),
                 probes=np.asarray(self.probes, np.float64))

    @classmethod
    def load(cls, path: str | Path) -> "SizeModel":
        """Read a file written by :meth:`save`."""
        with np.load(path) as z:
            probes = tuple(float(v) for v in z["probes"]) if "probes" in z.files else (1.0,)
            return cls(mean=z["mean"], std=z["std"], coef=z["coef"],
                       intercept=float(z["intercept"]), alpha=float(z["alpha"]), probes=probes)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, *, alpha: float = 1.0,
            probes: tuple[float, ...] = (1.0,)) -> "SizeModel":
        """Fit on features ``x`` (N, F) and log diameters ``y`` (N,).

        >>> rng = np.random.default_rng(0); x = rng.normal(size=(200, 5))
        >>> m = SizeModel.fit(x, x @ np.arange(5.0) + 2.0, alpha=1e-6)
        >>> bool(np.allclose(m.predict(x[:3]), x[:3] @ np.arange(5.0) + 2.0, atol=1e-3))
        True
        """
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        mean, std = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / std
        b = y.mean()
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - b))
        return cls(mean=mean, std=std, coef=coef, intercept=float(b), alpha=float(alpha),
                   probes=tuple(float(p) for p in probes))


@torch.inference_mode()
def image_features(net: BPartISNet, rgb: np.ndarray, *, scale: float,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Pooled encoder features ``(F,)`` of ``rgb`` shown at ``scale``."""
    net.eval()
    small = resize_rgb(rgb, scaled_shape(rgb.shape[:2], scale))
    x = torch.from_numpy(np.array(small, dtype=np.uint8, order="C")).to(device)
    x = x.permute(2, 0, 1).float().div_(255.0)[None]
    x, _, _ = _pad32(x)
    return pooled_features(net, x)[0].double().cpu().numpy()


def probe_features(net: BPartISNet, rgb: np.ndarray, *, scale: float,
                   probes: tuple[float, ...] = (1.0,),
                   device: str | torch.device = "cpu") -> np.ndarray:
    """:func:`image_features` of ``rgb`` at ``scale * m`` for each ``m`` in
    ``probes``, concatenated: ``(len(probes) * F,)``."""
    return np.concatenate([image_features(net, rgb, scale=scale * m, device=device)
                           for m in probes])


#: The size model reads particles best when they are 32-200 px across at the
#: probe scale and overestimates smaller ones (EMPS val + test probes at
#: 1/16-2x: within 50 % of the truth for 57-89 % of the probes at 16-200 px,
#: for 20-51 % below 12 px).  :func:`estimate_diameter` zooms in when it reads
#: particles smaller than this.  On 4 x 4 mosaics of 120 train-fit images
#: (``benchmarks/bench_size_probe.py``) 36 and 48 px read the size slightly
#: better (median log error 0.23 and 0.22 against 0.25), but they also zoom
#: where the network already does well on small particles, at a larger and
#: slower working scale (2048 px synthetic micrograph: 121 s against 70 s for
#: the same particles found, AJI+ 0.88 against 0.90).
ZOOM_BELOW = 24.0
#: Largest probe scale at which :func:`estimate_diameter` zooms in (images at
#: least twice the probe's size).
ZOOM_FROM = 0.5
#: Diameter (px at the probe scale) that a zoomed-in probe aims at.
ZOOM_TARGET = 48.0


def probe_windows(shape: tuple[int, int], side: int, *,
                  n: int = 2) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` x ``n`` distinct windows ``(y0, y1, x0, x1)`` of ``side``
    px (clipped to the image), centred on an even grid over the image.

    >>> probe_windows((1000, 300), 300)  # one column: the two across coincide
    [(100, 400, 0, 300), (600, 900, 0, 300)]
    """
    h, w = shape
    out = []
    for cy in ((np.arange(n) + 0.5) * h / n):
        for cx in ((np.arange(n) + 0.5) * w / n):
            y0 = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
            x0 = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
            win = (y0, min(h, y0 + side), x0, min(w, x0 + side))
            if win not in out:
                out.append(win)
    return out


def estimate_diameter(net: BPartISNet, model: SizeModel, rgb: np.ndarray, *, scale: float,
                      zoom_below: float = ZOOM_BELOW, zoom_from: float = ZOOM_FROM,
                      max_zooms: int = 3, device: str | torch.device = "cpu") -> float:
    """The size model's median particle diameter of ``rgb``, in px at
    ``scale`` (the probe scale, where the whole image is ``probe_px`` long).

    A large micrograph of small particles shown whole at the probe scale has
    particles a few pixels across, where the size model is unreliable (it
    reads 3-px particles as 10-20 px ones: a 4096 px micrograph of 28 px
    particles was segmented at a fifth of the right scale).  When the image
    is shown at ``zoom_from`` or less (it is at least twice the probe's
    size), then while the estimate is below ``zoom_below`` px and the probe
    is below native resolution, the image is read again at a larger scale
    (at most native, aiming at :data:`ZOOM_TARGET` px), in windows of the
    probe's size on a 2 x 2 grid over the image; the median of their
    estimates is used.  Images under twice the probe's size are read whole:
    a window of them shows little more detail, and on the EMPS images
    (512-1027 px) zooming them cost 0.02 of the val score.
    """
    probes = tuple(getattr(model, "probes", (1.0,)))

    def read(img: np.ndarray, sc: float) -> float:
        feats = probe_features(net, img, scale=sc, probes=probes, device=device)
        return float(np.exp(model.predict(feats)[0]))

    d_native = read(rgb, scale) / scale
    sc = scale
    side_px = max(rgb.shape[:2]) * scale  # the probe's long side, in probe px
    for _ in range(max_zooms if scale <= zoom_from else 0):
        d = d_native * sc
        if not (np.isfinite(d) and d < zoom_below and sc < 1.0):
            break
        nxt = min(1.0, sc * ZOOM_TARGET / max(d, 1.0))
        side = int(round(side_px / nxt))  # native px shown as one probe
        logs = [math.log(read(rgb[y0:y1, x0:x1], nxt) / nxt)
                for y0, y1, x0, x1 in probe_windows(rgb.shape[:2], side)
                if min(y1 - y0, x1 - x0) * nxt >= 32]
        if not logs:
            break
        logger.debug("size model: %.1f px at scale %.3f; zoomed to %.3f", d, sc, nxt)
        d_native, sc = float(np.exp(np.median(logs))), nxt
    return d_native * scale


def size_samples(net: BPartISNet, items: list[tuple], rng: np.random.Generator, *,
                 per_image: int = 3, spread: tuple[float, float] = (0.2, 3.0),
                 probe_px: int = 512, max_px: int = 1024, probes: tuple[float, ...] = (1.0,),
                 device: str | torch.device = "cpu", progress: bool = True,
                 desc: str = "size model") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The size model's training samples: each image of ``items``
    ``[(stem, rgb, labels)]`` shown at ``per_image`` random scales (log-uniform
    in ``spread`` x the probe scale, at most ``max_px`` long), read by
    :func:`probe_features`.  Returns the features ``(N, F)``, the log median
    diameters ``(N,)`` at those scales and the stem of each sample."""
    xs, ys, stems = [], [], []
    for stem, rgb, lab in tqdm(items, desc=desc, disable=not progress, leave=False):
        d = median_diameter(lab)
        if not np.isfinite(d):
            continue
        h, w = lab.shape
        s0 = min(1.0, probe_px / max(h, w))
        for _ in range(per_image):
            s = s0 * math.exp(rng.uniform(math.log(spread[0]), math.log(spread[1])))
            s = min(s, max_px / max(h, w))
            if min(h, w) * s < 32 or d * s < 3:
                continue
            xs.append(probe_features(net, rgb, scale=s, probes=probes, device=device))
            ys.append(math.log(d * s))
            stems.append(stem)
    return np.array(xs), np.array(ys), stems


def fit_size_model(net: BPartISNet, train_items: list[tuple], val_items: list[tuple], *,
                   per_image: int = 3, spread: tuple[float, float] = (0.2, 3.0),
                   probe_px: int = 512, max_px: int = 1024,
                   probes: tuple[float, ...] = (1.0,),
                   alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0), seed: int = 0,
                   device: str | torch.device = "cpu",
                   progress: bool = True) -> tuple[SizeModel, dict]:
    """Fit the size model on ``train_items`` ``[(stem, rgb, labels)]`` shown
    at random scales around the probe scale, with features read at each
    multiple in ``probes`` of that scale (:func:`probe_features`); pick the
    ridge ``alpha`` on ``val_items``.

    Returns
    -------
    model : SizeModel (refitted on train + val with the chosen alpha)
    stats : dict with ``alpha``, ``val_rmse_log`` (per alpha) and
        ``val_within_25pct`` (share of val estimates within 25 %).
    """
    rng = np.random.default_rng(seed)
    probes = tuple(float(p) for p in probes)
    if not probes or min(probes) <= 0:
        raise ValueError(f"probes must be positive scale multiples, got {probes!r}")
    common = dict(per_image=per_image, spread=spread, probe_px=probe_px, max_px=max_px,
                  probes=probes, device=device, progress=progress)
    xt, yt, _ = size_samples(net, train_items, rng, desc="size model: train", **common)
    xv, yv, _ = size_samples(net, val_items, rng, desc="size model: val", **common)
    rmse = {}
    for a in alphas:
        m = SizeModel.fit(xt, yt, alpha=a, probes=probes)
        rmse[a] = float(np.sqrt(np.mean((m.predict(xv) - yv) ** 2))) if len(yv) else float("nan")
    best = min(rmse, key=lambda a: (rmse[a], a))
    m = SizeModel.fit(xt, yt, alpha=best, probes=probes)
    err = np.abs(m.predict(xv) - yv) if len(yv) else np.zeros(0)
    stats = {"alpha": best, "probes": list(probes),
             "val_rmse_log": {str(k): v for k, v in rmse.items()},
             "val_within_25pct": float(np.mean(err < math.log(1.25))) if err.size else None,
             "val_within_50pct": float(np.mean(err < math.log(1.5))) if err.size else None,
             "train_samples": int(len(yt)), "val_samples": int(len(yv))}
    logger.info("size model: %s", stats)
    final = SizeModel.fit(np.concatenate([xt, xv]), np.concatenate([yt, yv]), alpha=best,
                          probes=probes)
    return final, stats


#: Prefix of the size model's tensors inside a bpartis ``weights.pt``.
STATE_PREFIX = "size_model."


def to_state(model: SizeModel) -> dict[str, torch.Tensor]:
    """The size model as tensors to store beside the network's weights (so
    the weights file's sha256 covers both)."""
    state = {STATE_PREFIX + "mean": torch.from_numpy(np.asarray(model.mean, np.float32)),
             STATE_PREFIX + "std": torch.from_numpy(np.asarray(model.std, np.float32)),
             STATE_PREFIX + "coef": torch.from_numpy(np.asarray(model.coef, np.float32)),
             STATE_PREFIX + "intercept": torch.tensor([model.intercept], dtype=torch.float32),
             STATE_PREFIX + "alpha": torch.tensor([model.alpha], dtype=torch.float32)}
    if tuple(model.probes) != (1.0,):  # single-probe files stay as they were written before
        state[STATE_PREFIX + "probes"] = torch.tensor(list(model.probes), dtype=torch.float32)
    return state


def pop_from_state(state: dict) -> SizeModel | None:
    """Remove the size model's tensors from a weights ``state`` (in place)
    and return the model, or None when the file has none.

    >>> m = SizeModel(np.zeros(3), np.ones(3), np.arange(3.0), 1.5)
    >>> st = {"w": torch.zeros(1), **to_state(m)}
    >>> back = pop_from_state(st); sorted(st), back.intercept, back.coef.tolist()
    (['w'], 1.5, [0.0, 1.0, 2.0])
    """
    keys = [k for k in state if k.startswith(STATE_PREFIX)]
    if not keys:
        return None
    t = {k[len(STATE_PREFIX):]: state.pop(k).double().numpy() for k in keys}
    probes = tuple(float(v) for v in t["probes"]) if "probes" in t else (1.0,)
    return SizeModel(mean=t["mean"], std=t["std"], coef=t["coef"],
                     intercept=float(t["intercept"][0]), alpha=float(t["alpha"][0]),
                     probes=probes)
