"""Training of the ``bpartis`` backend on EMPS-layout data.

Resumable: ``out_dir/checkpoint.pt`` (model, optimizer, learning-rate
schedule position, RNG states, step, best validation score) is written
atomically every ``checkpoint_minutes`` and when a run stops; ``resume=True``
continues exactly where it stopped (each step's batch and dropout masks come
from generators seeded with ``(seed, step)``, so a resumed run is
bit-identical to an uninterrupted one on the same machine).  The best weights
on the ``val`` split are kept in ``out_dir/best.pt``; :func:`export` writes the
shippable ``weights.pt``, ``config.json`` and ``MODEL_CARD.md``.

Run as a module::

    python -m imageextract.segment.bpartis.train --data ../shared/data/emps \
        --out models/bpartis-emps [--resume] [--max-minutes M]
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...datasets import load_item, split_stems
from ...errors import ImageExtractError
from . import UNCERTAINTY_TEXT
from .inference import CANVAS_PX, filter_instances, segment_image
from .install import dumps_config
from .loss import instance_loss, prepare_targets, turn_pairs
from .loss import turn_consistency as turn_loss
from .model import BPartISNet, ModelConfig, load_imagenet_encoder
from .size import ZOOM_BELOW

logger = logging.getLogger(__name__)

VERSION = "emps-v1"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
SIZE_MODEL = "size_model.npz"
SIZE_STATS = "size_model.json"
#: Instance filters applied when validating during training (false positives
#: would otherwise dominate AP50); :func:`tune` sets the shipped ones.
VAL_FILTERS = {"min_score": 0.8, "min_rel_area": 0.2}

#: Defaults of the recipe (stored in the checkpoint; a resumed run keeps them).
DEFAULTS: dict[str, Any] = {
    "epochs": 50,
    "crop": 256,
    "batch_size": 4,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup_steps": 200,
    "scale_range": (0.5, 2.0),
    # every image is first brought to this median particle diameter (px); the
    # backend finds the same working scale at inference (segment_image)
    "target_diameter": 48.0,
    "scale_limits": (0.05, 2.5),
    "p_invert": 0.15,
    # shading: each particle darkened towards one side (SEM shadowing), and a
    # smooth illumination field over the crop (recipes that predate them: 0)
    "p_shade": 0.3,
    "p_illumination": 0.3,
    "val_every": 5,
    "loss": {"w_inst": 1.0, "w_var": 10.0, "w_seed": 1.0, "fg_weight": 10.0},
}


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def load_split(data_dir: str | Path, split: str, *, progress: bool = False,
               exclude=()) -> list[tuple]:
    """``[(stem, rgb uint8 (M, N, 3), labels int32 (M, N)), ...]`` in memory,
    without the stems in ``exclude``."""
    left_out = set(exclude)
    stems = [s for s in split_stems(data_dir, split) if s not in left_out]
    items = []
    for stem in tqdm(stems, desc=f"load {split}", disable=not progress, leave=False):
        rgb, lab = load_item(data_dir, stem)
        items.append((stem, rgb, lab))
    return items


def base_scale(labels: np.ndarray, target_diameter: float | None, *,
               limits: tuple[float, float] = (0.05, 2.5)) -> float:
    """Scale that brings the image's median particle diameter to
    ``target_diameter`` px (clipped to ``limits``); 1 when no target or no
    particles.  Inference estimates the same scale from its own first pass
    (:func:`~.inference.segment_image`)."""
    from .inference import median_diameter

    d = median_diameter(labels) if target_diameter else float("nan")
    if not np.isfinite(d):
        return 1.0
    return float(np.clip(target_diameter / d, *limits))


#: Largest factor by which a stretched training crop (``p_stretch`` of
#: :func:`augment_crop`) changes the particles' aspect ratio.
STRETCH_MAX = 2.0


def augment_crop(rng: np.random.Generator, rgb: np.ndarray, labels: np.ndarray, crop: int, *,
                 base: float = 1.0, scale_range=(0.7, 1.4),
                 p_invert: float = 0.15, p_shade: float = 0.0,
                 p_illumination: float = 0.0,
                 p_rotate: float = 0.0, p_paste: float = 0.0,
                 paste_bank: tuple = (), p_stretch: float = 0.0,
                 max_stretch: float = STRETCH_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented training crop.

    Random scale (``base`` times a log-uniform factor in ``scale_range``),
    random position (an image smaller than the crop at that scale is placed
    at a random spot on a flat canvas of its mean grey, labelled background),
    90-degree rotations and flips, contrast/brightness jitter, gamma,
    optional inversion and grey conversion, Gaussian noise.  With
    ``p_shade`` every particle of the crop is darkened towards one side
    (:func:`shade_particles`, the shadowed flank of SEM spheres) and with
    ``p_illumination`` the crop is multiplied by a smooth random field
    (:func:`illumination_field`); both draw random numbers only when their
    probability is above 0, so older recipes keep their exact batches.
    With ``p_rotate`` the crop is turned by a random angle in [0, 90)
    degrees before the quarter turns and flips (:func:`rotate_crop`; a
    window large enough to fill the turned crop is taken), so that rods lie
    at every angle, not only at the few the training images show turned by
    quarter turns.  With ``p_paste`` (and a non-empty ``paste_bank``, see
    :func:`paste_bank`) rods cut from other training images are pasted onto
    the crop at random angles and places (:func:`paste_rods`), so that dense,
    crossing rods are seen far more often than the few training images of
    them show.  With ``p_stretch`` the crop is stretched along one axis and
    shrunk along the other by the same factor (area, so the particles'
    equivalent diameter, kept; the aspect ratio multiplied or divided by up
    to ``max_stretch``), so that rods longer (and stubbier) than those of the
    training images are seen.  All three draw random numbers only when their
    probability is above 0.

    Returns
    -------
    image : (3, crop, crop) float32 tensor in [0, 1]
    labels : (crop, crop) int64 tensor
    """
    h, w = labels.shape
    lo, hi = scale_range
    s = base * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    angle, win = 0.0, crop  # win: the side of the window cut before any turn
    if p_rotate > 0 and rng.random() < p_rotate:
        angle = rng.uniform(0.0, 0.5 * math.pi)
        # the window that holds the turned crop whole
        win = int(math.ceil(crop * (math.cos(angle) + math.sin(angle)))) + 2
    sy = sx = s
    if p_stretch > 0 and rng.random() < p_stretch:
        r = math.exp(0.5 * rng.uniform(0.0, math.log(max_stretch)))
        sy, sx = (s / r, s * r) if rng.random() < 0.5 else (s * r, s / r)
    wy = min(h, max(1, int(round(win / sy))))
    wx = min(w, max(1, int(round(win / sx))))
    y0 = int(rng.integers(0, h - wy + 1))
    x0 = int(rng.integers(0, w - wx + 1))
    img = torch.from_numpy(np.array(rgb[y0:y0 + wy, x0:x0 + wx], order="C")).permute(2, 0, 1)
    img = img.float().div_(255.0)[None]
    lab = torch.from_numpy(labels[y0:y0 + wy, x0:x0 + wx].astype(np.int64))[None, None]
    oy, ox = min(win, max(1, int(round(wy * sy)))), min(win, max(1, int(round(wx * sx))))
    if (oy, ox) != (wy, wx):
        img = F.interpolate(img, size=(oy, ox), mode="bilinear", align_corners=False,
                            antialias=oy < wy or ox < wx)
        lab = F.interpolate(lab.float(), size=(oy, ox), mode="nearest").long()
    img, lab = img[0], lab[0, 0]
    if (oy, ox) != (win, win):
        py, px = int(rng.integers(0, win - oy + 1)), int(rng.integers(0, win - ox + 1))
        canvas = img.mean((1, 2), keepdim=True).expand(3, win, win).clone()
        canvas[:, py:py + oy, px:px + ox] = img
        lcanvas = torch.zeros((win, win), dtype=torch.int64)
        lcanvas[py:py + oy, px:px + ox] = lab
        img, lab = canvas, lcanvas
    if win != crop:
        img, lab = rotate_crop(img, lab, angle, crop)
    if p_paste > 0 and len(paste_bank) and rng.random() < p_paste:
        img, lab = paste_rods(rng, img, lab, paste_bank, zoom=s / base)
    k = int(rng.integers(0, 4))
    if k:
        img, lab = torch.rot90(img, k, (1, 2)), torch.rot90(lab, k, (0, 1))
    if rng.random() < 0.5:
        img, lab = img.flip(2), lab.flip(1)
    # photometric
    if p_shade > 0 and rng.random() < p_shade:
        img = shade_particles(img, lab, angle=rng.uniform(0.0, 2.0 * math.pi),
                              strength=rng.uniform(0.3, 0.8))
    if p_illumination > 0 and rng.random() < p_illumination:
        img = img * illumination_field(rng, crop)[None]
    if rng.random() < 0.5:
        img = img.mean(0, keepdim=True).expand(3, -1, -1)
    if rng.random() < p_invert:
        img = 1.0 - img
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-0.1, 0.1)
    img = img.clamp(0.0, 1.0) ** math.exp(rng.uniform(-0.4, 0.4))
    if rng.random() < 0.3:
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
        img = img + torch.randn(img.shape, generator=gen) * rng.uniform(0.0, 0.04)
    return img.clamp(0.0, 1.0).contiguous(), lab.contiguous()


def _turn_grid(h: int, w: int, angle: float, size: int) -> torch.Tensor:
    """Sampling grid of the central ``size`` x ``size`` window of an
    ``h`` x ``w`` input turned by ``angle`` radians about its centre
    (:func:`torch.nn.functional.grid_sample`, ``align_corners=False``)."""
    c, s = math.cos(angle), math.sin(angle)
    # output pixel (normalised by the input's half sides) -> input pixel
    theta = torch.tensor([[c * size / w, -s * size / w, 0.0],
                          [s * size / h, c * size / h, 0.0]], dtype=torch.float32)[None]
    return F.affine_grid(theta, [1, 1, size, size], align_corners=False)


def rotate_crop(img: torch.Tensor, labels: torch.Tensor, angle: float,
                size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The central ``size`` x ``size`` crop of ``img`` (C, H, W) and
    ``labels`` (H, W) turned by ``angle`` radians about their centre:
    bilinear for the image, nearest for the labels (ids kept as they are).
    Pixels the turned window takes from outside the input repeat its border
    (image) and are background (labels); a window of side at least
    ``size * (|cos| + |sin|)`` leaves none.

    >>> lab = torch.zeros(9, 9, dtype=torch.int64); lab[4, :] = 1
    >>> _, out = rotate_crop(torch.zeros(1, 9, 9), lab, math.pi / 2, 5)
    >>> out[:, 2].tolist(), int(out.sum())
    ([1, 1, 1, 1, 1], 5)
    """
    grid = _turn_grid(*labels.shape, angle, size)
    out = F.grid_sample(img[None].float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)[0]
    lab = F.grid_sample(labels[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[0, 0].round().long()
    return out, lab


#: Particles of the paste bank (:func:`paste_bank`): at least this many px
#: and this aspect ratio (major / minor axis of the ellipse of the same
#: second moments).
PASTE_MIN_AREA = 40
PASTE_MIN_ASPECT = 2.0


def paste_bank(items: list[tuple], bases: list[float], *,
               min_area: int = PASTE_MIN_AREA,
               min_aspect: float = PASTE_MIN_ASPECT,
               rods: np.ndarray | None = None) -> tuple[tuple, ...]:
    """The rods that :func:`paste_rods` pastes: from the images of
    ``items`` (``(stem, rgb, labels)``) whose particles are rods, wires or
    fibres (:func:`elongated_images`, or ``rods`` when the caller has it
    already), every particle that does not touch the image border, has at
    least ``min_area`` px and an aspect ratio of at least ``min_aspect``.

    Returns
    -------
    tuple of ``(patch, mask, base)``: the particle's bounding box of the
    image (uint8 (h, w, 3)), its pixels there (bool (h, w)) and its image's
    base scale (``bases[i]``, :func:`base_scale`), so that a pasted rod has
    the size the crop's own particles have.

    >>> lab = np.zeros((40, 40), np.int32); lab[5:9, 4:30] = 1; lab[20:24, 6:36] = 2
    >>> lab[30:40, 0:5] = 3  # touches the border
    >>> rgb = np.zeros((40, 40, 3), np.uint8)
    >>> [(p.shape, int(m.sum()), b) for p, m, b in paste_bank([("a", rgb, lab)], [0.5])]
    [((4, 26, 3), 104, 0.5), ((4, 30, 3), 120, 0.5)]
    """
    from scipy import ndimage

    from ...evaluation.metrics import ecd_and_aspect

    bank = []
    if rods is None:
        rods = elongated_images(items)
    for (_, rgb, lab), base, is_rods in zip(items, bases, rods):
        if not is_rods:
            continue
        h, w = lab.shape
        # the aspect ratio that also tells rod images apart, per id present
        _, aspect = ecd_and_aspect(lab, exclude_border=False)
        aspect_of = dict(zip(np.unique(lab[lab > 0]).tolist(), aspect.tolist()))
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None or sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h \
                    or sl[1].stop == w:
                continue
            mask = lab[sl] == i
            if int(mask.sum()) < min_area or not aspect_of[i] >= min_aspect:  # NaN: thin
                continue
            bank.append((np.ascontiguousarray(rgb[sl]), mask, float(base)))
    return tuple(bank)


def paste_rods(rng: np.random.Generator, img: torch.Tensor, labels: torch.Tensor,
               bank: tuple, *, zoom: float = 1.0,
               count: tuple[int, int] = (3, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """``img`` (3, H, W) and ``labels`` (H, W) with between ``count[0]`` and
    ``count[1]`` rods of ``bank`` (:func:`paste_bank`) pasted on top, one
    after the other (simple copy-paste augmentation).

    Each rod is resized by its image's base scale times ``zoom`` (the
    crop's own random zoom), turned by a random angle and laid at a random
    place (part of it may fall outside); its outline is blended over one
    pixel (the bilinear mask) and it takes a new label id over whatever it
    covers, so a rod it crosses is cut as it would be seen under it.
    """
    h, w = labels.shape
    img, labels = img.clone(), labels.clone()
    next_id = int(labels.max()) + 1
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        patch, mask, base = bank[int(rng.integers(0, len(bank)))]
        angle = rng.uniform(0.0, 2.0 * math.pi)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        ph, pw = mask.shape
        oh, ow = max(1, round(ph * base * zoom)), max(1, round(pw * base * zoom))
        t = torch.cat([torch.from_numpy(patch).permute(2, 0, 1).float().div(255.0),
                       torch.from_numpy(mask)[None].float()])[None]
        if (oh, ow) != (ph, pw):
            t = F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False,
                              antialias=oh < ph or ow < pw)
        side = int(math.ceil(math.hypot(oh, ow))) + 2
        t = F.grid_sample(t, _turn_grid(oh, ow, angle, side), mode="bilinear",
                          padding_mode="zeros", align_corners=False)[0]
        # the part of the turned rod's square that falls inside the crop
        y0, x0 = cy - side // 2, cx - side // 2
        ya, xa = max(0, y0), max(0, x0)
        yb, xb = min(h, y0 + side), min(w, x0 + side)
        if ya >= yb or xa >= xb:
            continue
        t = t[:, ya - y0:yb - y0, xa - x0:xb - x0]
        alpha = t[3].clamp(0.0, 1.0)
        inside = alpha > 0.5
        if not bool(inside.any()):
            continue
        region = img[:, ya:yb, xa:xb]
        img[:, ya:yb, xa:xb] = alpha * t[:3] + (1.0 - alpha) * region
        labels[ya:yb, xa:xb][inside] = next_id
        next_id += 1
    return img, labels


def shade_particles(img: torch.Tensor, labels: torch.Tensor, *, angle: float,
                    strength: float) -> torch.Tensor:
    """Darken every labelled particle towards one side.

    A pixel of particle ``k`` at ``p`` is multiplied by
    ``1 - strength * clip(<p - c_k, u> / r_k, 0, 1)``, with ``c_k`` the
    particle's centroid, ``r_k`` its equivalent radius and ``u`` the unit
    vector at ``angle`` (radians; the same for all particles, as a detector
    sees them).  Background pixels are unchanged.

    Parameters
    ----------
    img : (C, H, W) float tensor
    labels : (H, W) int64 tensor, 0 = background

    Returns
    -------
    (C, H, W) tensor

    >>> lab = torch.zeros(5, 5, dtype=torch.int64); lab[1:4, 1:4] = 1
    >>> out = shade_particles(torch.ones(1, 5, 5), lab, angle=0.0, strength=0.5)
    >>> float(out[0, 2, 1]), float(out[0, 2, 3]) < 1.0, float(out[0, 0, 4])
    (1.0, True, 1.0)
    """
    h, w = labels.shape
    flat = labels.reshape(-1)
    n = int(flat.max()) + 1 if flat.numel() else 1
    if n <= 1:
        return img
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w).reshape(-1)
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w).reshape(-1)
    count = torch.bincount(flat, minlength=n).float().clamp_min(1.0)
    cy = torch.bincount(flat, ys, minlength=n) / count
    cx = torch.bincount(flat, xs, minlength=n) / count
    radius = (count / math.pi).sqrt().clamp_min(1.0)
    proj = ((ys - cy[flat]) * math.sin(angle) + (xs - cx[flat]) * math.cos(angle)) / radius[flat]
    factor = 1.0 - strength * proj.clamp(0.0, 1.0)
    factor = torch.where(flat > 0, factor, torch.ones_like(factor)).view(1, h, w)
    return img * factor


def illumination_field(rng: np.random.Generator, size: int) -> torch.Tensor:
    """``(size, size)`` smooth multiplicative field around 1: a random ramp
    (up to +-30 % across the crop) plus a bicubic-upsampled 3x3 random grid
    (+-20 %), clipped to [0.4, 1.6]."""
    t = torch.linspace(-1.0, 1.0, size)
    gy, gx = rng.uniform(-0.3, 0.3, size=2)
    ramp = 1.0 + float(gy) * t[:, None] + float(gx) * t[None, :]
    coarse = torch.from_numpy(rng.uniform(-0.2, 0.2, size=(1, 1, 3, 3)).astype(np.float32))
    bumps = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0, 0]
    return (ramp + bumps).clamp(0.4, 1.6)


def make_batch(items: list[tuple], rng: np.random.Generator, batch_size: int, crop: int, *,
               bases: list[float] | None = None, weights: np.ndarray | None = None,
               **aug) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, crop, crop)`` images and ``(B, crop, crop)`` labels;
    ``bases[i]`` is item ``i``'s base scale (see :func:`base_scale`);
    ``weights[i]`` (optional, summing to 1) is the probability of drawing item
    ``i`` for each crop (uniform when None; see :func:`hard_weights`)."""
    imgs, labs = [], []
    for _ in range(batch_size):
        if weights is None:
            i = int(rng.integers(0, len(items)))
        else:
            i = int(rng.choice(len(items), p=weights))
        _, rgb, lab = items[i]
        im, lb = augment_crop(rng, rgb, lab, crop, base=1.0 if bases is None else bases[i],
                              **aug)
        imgs.append(im)
        labs.append(lb)
    return torch.stack(imgs), torch.stack(labs)


class _BatchStream(torch.utils.data.Dataset):
    """Training batches indexed by step: batch ``i`` is built from a generator
    seeded with ``(seed, i)`` (see :func:`make_batch`)."""

    def __init__(self, items, bases, *, seed: int, batch_size: int, crop: int, aug: dict,
                 weights: np.ndarray | None = None, turned: bool = False):
        self.items, self.bases, self.seed = items, bases, seed
        self.batch_size, self.crop, self.aug = batch_size, crop, aug
        self.weights, self.turned = weights, turned

    def __len__(self) -> int:  # steps are unbounded; Subset picks the range
        return 2**62

    def __getitem__(self, step: int):
        """``(images, targets)``: targets are the loss's label bookkeeping
        (:func:`~.loss.prepare_targets`), made here so that workers do it
        ahead of the step (the label maps themselves are not sent back).
        With ``turned`` the batch is ``batch_size // 2`` crops followed by
        their copies turned a quarter turn (:func:`~.loss.turn_pairs`)."""
        rng = np.random.default_rng([self.seed, int(step)])
        n = self.batch_size // 2 if self.turned else self.batch_size
        imgs, labs = make_batch(self.items, rng, n, self.crop, bases=self.bases,
                                weights=self.weights, **self.aug)
        if self.turned:
            imgs, labs = turn_pairs(imgs, labs)
        return imgs, [prepare_targets(lab.numpy()) for lab in labs]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------
def _metric_fns():
    try:
        from ...evaluation.metrics import aji_plus, paper_metrics

        return paper_metrics, aji_plus
    except ImportError:  # pragma: no cover - fallback while evaluation/ is being written
        return _fallback_metrics, None


def _fallback_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """AP50 and mean IoU (paper definitions at t = 0.5) for model selection."""
    g_ids, p_ids = np.unique(gt[gt > 0]), np.unique(pred[pred > 0])
    if g_ids.size == 0 or p_ids.size == 0:
        v = 1.0 if g_ids.size == p_ids.size else 0.0
        return {"ap": v, "ap50": v, "mean_iou": v}
    gi = np.searchsorted(g_ids, gt)
    pi = np.searchsorted(p_ids, pred)
    both = (gt > 0) & (pred > 0)
    inter = np.zeros((g_ids.size, p_ids.size))
    np.add.at(inter, (gi[both], pi[both]), 1)
    ga = np.bincount(gi[gt > 0], minlength=g_ids.size)
    pa = np.bincount(pi[pred > 0], minlength=p_ids.size)
    iou = inter / (ga[:, None] + pa[None, :] - inter)
    m = iou > 0.5
    tp = int(m.any(1).sum())
    fp = int((~m.any(0)).sum() + np.maximum(m.sum(1) - 1, 0).sum())
    best = np.where(m.any(0), iou.max(0), 0.0)
    return {"ap": float("nan"), "ap50": tp / (tp + fp + 1e-12), "mean_iou": float(best.mean())}


def _image_metrics(net: BPartISNet, items: list[tuple], *, coord_scale: float,
                   samples: int = 1, uncertainty_threshold: float | None = None, device="cpu",
                   progress: bool = False, cluster_options: dict | None = None,
                   target_diameter: float | None = None, oracle_scale: bool = False,
                   size_model=None, desc: str = "val") -> list[dict[str, float]]:
    """Paper metrics (and AJI+) of ``net`` on each of ``items`` (see
    :func:`evaluate` for the options)."""
    paper, aji = _metric_fns()
    rows = []
    for _, rgb, gt in tqdm(items, desc=desc, disable=not progress, leave=False):
        fixed = base_scale(gt, target_diameter) if oracle_scale and target_diameter else None
        pred = segment_image(net, rgb, coord_scale=coord_scale, samples=samples, scale=fixed,
                             target_diameter=target_diameter, device=device,
                             size_model=size_model,
                             uncertainty_threshold=uncertainty_threshold,
                             cluster_options=cluster_options)["labels"]
        r = {k: float(v) for k, v in paper(gt, pred).items()
             if k in ("ap", "ap50", "ap75", "mean_iou")}
        if aji is not None:
            r["aji_plus"] = float(aji(gt, pred))
        rows.append(r)
    return rows


def evaluate(net: BPartISNet, items: list[tuple], **options) -> dict[str, float]:
    """Mean paper metrics (and AJI+) of ``net`` on ``items``, each image
    segmented as the backend does it (:func:`~.inference.segment_image`).

    Options (keyword-only): ``coord_scale`` (required), ``samples``,
    ``uncertainty_threshold``, ``device``, ``progress``, ``cluster_options``,
    ``target_diameter``, ``size_model`` and ``oracle_scale``: with True, each
    image runs once at the scale its ground truth says (:func:`base_scale`)
    instead of searching for it: a fast and steadier measure of the network
    for model selection during training.
    """
    rows = _image_metrics(net, items, **options)
    keys = rows[0].keys() if rows else []
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def selection_score(metrics: dict[str, float]) -> float:
    """Model-selection score on val: mean of AP50 and AJI+ (those present).

    The paper's AP is reported but not selected on: at IoU threshold 0 two
    touching particles count as a duplicate, so AP rewards merging them and
    swings with a few pixels (METRICS.md); AP50 and AJI+ are steadier.

    >>> selection_score({"ap": 0.2, "ap50": 0.9, "aji_plus": 0.7})
    0.8
    """
    vals = [metrics[k] for k in ("ap50", "aji_plus")
            if k in metrics and math.isfinite(metrics[k])]
    return float(np.mean(vals)) if vals else float("-inf")


def hard_weights(scores, *, strength: float) -> np.ndarray:
    """Sampling probabilities that favour the images a network gets wrong.

    ``scores`` are per-image :func:`selection_score` values in [0, 1] (nan
    counts as 0); image ``i`` is drawn with probability proportional to
    ``1 + strength * (1 - scores[i])``, so with ``strength`` 2 a failed image
    is drawn three times as often as a perfect one and every image is still
    seen.

    >>> hard_weights([1.0, 0.5, 0.0], strength=2.0).round(3).tolist()
    [0.167, 0.333, 0.5]
    """
    if strength < 0 or not math.isfinite(strength):
        raise ImageExtractError(f"hard-mining strength must be >= 0, got {strength!r}")
    sc = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    w = 1.0 + strength * (1.0 - np.clip(sc, 0.0, 1.0))
    return w / w.sum()


def elongated_images(items: list[tuple]) -> np.ndarray:
    """Boolean per item of ``items`` (``(stem, rgb, labels)``): are its
    ground-truth particles rods, wires or fibres
    (:func:`~imageextract.evaluation.metrics.is_elongated`, the shape groups
    of ``benchmarks/compare.py``)?

    >>> lab = np.zeros((40, 40), np.int32); lab[2:5, 2:30] = 1  # one rod, two squares
    >>> lab[10:20, 10:20] = 2; lab[25:35, 25:35] = 3
    >>> lab2 = lab.copy(); lab2[37:40, 5:35] = 3; lab2[6:9, 2:30] = 4  # three rods, a square
    >>> elongated_images([("a", None, lab), ("b", None, lab2)]).tolist()
    [False, True]
    """
    from ...evaluation.metrics import is_elongated

    return np.asarray([is_elongated(lab) for _, _, lab in items], dtype=bool)


def shape_weights(elongated: np.ndarray, weights: np.ndarray | None, *,
                  elongated_weight: float) -> np.ndarray | None:
    """``weights`` (None: uniform) with the images marked in ``elongated``
    (:func:`elongated_images`) drawn ``elongated_weight`` times as often,
    renormalised; None when nothing changes.

    >>> shape_weights(np.array([True, False]), None, elongated_weight=3.0).tolist()
    [0.75, 0.25]
    """
    if not (elongated_weight > 0 and math.isfinite(elongated_weight)):
        raise ImageExtractError(f"elongated weight must be > 0, got {elongated_weight!r}")
    if elongated_weight == 1.0:
        return weights
    n = len(elongated)
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, float)
    w = w * np.where(elongated, float(elongated_weight), 1.0)
    return w / w.sum()


def image_scores(net: BPartISNet, items: list[tuple], *, coord_scale: float,
                 target_diameter: float | None, device="cpu", progress: bool = False,
                 cluster_options: dict | None = None) -> np.ndarray:
    """Per-image :func:`selection_score` of ``net`` on ``items`` at the
    ground-truth scale, T = 1 (what :func:`hard_weights` reads)."""
    rows = _image_metrics(net, items, coord_scale=coord_scale, device=device,
                          progress=progress, cluster_options=cluster_options,
                          target_diameter=target_diameter, oracle_scale=True,
                          desc="score images")
    return np.asarray([selection_score(r) for r in rows], dtype=float)


# ---------------------------------------------------------------------------
# checkpointing
# ---------------------------------------------------------------------------
def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 1 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def train(data_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
          epochs: int | None = None, crop: int | None = None, batch_size: int | None = None,
          lr: float | None = None, seed: int = 0, val_every: int | None = None,
          checkpoint_minutes: float = 5.0, progress: bool = True, device: str = "auto",
          max_minutes: float | None = None, max_steps: int | None = None,
          model_config: dict | None = None, pretrained: bool = True,
          threads: int | None = 2, export_at_end: bool = True,
          init_weights: str | Path | None = None, workers: int = 0,
          hard_mining: float = 0.0, elongated_weight: float = 1.0,
          exclude: list[str] | tuple[str, ...] = (),
          turn_consistency: tuple[float, float] | None = None,
          p_rotate: float = 0.0, p_paste: float = 0.0,
          p_stretch: float = 0.0, repel_weight: float = 0.0) -> dict[str, Any]:
    """Train (or resume training) the bpartis network.

    Parameters
    ----------
    data_dir : path
        EMPS-layout folder; trains on ``train-fit``, validates on ``val``.
    out_dir : path
        Receives ``checkpoint.pt``, ``best.pt``, ``train.log`` and, at the
        end, ``weights.pt``, ``config.json`` and ``MODEL_CARD.md``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt``; the recipe stored there wins
        over the keyword options (except ``max_minutes``/``max_steps``).
    epochs : int
        One epoch = ``ceil(len(train-fit) / batch_size)`` steps.
    crop, batch_size, lr : training crop (px), crops per step, peak AdamW lr.
    val_every : int
        Validate every this many epochs (and at the end).
    checkpoint_minutes : float
        Wall-clock minutes between checkpoints.
    max_minutes, max_steps : stop (with a checkpoint) after this much time or
        at this global step; training resumes later with ``resume=True``.
    model_config : dict
        :class:`~.model.ModelConfig` fields (default: Lite0 + decoder).
    pretrained : bool
        Initialise the encoder with ImageNet weights (Lite0 only).
    threads : int
        torch intra-op threads (2 on the shared CPU machine).
    init_weights : path, optional
        Start a new run from these network weights (a ``best.pt`` or
        ``weights.pt`` of the same architecture) instead of ImageNet.
    workers : int
        Processes that build the augmented batches ahead of the training step
        (0: built in this process).  Each step's batch depends on
        ``(seed, step)`` only, so the batches are the same (to float rounding:
        worker processes run one thread) for any number of
        workers; use several where a GPU would otherwise wait for them.
    hard_mining : float
        Strength of hard-example sampling (0: every train-fit image equally
        often).  A new run scores each training image with its starting
        network (:func:`image_scores`) and draws images with the
        probabilities of :func:`hard_weights`; the probabilities are kept in
        the checkpoint, so a resumed run draws the same batches.  Meant for
        runs that start from trained weights (``init_weights``).
    elongated_weight : float
        Draw the training images of rods, wires and fibres (median
        ground-truth aspect ratio above :data:`ELONGATED_ASPECT`) this many
        times as often (1: no change); multiplies the hard-mining weights.
    exclude : list of str
        Stems left out of ``train-fit`` (e.g. images held out to judge the
        run on); stored in the recipe.
    turn_consistency : (w_offset, w_sigma), optional
        Train each crop beside its copy turned a quarter turn (half the batch
        each) and add ``w_offset`` x the offset and ``w_sigma`` x the sigma
        disagreement of :func:`~.loss.turn_consistency`: the x channels learn
        to behave as the turned y channels do.  Stored in the recipe.
    p_rotate : float
        Probability of turning a training crop by a random angle (see
        :func:`augment_crop`); stored in the recipe.
    p_paste : float
        Probability of pasting rods cut from the training images of rods
        onto a training crop (:func:`paste_rods`; the rods of the images
        left out with ``exclude`` are not used); stored in the recipe.
    p_stretch : float
        Probability of stretching a training crop along one axis (see
        :func:`augment_crop`); stored in the recipe.
    repel_weight : float
        Weight of the loss term that keeps each particle's Gaussian below
        0.3 at its neighbours' centroids (``w_repel`` of
        :func:`~.loss.instance_loss`): a bandwidth narrow enough for the
        clustering to leave touching neighbours out.  0: none; stored in the
        recipe's ``loss`` when above 0.

    Returns
    -------
    dict with ``step``, ``total_steps``, ``best`` (val metrics) and ``done``.
    """
    t_start = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    # the package logger, plus this module's when run as ``__main__`` (when
    # imported, its records reach the package logger anyway: a handler on
    # both wrote every line twice)
    pkg = logging.getLogger(__package__ or "imageextract.segment.bpartis")
    targets = [pkg] if logger.name.startswith(pkg.name + ".") else [pkg, logger]
    for lg in targets:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        return _train(data_dir, out, resume=resume, epochs=epochs, crop=crop,
                      batch_size=batch_size, lr=lr, seed=seed, val_every=val_every,
                      checkpoint_minutes=checkpoint_minutes, progress=progress, device=device,
                      max_minutes=max_minutes, max_steps=max_steps, model_config=model_config,
                      pretrained=pretrained, threads=threads, export_at_end=export_at_end,
                      init_weights=init_weights, workers=workers, t_start=t_start,
                      hard_mining=hard_mining, elongated_weight=elongated_weight,
                      exclude=exclude, turn_consistency=turn_consistency,
                      p_rotate=p_rotate, p_paste=p_paste, p_stretch=p_stretch,
                      repel_weight=repel_weight)
    finally:
        for lg in targets:
            lg.removeHandler(handler)
        handler.close()


def _train(data_dir, out: Path, *, resume, epochs, crop, batch_size, lr, seed, val_every,
           checkpoint_minutes, progress, device, max_minutes, max_steps, model_config,
           pretrained, threads, export_at_end, init_weights, workers,
           t_start, hard_mining=0.0, elongated_weight=1.0, exclude=(),
           turn_consistency=None, p_rotate=0.0, p_paste=0.0,
           p_stretch=0.0, repel_weight=0.0) -> dict[str, Any]:
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = _resolve_device(device)
    if dev.type == "cuda":  # fixed crop size: let cuDNN pick its kernels once
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise ImageExtractError(f"cannot resume: {ckpt_path} does not exist")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if "optimizer" not in ckpt:
            raise ImageExtractError(
                f"cannot resume from {ckpt_path}: it holds the weights but no optimizer "
                f"state (stripped to ship it); start a new run from it with "
                f"--init {out / BEST if (out / BEST).is_file() else ckpt_path}")
        recipe = ckpt["recipe"]
        logger.info("resuming from %s at step %d", ckpt_path, ckpt["step"])
    else:
        recipe = json.loads(json.dumps(DEFAULTS))
        for key, val in (("epochs", epochs), ("crop", crop), ("batch_size", batch_size),
                         ("lr", lr), ("val_every", val_every)):
            if val is not None:
                recipe[key] = val
        recipe["seed"] = seed
        recipe["model"] = ModelConfig.from_dict(model_config).to_dict()
        # sigma smoothness on the head's raw output (see instance_loss)
        recipe["loss"]["var_scale"] = float(recipe["model"]["sigma_scale"])
        recipe["pretrained"] = bool(pretrained)
        if not (float(hard_mining) >= 0 and math.isfinite(float(hard_mining))):
            raise ImageExtractError(f"hard-mining strength must be >= 0, got {hard_mining!r}")
        recipe["hard_mining"] = float(hard_mining)
        if not (float(elongated_weight) > 0 and math.isfinite(float(elongated_weight))):
            raise ImageExtractError(
                f"elongated weight must be > 0, got {elongated_weight!r}")
        recipe["elongated_weight"] = float(elongated_weight)
        recipe["exclude"] = sorted({str(s) for s in exclude})
        # the augmentations a probability turns on: stored only when on, so that an
        # older recipe keeps its exact batches
        for key, value, what in (("p_rotate", p_rotate, "a turned crop"),
                                 ("p_paste", p_paste, "pasting rods onto a crop"),
                                 ("p_stretch", p_stretch, "a stretched crop")):
            if not 0.0 <= float(value) <= 1.0:
                raise ImageExtractError(f"the probability of {what} must be in [0, 1], "
                                        f"got {value!r}")
            if float(value) > 0:
                recipe[key] = float(value)
        if "p_stretch" in recipe:
            recipe["max_stretch"] = STRETCH_MAX
        if not (float(repel_weight) >= 0 and math.isfinite(float(repel_weight))):
            raise ImageExtractError(f"repel weight must be >= 0, got {repel_weight!r}")
        if float(repel_weight) > 0:  # stored only when on: older recipes keep their loss
            recipe["loss"]["w_repel"] = float(repel_weight)
        if turn_consistency is not None:
            w_off, w_sig = (float(v) for v in turn_consistency)
            if not all(v >= 0 and math.isfinite(v) for v in (w_off, w_sig)):
                raise ImageExtractError(f"turn-consistency weights must be >= 0, got "
                                        f"{tuple(turn_consistency)!r}")
            if recipe["batch_size"] % 2:
                raise ImageExtractError(f"turn consistency pairs each crop with its turned "
                                        f"copy: the batch size must be even, got "
                                        f"{recipe['batch_size']}")
            recipe["turn_consistency"] = {"w_offset": w_off, "w_sigma": w_sig}
        if init_weights is not None:
            from ...weights import sha256_file

            recipe["init_weights"] = (f"{init_weights} (sha256 "
                                      f"{sha256_file(Path(init_weights))[:12]})")
    train_items = load_split(data_dir, "train-fit", progress=progress)
    left_out = set(recipe.get("exclude", ()))
    if left_out:
        unknown = left_out - {stem for stem, _, _ in train_items}
        if unknown:
            raise ImageExtractError(f"cannot exclude {len(unknown)} stem(s) that are not in "
                                    f"train-fit: {', '.join(sorted(unknown)[:5])}")
        train_items = [it for it in train_items if it[0] not in left_out]
        logger.info("%d train-fit images left out (recipe 'exclude')", len(left_out))
    val_items = load_split(data_dir, "val", progress=progress)
    if not train_items:
        raise ImageExtractError(f"no training images in {data_dir} (split 'train-fit')")
    steps_per_epoch = math.ceil(len(train_items) / recipe["batch_size"])
    total = int(recipe["epochs"]) * steps_per_epoch
    recipe["total_steps"] = total
    mcfg = ModelConfig.from_dict(recipe["model"])
    torch.manual_seed(int(recipe["seed"]))
    net = BPartISNet(mcfg)
    if ckpt is None and init_weights is not None:
        state = torch.load(init_weights, map_location="cpu", weights_only=False)
        state = state.get("model", state)
        # an exported weights.pt also carries the size model, which is refitted
        net.load_state_dict({k: v.float() for k, v in state.items()
                             if not k.startswith("size_model.")})
        logger.info("network initialised from %s", init_weights)
    elif ckpt is None and recipe["pretrained"]:
        n = load_imagenet_encoder(net)
        logger.info("encoder initialised from ImageNet weights (%d tensors)", n)
    net.to(dev)
    net.train()  # marks the frozen encoder part (requires_grad False)
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe["lr"],
                            fused=dev.type in ("cpu", "cuda"))
    step, best, best_score, train_seconds = 0, {}, float("-inf"), 0.0
    history: list[dict] = []
    device_seconds: dict[str, float] = {}  # training time per kind of machine
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, best, best_score = ckpt["step"], ckpt["best"], ckpt["best_score"]
        train_seconds = ckpt.get("train_seconds", 0.0)
        device_seconds = dict(ckpt.get("device_seconds", {}))
        history = ckpt.get("history", [])
        _set_rng_state(ckpt["rng"])
    stop_step = total if max_steps is None else min(total, int(max_steps))
    loss_cfg = recipe["loss"]
    aug = {"scale_range": tuple(recipe["scale_range"]), "p_invert": recipe["p_invert"],
           "p_shade": recipe.get("p_shade", 0.0),
           "p_illumination": recipe.get("p_illumination", 0.0),
           "p_rotate": recipe.get("p_rotate", 0.0),
           "p_stretch": recipe.get("p_stretch", 0.0),
           "max_stretch": recipe.get("max_stretch", STRETCH_MAX)}
    limits = tuple(recipe.get("scale_limits", (0.05, 2.5)))
    bases = [base_scale(lab, recipe.get("target_diameter"), limits=limits)
             for _, _, lab in train_items]
    elongated = None  # the images of rods, found once for the bank and the draw weights
    if recipe.get("p_paste", 0.0) > 0:
        elongated = elongated_images(train_items)
        bank = paste_bank(train_items, bases, rods=elongated)
        if not bank:
            raise ImageExtractError("no rods to paste: the training images hold no image of "
                                    "rods (see elongated_images)")
        aug.update(p_paste=recipe["p_paste"], paste_bank=bank)
        logger.info("pasting rods onto %.0f %% of the crops (%d rods in the bank)",
                    100 * recipe["p_paste"], len(bank))

    sample_weights = None
    if ckpt is not None and ckpt.get("sample_weights") is not None:
        sample_weights = np.asarray(ckpt["sample_weights"], dtype=float)
    elif float(recipe.get("hard_mining", 0.0)) > 0:
        t0 = time.monotonic()
        scores = image_scores(net, train_items, coord_scale=mcfg.coord_scale,
                              target_diameter=recipe.get("target_diameter"), device=dev,
                              progress=progress,
                              cluster_options=recipe.get("val_filters", VAL_FILTERS))
        net.train()
        sample_weights = hard_weights(scores, strength=float(recipe["hard_mining"]))
        recipe["hard_mining_scores"] = {
            "mean": round(float(np.nanmean(scores)), 4),
            "below_0.5": int(np.sum(np.nan_to_num(scores) < 0.5)),
            "max_over_min_weight": round(float(sample_weights.max() / sample_weights.min()), 2)}
        logger.info("hard mining: %d train-fit images scored (mean %.3f, %d below 0.5) in "
                    "%.0f s; weights %.2f-%.2f x uniform", len(scores), np.nanmean(scores),
                    recipe["hard_mining_scores"]["below_0.5"], time.monotonic() - t0,
                    sample_weights.min() * len(scores), sample_weights.max() * len(scores))
    if ckpt is None and float(recipe.get("elongated_weight", 1.0)) != 1.0:
        if elongated is None:
            elongated = elongated_images(train_items)
        sample_weights = shape_weights(elongated, sample_weights,
                                       elongated_weight=float(recipe["elongated_weight"]))
        recipe["elongated_images"] = int(elongated.sum())
        logger.info("elongated images (%d) drawn %.3g x as often", recipe["elongated_images"],
                    recipe["elongated_weight"])
    if sample_weights is not None and sample_weights.size != len(train_items):
        raise ImageExtractError(
            f"the checkpoint's sampling weights cover {sample_weights.size} images but "
            f"{data_dir} has {len(train_items)} train-fit images: resume with the same data")

    here = _device_name(dev)

    def save_checkpoint() -> None:
        spent = time.monotonic() - t_run
        per_device = {**device_seconds, here: device_seconds.get(here, 0.0) + spent}
        _atomic_save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": {"kind": "warmup-cosine", "step": step},
                      "rng": _rng_state(), "step": step, "epoch": step / steps_per_epoch,
                      "best": best, "best_score": best_score, "recipe": recipe,
                      "train_seconds": train_seconds + spent,
                      "device_seconds": per_device, "history": history,
                      "sample_weights": (None if sample_weights is None
                                         else sample_weights.tolist())}, ckpt_path)

    def validate() -> None:
        nonlocal best, best_score
        if not val_items:
            return
        t0 = time.monotonic()
        m = evaluate(net, val_items, coord_scale=mcfg.coord_scale, device=dev,
                     target_diameter=recipe.get("target_diameter"), oracle_scale=True,
                     cluster_options=recipe.get("val_filters", VAL_FILTERS))
        net.train()
        score = selection_score(m)
        m["step"] = step
        m["epoch"] = round(step / steps_per_epoch, 2)
        history.append(dict(m))
        logger.info("val (ground-truth scale) step %d epoch %.1f: %s (%.0f s)",
                    step, step / steps_per_epoch,
                    " ".join(f"{k}={v:.4f}" for k, v in m.items() if k not in ("step", "epoch")),
                    time.monotonic() - t0)
        if score > best_score:
            best_score, best = score, dict(m)
            _atomic_save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                         out / BEST)
            logger.info("new best (score %.4f) saved to %s", score, out / BEST)

    t_run = time.monotonic()
    step0 = step
    last_ckpt = time.monotonic()
    val_steps = int(recipe["val_every"]) * steps_per_epoch
    net.train()
    bar = tqdm(total=stop_step, initial=step, desc="train bpartis", disable=not progress,
               mininterval=10.0, dynamic_ncols=True)
    run_loss, n_loss = 0.0, 0
    logger.info("training: %d steps (%d epochs x %d), crop %d, batch %d, lr %g, device %s",
                total, recipe["epochs"], steps_per_epoch, recipe["crop"], recipe["batch_size"],
                recipe["lr"], dev)
    stopped_early = False
    turn = recipe.get("turn_consistency")
    batches = _BatchStream(train_items, bases, seed=int(recipe["seed"]),
                           batch_size=recipe["batch_size"], crop=recipe["crop"], aug=aug,
                           weights=sample_weights, turned=turn is not None)
    if workers > 0:
        loader = iter(torch.utils.data.DataLoader(
            torch.utils.data.Subset(batches, range(step, stop_step)), batch_size=None,
            shuffle=False, num_workers=int(workers), prefetch_factor=4,
            pin_memory=dev.type == "cuda", worker_init_fn=_worker_init))
    else:
        loader = (batches[i] for i in range(step, stop_step))
    while step < stop_step:
        if max_minutes is not None and (time.monotonic() - t_start) / 60.0 >= max_minutes:
            stopped_early = True
            break
        torch.manual_seed(int(recipe["seed"]) * 1_000_003 + step)
        imgs, targets = next(loader)
        imgs = imgs.to(dev, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, recipe["lr"], recipe["warmup_steps"])
        o = net(imgs)
        loss, parts = instance_loss(o["offsets"], o["log_s"], o["seed"], None,
                                    coord_scale=mcfg.coord_scale, targets=targets, **loss_cfg)
        if turn is not None:
            fg = torch.stack([t["lab_k"] >= 0 for t in targets]).view(imgs.shape[0], 1,
                                                                       *imgs.shape[2:])
            l_off, l_sig = turn_loss(o["offsets"], o["log_s"], fg.to(dev),
                                     coord_scale=mcfg.coord_scale)
            loss = loss + turn["w_offset"] * l_off + turn["w_sigma"] * l_sig
            parts = {**parts, "turn_off": float(l_off.detach()),
                     "turn_sig": float(l_sig.detach())}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        step += 1
        run_loss += float(loss.detach())
        n_loss += 1
        bar.update(1)
        if step % 25 == 0 and step % steps_per_epoch:
            logger.info("step %d loss %.4f (inst %.3f var %.4f seed %.4f%s) %.2f s/step", step,
                        float(loss.detach()), parts["inst"], parts["var"], parts["seed"],
                        ("" if turn is None else
                         f" turn {parts['turn_off']:.2f} px {parts['turn_sig']:.4f}")
                        + (f" repel {parts['repel']:.4f}" if "repel" in parts else ""),
                        (time.monotonic() - t_run) / max(1, step - step0))
        if step % steps_per_epoch == 0:
            logger.info("epoch %d step %d loss %.4f (inst %.3f var %.4f seed %.4f) lr %.2e",
                        step // steps_per_epoch, step, run_loss / max(n_loss, 1), parts["inst"],
                        parts["var"], parts["seed"], opt.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{run_loss / max(n_loss, 1):.4f}")
            run_loss, n_loss = 0.0, 0
        if val_steps > 0 and step % val_steps == 0 and step < total:
            validate()
        if (time.monotonic() - last_ckpt) / 60.0 >= checkpoint_minutes:
            save_checkpoint()
            last_ckpt = time.monotonic()
    bar.close()
    done = step >= total
    if done:
        validate()
    save_checkpoint()
    logger.info("stopped at step %d of %d (%s)", step, total,
                "done" if done else ("time limit" if stopped_early else "step limit"))
    if done and export_at_end:
        finish(data_dir, out, device=device, progress=progress)
    return {"step": step, "total_steps": total, "best": best, "done": done}


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------
def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)
                     and k not in ("step", "epoch"))


def _device_name(dev: torch.device) -> str:
    """Name of the machine kind training runs on, for the model card."""
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} GPU"
    return f"CPU ({torch.get_num_threads()} threads)"


def instance_filters_text(cluster: dict, rescore: dict | None) -> str:
    """The model card's line on the instance filters.  A rescorer's own
    clustering filters (those of the proposals it was fitted on) replace
    ``cluster``'s at inference, as :class:`~imageextract.segment.bpartis.BPartIS`
    applies them.

    >>> instance_filters_text({"min_score": 0.85, "min_rel_area": 0.4}, None)
    "- instance filters: mean seed >= 0.85, area >= 0.4 x the image's median"
    >>> instance_filters_text({"min_score": 0.85, "min_rel_area": 0.4},
    ...                       {"cluster": {"min_score": 0.6, "min_rel_area": 0.05}})[:72]
    "- instance filters: mean seed >= 0.6, area >= 0.05 x the image's median "
    """
    cl = dict(cluster)
    extra = ""
    if rescore and rescore.get("cluster"):
        cl.update(rescore["cluster"])
        extra = (f" (the rescorer's proposal filters; without the rescorer mean seed >= "
                 f"{cluster.get('min_score', 0)}, area >= {cluster.get('min_rel_area', 0)} x)")
    return (f"- instance filters: mean seed >= {cl.get('min_score', 0)}, area >= "
            f"{cl.get('min_rel_area', 0)} x the image's median{extra}")


def sparse_rules_text(spec) -> str:
    """The model card's words for ``inference.sparse_scale_factors`` (one
    rule, a list of rules or None).

    >>> sparse_rules_text({"factors": [0.64], "max_particles": 20})
    '; on an image where that scale keeps at most 20 particles, also at 0.64 x'
    >>> sparse_rules_text([{"factors": [2, 3.2], "max_particles": 5, "max_side_px": 256,
    ...                     "max_scale": 1}])  # doctest: +NORMALIZE_WHITESPACE
    '; on an image where that scale keeps at most 5 particles and shows the image at most
    256 px long, also at 2, 3.2 x (up to 1 x native resolution)'
    """
    if not spec:
        return ""
    rules = [spec] if isinstance(spec, dict) else list(spec)
    parts = []
    for r in rules:
        where = f"keeps at most {r['max_particles']} particles"
        if r.get("max_side_px") is not None:
            where += f" and shows the image at most {r['max_side_px']:g} px long"
        text = (f"on an image where that scale {where}, also at "
                f"{', '.join(f'{f:g}' for f in r['factors'])} x")
        if r.get("max_scale") is not None:
            text += f" (up to {r['max_scale']:g} x native resolution)"
        if r.get("growth"):
            g = r["growth"]
            text += (f", chosen over the surest scale where one of them keeps at least "
                     f"{g['min_particles']} particles and {g['min_ratio']:g} x as many as "
                     "any other scale")
        parts.append(text)
    return "; " + "; ".join(parts)


def _fmt_devices(ckpt: dict) -> str:
    """``"1.20 h (1.20 h on CPU (2 threads))"``; runs before the per-device
    record only give the total."""
    total = f"{ckpt.get('train_seconds', 0) / 3600:.2f} h"
    per = ckpt.get("device_seconds") or {}
    if not per:
        return total
    return total + " (" + ", ".join(f"{v / 3600:.2f} h on {k}" for k, v in per.items()) + ")"


def export(out_dir: str | Path, *, fp16: bool = True, inference: dict | None = None,
           test_metrics: dict | None = None, tuning: dict | None = None,
           notes: str | None = None, final_weights: bool | None = None) -> Path:
    """Write ``weights.pt`` (best val weights, or the checkpoint's when no
    validation ran or with ``final_weights``, plus the size model when
    fitted), ``config.json`` and ``MODEL_CARD.md`` into ``out_dir``.

    Parameters
    ----------
    inference : dict, optional
        Inference settings to record (``mc_samples``, ``uncertainty_threshold``,
        ``tile_px``, ``overlap_px``, ``cluster``); merged over the existing
        config's and the defaults.
    test_metrics : dict, optional
        Metrics on the test split, recorded in the config and the card.
    tuning : dict, optional
        Val metrics of the tuned backend (from :func:`tune`).
    notes : str, optional
        Free text for the card's "Notes" section (kept from an earlier export
        when None).
    final_weights : bool, optional
        Ship the checkpoint's (last) weights rather than ``best.pt``, the
        best on the trainer's val check; None keeps the earlier export's
        choice (``training.weights`` in ``config.json``), else ``best.pt``.

    Returns
    -------
    Path of ``config.json``.
    """
    from ...weights import sha256_file

    out = Path(out_dir)
    ckpt = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
    final = _final_weights(out, final_weights)
    state = _network_state(out, ckpt, final=final)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v) for k, v in state.items()}
    size_stats = {}
    if (out / SIZE_MODEL).is_file():  # stored in full precision beside the network
        from .size import SizeModel, to_state

        state.update(to_state(SizeModel.load(out / SIZE_MODEL)))
        if (out / SIZE_STATS).is_file():
            size_stats = json.loads((out / SIZE_STATS).read_text())
    _atomic_save(state, out / "weights.pt")
    digest = sha256_file(out / "weights.pt")
    cfg_path = out / "config.json"
    old = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    recipe = ckpt["recipe"]
    inf = {"mc_samples": 8, "mc_layers": ["head"], "mc_maps": "mean", "uncertainty": "mi",
           "uncertainty_threshold": None,
           "tile_px": 512, "overlap_px": 128, "canvas_px": CANVAS_PX,
           "target_diameter": recipe.get("target_diameter"),
           "scale_limits": list(recipe.get("scale_limits", (0.05, 2.5))),
           "cluster": {"seed_threshold": 0.5, "fg_threshold": 0.5, "min_size": 10}}
    inf.update(old.get("inference", {}))
    inf.update(inference or {})
    label = _weights_label(out, final)
    checked = _val_check(out, ckpt, final=final)
    metrics = {"val_training": checked} if checked else {}
    for key, val in (("val", tuning), ("test", test_metrics)):
        if val:
            metrics[key] = val
        elif old.get("metrics", {}).get(key):
            metrics[key] = old["metrics"][key]
    if notes is None:
        notes = old.get("notes", "")
    cfg = {
        "backend": "bpartis",
        "version": VERSION,
        "weights": "weights.pt",
        "sha256": digest,
        "model": recipe["model"],
        "inference": inf,
        "training": {k: v for k, v in recipe.items() if k != "model"}
        | {"steps_done": ckpt["step"], "train_hours": round(ckpt.get("train_seconds", 0) / 3600, 2),
           "train_hours_by_device": {k: round(v / 3600, 3)
                                     for k, v in (ckpt.get("device_seconds") or {}).items()},
           "data": "EMPS train-fit (official train minus val)",
           "weights": label},
        "size_model": size_stats,
        "metrics": metrics,
        "notes": notes,
    }
    cfg_path.write_text(dumps_config(cfg))
    cl = inf.get("cluster", {})
    extra_factors = [f for f in inf.get("scale_factors", [1]) if f != 1]
    sparse = inf.get("sparse_scale_factors")
    lines = [
        "# bpartis-emps — Bayesian particle instance segmentation (EMPS)",
        "",
        "Re-implementation of BPartIS (Yildirim & Cole, J. Chem. Inf. Model. 2021) in plain "
        "PyTorch: EfficientNet-Lite0 encoder (ImageNet init), light U-Net decoder, offset + "
        "elliptical-sigma and seed heads, SpatialEmbeddings-style loss (Lovász hinge 1, seed 1, "
        "sigma smoothness 10), MC dropout in the decoder tail, mutual-information uncertainty.",
        "",
        "## Data",
        "EMPS (MIT licence): trained on `train-fit` (official train split minus the hash-chosen "
        "10 % `val` split); tuned on `val`; `test` is used only for reporting.",
        "",
        "## Recipe",
        f"- steps: {ckpt['step']} of {recipe['total_steps']} ({recipe['epochs']} epochs), crop "
        f"{recipe['crop']} px, batch {recipe['batch_size']}, AdamW lr {recipe['lr']} "
        f"(warm-up {recipe['warmup_steps']}, cosine), weight decay {recipe['weight_decay']}"
        + (f"; started from `{recipe['init_weights']}`" if recipe.get("init_weights") else ""),
        f"- scale: each image is resized so that its median particle is "
        f"{recipe.get('target_diameter')} px across, times a log-uniform factor in "
        f"{list(recipe['scale_range'])}; smaller images are placed on a flat canvas",
        "- augmentation: random crops, 90° rotations, flips, grey, inversion, "
        "contrast/brightness, gamma, noise"
        + (f", particle shading (p {recipe['p_shade']})" if recipe.get("p_shade") else "")
        + (f", illumination field (p {recipe['p_illumination']})"
           if recipe.get("p_illumination") else "")
        + (f", turns by any angle (p {recipe['p_rotate']})" if recipe.get("p_rotate") else "")
        + (f", rods of the training images pasted on (p {recipe['p_paste']})"
           if recipe.get("p_paste") else "")
        + (f", stretched along one axis, aspect ratio up to {recipe['max_stretch']} x "
           f"(p {recipe['p_stretch']})" if recipe.get("p_stretch") else ""),
        *([f"- quarter-turn consistency: half of each batch is the other half turned 90°; the "
           f"x offsets and x sigma learn the turned y ones (weights "
           f"{recipe['turn_consistency']['w_offset']:g} per px and "
           f"{recipe['turn_consistency']['w_sigma']:g}, `--turn-consistency`)"]
          if recipe.get("turn_consistency") else []),
        *([f"- neighbour repulsion: each particle's Gaussian is kept below 0.3 at its "
           f"neighbours' centroids (weight {recipe['loss']['w_repel']:g}, `--repel-weight`)"]
          if recipe["loss"].get("w_repel") else []),
        f"- training time of this run: {_fmt_devices(ckpt)}",
        "",
        "## Inference",
        "- working scale per image: size model (ridge regression on pooled encoder features"
        + (f" read at {', '.join(f'{p:g}' for p in size_stats['probes'])} x the probe scale"
           if len(size_stats.get("probes", [1])) > 1 else "")
        + f", val: {size_stats.get('val_within_50pct', float('nan')):.0%} of estimates within "
        f"50 %; on an image at least twice the probe's size whose particles it reads under "
        f"{ZOOM_BELOW:g} px, it reads 2 x 2 windows again at a larger scale), then "
        f"{inf.get('max_passes', 2)} refinement(s) from the particles found and "
        f"{inf.get('max_halvings', 2)} fragmentation check(s) at half scale; target "
        f"{inf.get('target_diameter')} px; tiles {inf['tile_px']} px with "
        f"{inf['overlap_px']} px overlap at that scale"
        + (f"; an image smaller than {inf['canvas_px']} px there runs on a flat canvas of "
           "its mean grey, as training shows it" if inf.get("canvas_px") else "")
        + (f"; then also at {', '.join(f'{f:g}' for f in extra_factors)} x "
           "that scale, keeping the result whose particles are surest (mean score x "
           "(1 - uncertainty)"
           + (f", plus {inf['scale_coverage']:g} x the share of the network's foreground "
              "they cover" + (" where the particles found have a median elongation of at "
                              f"least {inf['scale_coverage_min_elongation']:g}"
                              if inf.get("scale_coverage_min_elongation") is not None else "")
              if inf.get("scale_coverage") else "")
           + ")" if extra_factors else "")
        + (f", unless the particles at that scale are already that sure (at least "
           f"{inf['sure_confidence']:g})"
           if extra_factors and inf.get("sure_confidence") is not None else "")
        + sparse_rules_text(sparse)
        + (f", and adding the particles only the other scales found (score >= "
           f"{inf['scale_merge'].get('min_score', 0.9):g}, at most "
           f"{inf['scale_merge'].get('max_overlap', 0.05):.0%} of their pixels already taken)"
           if inf.get("scale_merge") and (extra_factors or sparse) else ""),
        f"- MC dropout: {inf['mc_samples']} samples of {'+'.join(inf['mc_layers'])} "
        f"(the encoder and the rest of the decoder run once); clustered maps: "
        + ("the samples' mean" if inf.get("mc_maps", "mean") == "mean"
           else "the deterministic pass (the samples give the uncertainty)")
        + f"; per-particle uncertainty: {UNCERTAINTY_TEXT[inf.get('uncertainty', 'mi')]}; "
        + ("no threshold" if inf["uncertainty_threshold"] is None
           else f"particles above t_u = {inf['uncertainty_threshold']:.4g} are removed "
           "as likely false positives"),
        instance_filters_text(cl, inf.get("rescore")),
    ]
    if inf.get("outline"):
        lines.append(
            "- outlines: the pixels within "
            f"{float(inf['outline'].get('band', 4.0)):g} working-scale px of each particle's "
            "outline are re-decided by the learned outline refiner (see Outline refinement)"
            + ("" if int(inf["outline"].get("passes", 1)) == 1 else
               f", {int(inf['outline']['passes'])} passes, each from the outlines the one "
               "before drew"))
    if inf.get("specialist"):
        sp = inf["specialist"]
        lines.append(
            f"- specialist: on an image where the result keeps at most {sp['max_particles']} "
            "particles"
            + (f" or their median elongation is at least {sp['min_elongation']:g}"
               if sp.get("min_elongation") is not None else "")
            + (f", unless it is already sure of them (confidence at least "
               f"{sp['max_confidence']:g})" if sp.get("max_confidence") is not None else "")
            + f", the network `{sp['model']}` (its own size model, rescorer and outline "
            "refiner) segments it too, and the result whose particles are surer is kept")
    from . import BAR_DEFAULTS, COARSE_DEFAULTS
    from .fragments import DEFAULTS, ROD_DEFAULTS

    for key, defaults, sentence in (("join_fragments", DEFAULTS, _JOIN_TEXT),
                                    ("whole_rods", ROD_DEFAULTS, _WHOLE_RODS_TEXT),
                                    ("drop_scale_bars", BAR_DEFAULTS, _SCALE_BARS_TEXT),
                                    ("coarse_pass", COARSE_DEFAULTS, _COARSE_TEXT)):
        if inf.get(key) is not None:  # a last step on: its sentence with the options it runs with
            lines.append(sentence.format(**{**defaults, **inf[key]}))
    lines += [
        "",
        "## Metrics (BPartIS-paper AP/AP50/AP75/mean IoU and AJI+, docs/METRICS.md)",
        f"- weights: {_WEIGHTS_TEXT[label]} (step "
        f"{ckpt['step'] if label == 'final' else ckpt['best'].get('step', '?')})",
    ]
    if checked:
        lines.append(
            "- val during training (these weights; a training check, not the backend's number: "
            "one pass at the ground-truth scale, no scale search, rescoring or outline "
            "refinement, so judge weights with `benchmarks/bench_val_views.py`): "
            + _fmt(checked))
    if metrics.get("val"):
        lines.append("- val, backend as shipped (tuned there): " + _fmt(metrics["val"]))
    if metrics.get("test"):
        lines.append("- test (99 images), backend as shipped: " + _fmt(metrics["test"]))
    if notes:
        lines += ["", "## Notes", notes]
    lines += ["", "## Weights", f"`weights.pt` sha256: `{digest}` (network in fp16 and the "
              "size model)", ""]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))
    logger.info("exported %s (sha256 %s)", out / "weights.pt", digest[:12])
    return cfg_path


#: the model card's sentences for the backend's last steps (``inference.join_fragments``,
#: ``whole_rods``, ``drop_scale_bars``, ``coarse_pass``), formatted with the options each runs with
_JOIN_TEXT = (
    "- pieces of a long rod cut across are joined: two touching particles (at most {gap:g} px "
    "apart) lying end to end along the more elongated one's axis (elongation at least "
    "{min_elongation:g}, within {max_angle:g}°) and touching across at least {min_contact:g} of "
    "its width, when the joined particle is at most {max_width_ratio:g} x as wide, at least "
    "{min_gain:g} x as elongated as either and at least {min_union_elongation:g} in all")
_WHOLE_RODS_TEXT = (
    "- a long rod whose pieces were found apart is made whole from the network's foreground "
    "(seed above {fg_threshold:g}): a band of it at least {min_elongation:g} x as long as wide, "
    "nowhere in its middle narrower than {min_waist:g} x its median width, whose particles are "
    "all pieces of it (as wide within {max_width_ratio:g} x, on its axis, along it within "
    "{max_angle:g}°), becomes one particle")
_SCALE_BARS_TEXT = (
    "- a particle lying on a scale bar drawn on the image (at least {min_inside:g} of its pixels "
    "in the bar's box; a bar found without OCR and counted as drawn when at least {min_flat:g} "
    "of its pixels are flat) is dropped")
_COARSE_TEXT = (
    "- a last look for particles too large for the working scale: the image is segmented again, "
    "the same way, at {factor:g} x the scale used, and its particles that score at least "
    "{min_score:g} and are at least {min_rel_area:g} x the median area of those kept are added "
    "where at most {max_overlap:.0%} of their pixels are taken")
_WEIGHTS_TEXT = {"best": "the best on the trainer's val check (`best.pt`)",
                 "final": "the last of the schedule (the checkpoint's)"}


def _final_weights(out: Path, final_weights: bool | None) -> bool:
    """Whether to use the checkpoint's (last) weights: as asked, else as the
    earlier export of ``out`` recorded it (``training.weights``)."""
    if final_weights is not None:
        return bool(final_weights)
    cfg = out / "config.json"
    if not cfg.is_file():
        return False
    return json.loads(cfg.read_text()).get("training", {}).get("weights") == "final"


def _network_state(out: Path, ckpt: dict, *, final: bool) -> dict:
    """The network weights of a run: ``best.pt`` unless ``final`` or absent."""
    if not final and (out / BEST).is_file():
        return torch.load(out / BEST, map_location="cpu", weights_only=True)
    return ckpt["model"]


def _weights_label(out: Path, final: bool) -> str:
    return "final" if final or not (out / BEST).is_file() else "best"


def _val_check(out: Path, ckpt: dict, *, final: bool) -> dict | None:
    """The trainer's val check of the weights shipped: the best one, or for
    the last weights the check at the checkpoint's step (None if none ran
    there)."""
    if _weights_label(out, final) == "best":
        return ckpt["best"]
    last = [h for h in ckpt.get("history") or () if h.get("step") == ckpt["step"]]
    return last[-1] if last else None


def _load_best(out: Path, device, *, final: bool = False) -> tuple[BPartISNet, dict]:
    ckpt = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
    state = _network_state(out, ckpt, final=final)
    net = BPartISNet(ModelConfig.from_dict(ckpt["recipe"]["model"]))
    net.load_state_dict(state)
    net.to(device).eval()
    return net, ckpt["recipe"]


def _instance_precision(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Whether each predicted instance 1..K matches a ground-truth instance
    at IoU > 0.5 (bool array, (K,))."""
    from ...evaluation.metrics import _check_pair, _overlap

    return (_overlap(*_check_pair(gt, pred)).iou() > 0.5).any(0)


def filter_sweep(preds: list[tuple], settings: list[dict], *,
                 per_image: bool = False) -> list[dict]:
    """Metrics of the predictions after each setting of the instance filters.

    Parameters
    ----------
    preds : list of ``(gt, labels, scores, uncertainty)``
    settings : list of dicts with any of ``min_score``, ``min_rel_area`` and
        ``uncertainty_threshold`` (None or ``inf`` keeps everything), passed
        to :func:`~.inference.filter_instances`

    Returns
    -------
    One dict per setting: the setting, the paper metrics, AJI+, ``kept``
    (fraction of instances kept) and ``instance_precision`` (share of kept
    instances that match a ground-truth particle at IoU > 0.5, pooled over
    images); with ``per_image``, also ``per_image_score``: each image's
    :func:`selection_score`, in the order of ``preds``.
    """
    paper, aji = _metric_fns()
    out = []
    n_all = sum(int(p[2].size) for p in preds)
    for setting in settings:
        opts = dict(setting)
        thr = opts.get("uncertainty_threshold")
        if thr is not None and not math.isfinite(thr):
            opts["uncertainty_threshold"] = None
        rows, n_kept, n_match = [], 0, 0
        for gt, lab, sc, un in preds:
            lab, sc, un = filter_instances(lab, sc, un, **opts)
            r = {k: float(v) for k, v in paper(gt, lab).items()
                 if k in ("ap", "ap50", "ap75", "mean_iou")}
            if aji is not None:
                r["aji_plus"] = float(aji(gt, lab))
            rows.append(r)
            m = _instance_precision(gt, lab)
            n_kept += m.size
            n_match += int(m.sum())
        metrics = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
        out.append({**opts, **metrics, "kept": n_kept / max(n_all, 1),
                    "instance_precision": n_match / max(n_kept, 1),
                    "score": selection_score(metrics)})
        if per_image:
            out[-1]["per_image_score"] = [selection_score(r) for r in rows]
    return out


def paired_win_rate(candidate, baseline, *, n_boot: int = 2000, seed: int = 0) -> float:
    """Share of bootstrap resamples of the images in which ``candidate``'s
    mean per-image score beats ``baseline``'s (paired: the same images).

    >>> paired_win_rate([0.9, 0.8, 0.9, 0.7], [0.5, 0.6, 0.5, 0.4])
    1.0
    >>> paired_win_rate([0.9, 0.1], [0.5, 0.5]) < 0.9
    True
    """
    d = np.asarray(candidate, float) - np.asarray(baseline, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return 0.0
    idx = np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))
    return float((d[idx].mean(1) > 0).mean())


def uncertainty_sweep(preds: list[tuple], thresholds) -> list[dict]:
    """:func:`filter_sweep` over uncertainty thresholds alone (``inf`` keeps
    everything)."""
    return filter_sweep(preds, [{"uncertainty_threshold": float(t)} for t in thresholds])


def fit_size(data_dir: str | Path, out_dir: str | Path, *, device: str = "cpu",
             progress: bool = True, per_image: int = 3, seed: int = 0,
             probes: tuple[float, ...] = (1.0,), final_weights: bool = False) -> dict:
    """Fit the size model (:mod:`.size`) on the best weights' encoder (the
    last weights' with ``final_weights``):
    ``train-fit`` images at random scales (less those the run left out:
    its recipe's ``exclude``), ridge alpha chosen on ``val``.
    Writes ``size_model.npz`` and ``size_model.json`` (its accuracy) into
    ``out_dir``; :func:`export` stores it inside ``weights.pt``."""
    from .size import fit_size_model

    out = Path(out_dir)
    dev = _resolve_device(device)
    net, recipe = _load_best(out, dev, final=final_weights)
    fit_items = load_split(data_dir, "train-fit", progress=progress,
                           exclude=recipe.get("exclude", ()))
    model, stats = fit_size_model(net, fit_items,
                                  load_split(data_dir, "val", progress=progress),
                                  per_image=per_image, probes=probes, seed=seed,
                                  device=dev, progress=progress)
    model.save(out / SIZE_MODEL)
    (out / SIZE_STATS).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _size_model(out: Path):
    from .size import SizeModel

    return SizeModel.load(out / SIZE_MODEL) if (out / SIZE_MODEL).is_file() else None


def tune(data_dir: str | Path, out_dir: str | Path, *, samples: tuple[int, ...] = (1, 4, 8, 16),
         layer_sets: tuple[tuple[str, ...], ...] = (("head",), ("dec1", "head")),
         min_scores: tuple[float, ...] = (0.0, 0.6, 0.7, 0.75, 0.78, 0.8, 0.82, 0.85),
         min_rel_areas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4),
         keep_fractions: tuple[float, ...] = (1.0, 0.99, 0.98, 0.96, 0.94, 0.92, 0.9, 0.85, 0.8),
         searches: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (2, 0), (2, 1)),
         fg_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5), refilter_top: int = 4,
         mc_maps: tuple[str, ...] = ("mean", "point"),
         uncertainty_kinds: tuple[str, ...] = ("mi", "consistency"), min_samples: int = 2,
         search_confidence: float = 0.9,
         split: str = "val", device: str = "cpu", progress: bool = True,
         write: bool = True, final_weights: bool = False) -> dict[str, Any]:
    """Tune the scale search, the instance filters, the foreground threshold,
    the MC samples ``T``, the dropout layers sampled and the uncertainty
    threshold ``t_u`` on ``split`` (val).

    0. Scale search: each ``(max_passes, max_halvings)`` in ``searches``
       (refinements of the size model's first guess from the particles
       found, fragmentation checks; see :func:`~.inference.find_scale`)
       segments the split once (``T = 1``, filters :data:`VAL_FILTERS`).
       The first search is the default; another is taken only if it beats
       the default in at least ``search_confidence`` of paired bootstrap
       resamples of the images (:func:`paired_win_rate`): a search step
       that misfires wrecks a whole image, and a small split can hide that.
    1. Filters: with the best search, the split is segmented once; every
       ``(min_score, min_rel_area)`` pair only re-filters the instances.
       Exact for the single-pass search ``(0, 0)``; otherwise the filters
       also steer the search, which re-filtering does not see, so the
       ``refilter_top`` best re-filtered pairs and :data:`VAL_FILTERS` are
       measured with the filters in the loop (rows with ``in_loop``, listed
       first) and the best of those is taken.
    1b. Foreground threshold of the clustering: one pass per value.
    2. With the best of those, each ``(T, layers, mc_maps, uncertainty)``
       setting segments the split once (``mc_maps``: cluster the samples'
       mean or the deterministic pass, see :func:`~.inference.network_maps`;
       ``uncertainty``: one of ``uncertainty_kinds``, see
       :func:`~.inference.segment_maps`); the thresholds tried are the
       quantiles of the instances' uncertainties that keep
       ``keep_fractions`` of them.

    The setting with the best :func:`selection_score` (ties: faster, then
    the higher share of kept instances that match a particle) among
    those with at least ``min_samples`` MC samples (default 2: the backend
    ships with its uncertainty on; ``T = 1`` rows are measured for
    reference) is written into ``config.json`` via :func:`export` when ``write``, and the
    whole table into ``tune.json``.  ``final_weights``: tune (and export) the
    checkpoint's last weights rather than ``best.pt``.

    Returns
    -------
    dict with ``best`` (settings and metrics), ``search`` (stage 0 table),
    ``filters`` (stage 1), ``foreground`` (stage 1b) and ``table`` (stage 2,
    one row per ``(T, layers, threshold)``, with seconds per image).
    """
    out = Path(out_dir)
    dev = _resolve_device(device)
    net, recipe = _load_best(out, dev, final=final_weights)
    coord_scale = ModelConfig.from_dict(recipe["model"]).coord_scale
    size_model = _size_model(out)
    items = load_split(data_dir, split, progress=progress)

    def segment_all(t: int, layers, cluster_options: dict, search: dict,
                    maps: str = "mean", kind: str = "mi") -> tuple[list, float]:
        preds = []
        t0 = time.monotonic()
        for _, rgb, gt in tqdm(items, desc=f"tune T={t} {'+'.join(layers)} {maps} {kind}",
                               disable=not progress, leave=False):
            res = segment_image(net, rgb, coord_scale=coord_scale, samples=t,
                                target_diameter=recipe.get("target_diameter"),
                                size_model=size_model, mc_layers=layers, mc_maps=maps,
                                uncertainty=kind, device=dev,
                                cluster_options=cluster_options, **search)
            preds.append((gt, res["labels"], res["scores"], res["uncertainty"]))
        return preds, (time.monotonic() - t0) / max(1, len(items))

    def measure(cluster_options: dict, search: dict, per_image: bool = False) -> dict:
        """Metrics of one ``T = 1`` pass over the split, as the backend runs it."""
        preds, secs = segment_all(1, ("head",), cluster_options, search)
        return {**filter_sweep(preds, [{}], per_image=per_image)[0],
                "seconds_per_image": round(secs, 3)}

    search_table = []
    for passes, halvings in searches:
        search = {"max_passes": passes, "max_halvings": halvings}
        search_table.append({**search, **measure(VAL_FILTERS, search, per_image=True)})
        if len(search_table) > 1:
            search_table[-1]["win_rate"] = paired_win_rate(
                search_table[-1]["per_image_score"], search_table[0]["per_image_score"])
        logger.info("tune scale search: %s", {k: v for k, v in search_table[-1].items()
                                              if k != "per_image_score"})
    allowed = [search_table[0]] + [r for r in search_table[1:]
                                   if r["win_rate"] >= search_confidence]
    best_s = max(allowed, key=lambda r: (round(r["score"], 3), -r["seconds_per_image"]))
    search = {"max_passes": best_s["max_passes"], "max_halvings": best_s["max_halvings"]}
    preds, _ = segment_all(1, ("head",), {}, search)
    filt_table = filter_sweep(preds, [{"min_score": a, "min_rel_area": b}
                                      for a in min_scores for b in min_rel_areas])
    def filter_key(r):
        return (round(r["score"], 3), -r["min_score"], -r["min_rel_area"])

    best_f = max(filt_table, key=filter_key)
    if search["max_passes"] or search["max_halvings"]:
        # the filters steer this search: re-filtering only ranks the candidates;
        # the best few (and the stage-0 filters) are measured with them in the loop
        top = sorted(filt_table, key=filter_key, reverse=True)[:refilter_top]
        candidates = [{"min_score": r["min_score"], "min_rel_area": r["min_rel_area"]}
                      for r in top]
        stage0 = {**VAL_FILTERS, **{k: v for k, v in best_s.items()
                                    if k not in search and k not in ("per_image_score",
                                                                     "win_rate")}}
        measured = [stage0] + [{**f, **measure(f, search)} for f in candidates
                               if f != VAL_FILTERS]
        for r in measured:
            r["in_loop"] = True
        filt_table = measured + filt_table
        best_f = max(measured, key=filter_key)
    filters = {"min_score": best_f["min_score"], "min_rel_area": best_f["min_rel_area"]}
    logger.info("tune filters: %s", best_f)

    def with_fg(fg: float) -> dict:  # no seed below the foreground threshold can start one
        return {**filters, "fg_threshold": fg, "seed_threshold": max(0.5, fg)}

    fg_table = []
    for fg in fg_thresholds:
        fg_table.append({"fg_threshold": fg, **measure(with_fg(fg), search)})
        logger.info("tune foreground: %s", fg_table[-1])
    if fg_table:
        filters = with_fg(max(fg_table, key=lambda r: (round(r["score"], 3),
                                                       r["fg_threshold"]))["fg_threshold"])
    table = []
    settings = [(t, layers, maps, kind) for t in samples
                for layers in (layer_sets if t > 1 else (("head",),))
                for maps in (mc_maps if t > 1 else ("mean",))
                for kind in (uncertainty_kinds if t > 1 else ("mi",))]
    for t, layers, maps, kind in settings:
        preds, secs = segment_all(t, layers, filters, search, maps, kind)
        if t > 1:
            allu = np.concatenate([p[3] for p in preds]) if preds else np.zeros(0)
            thrs = sorted({float("inf")} | {float(np.quantile(allu, q))
                                            for q in keep_fractions if q < 1 and allu.size})
        else:
            thrs = [float("inf")]
        for row in uncertainty_sweep(preds, thrs):
            thr = row.pop("uncertainty_threshold")
            row = {"mc_samples": t, "mc_layers": list(layers), "mc_maps": maps,
                   "uncertainty": kind,
                   "seconds_per_image": round(secs, 3), **filters,
                   "uncertainty_threshold": thr, **row}
            table.append(row)
            logger.info("tune %s", row)
    eligible = [r for r in table if r["mc_samples"] >= min_samples] or table
    best = max(eligible, key=lambda r: (round(r["score"], 3), -r["seconds_per_image"],
                                        r.get("instance_precision", 0.0)))
    if write:
        (out / "tune.json").write_text(json.dumps(
            {"split": split, "best": best, "search": search_table, "filters": filt_table,
             "foreground": fg_table, "table": table},
            indent=2, default=float) + "\n")
        cfg_file = out / "config.json"
        old = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        cluster_opts = {"seed_threshold": 0.5, "fg_threshold": 0.5, "min_size": 10}
        cluster_opts.update(old.get("inference", {}).get("cluster", {}))
        cluster_opts.update(filters)
        export(out, inference={"mc_samples": max(best["mc_samples"], 1),
                               "mc_layers": best["mc_layers"], "mc_maps": best["mc_maps"],
                               "uncertainty": best.get("uncertainty", "mi"),
                               "uncertainty_threshold": best["uncertainty_threshold"],
                               **search, "cluster": cluster_opts},
               tuning={k: best[k] for k in ("ap", "ap50", "ap75", "mean_iou", "aji_plus",
                                            "kept", "instance_precision",
                                            "seconds_per_image") if k in best},
               final_weights=final_weights)
    return {"best": best, "search": search_table, "filters": filt_table,
            "foreground": fg_table, "table": table}


# fitted to one network's outputs: never carried over from another model
_NETWORK_FITTED = ("rescore", "outline")


def inference_of(model_dir: str | Path) -> dict[str, Any]:
    """The inference settings of an exported model (``config.json``), less
    the parts fitted to its network (rescorer, outline refiner)."""
    path = Path(model_dir) / "config.json"
    try:
        inf = json.loads(path.read_text())["inference"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageExtractError(f"{path}: expected an exported bpartis config.json with "
                                f"an 'inference' section ({exc})") from exc
    if not isinstance(inf, dict):
        raise ImageExtractError(f"{path}: 'inference' must be a mapping, got "
                                f"{type(inf).__name__}")
    return {k: v for k, v in inf.items() if k not in _NETWORK_FITTED}


def finish(data_dir: str | Path, out_dir: str | Path, *, device: str = "cpu",
           progress: bool = True, rescore: bool = True, outline: bool = True,
           inference_from: str | Path | None = None,
           final_weights: bool = False, rescore_factors=(1.0,),
           rescore_threshold: float | None = None) -> dict[str, Any]:
    """After training: fit the size model, tune the MC samples, dropout
    layers and uncertainty threshold on ``val``, export the model folder
    (``weights.pt``, ``config.json``, ``MODEL_CARD.md``), with ``rescore``
    fit and install the learned particle rescorer (:mod:`.rescore_fit`), and
    with ``outline`` the learned outline refiner (:mod:`.outline_fit`; it is
    installed only if it raises the ``val`` score).

    Parameters
    ----------
    inference_from : path, optional
        An exported model folder whose inference settings are taken as they
        are (:func:`inference_of`) instead of tuning on ``val``: how a
        specialist is finished with its base model's settings, so that val
        is not spent on tuning a network judged there.
    final_weights : bool
        Ship the last weights of the schedule (the checkpoint's) rather than
        ``best.pt``, the best on the trainer's val check.
    rescore_factors : sequence of float
        Fit the rescorer on the proposals at these multiples of the working
        scale found (the shipped model's: 0.8, 1, 1.25).
    rescore_threshold : float, optional
        The rescorer's threshold; None: the one its cross-validation scores
        best.
    """
    from .rescore_fit import fit_options

    try:  # checked before the long steps, not when the rescorer is fitted
        factors, threshold = fit_options(rescore_factors, rescore_threshold)
    except ValueError as exc:
        raise ValueError(f"rescore_{exc}") from exc
    inference = None if inference_from is None else inference_of(inference_from)
    stats = fit_size(data_dir, out_dir, device=device, progress=progress,
                     final_weights=final_weights)
    out: dict[str, Any] = {"size_model": stats}
    if inference is None:
        res = tune(data_dir, out_dir, device=device, progress=progress, write=True,
                   final_weights=final_weights)
        out["tuned"] = res["best"]
    else:
        export(out_dir, inference=inference, final_weights=final_weights)
        out["inference_from"] = str(inference_from)
    if rescore:
        from .rescore_fit import fit_for_model

        fitted = fit_for_model(out_dir, data_dir, device=device, progress=progress,
                               factors=factors, threshold=threshold)
        out["rescore"] = {k: v for k, v in fitted.items() if k != "rescorer"}
    if outline:
        from .outline_fit import fit_for_model as fit_outline

        fitted = fit_outline(out_dir, data_dir, device=device, progress=progress)
        out["outline"] = {k: v for k, v in fitted.items() if k != "refiner"}
    return out


def training_exclude(model_dir: str | Path) -> list[str]:
    """The train-fit stems the network of the exported model in
    ``model_dir`` was trained without (its ``config.json`` ``training``
    ``exclude``; empty when none or no config)."""
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        return []
    return list(json.loads(cfg.read_text()).get("training", {}).get("exclude", []))


def read_stems(path: str | Path) -> list[str]:
    """Stems listed one per line in ``path`` (blank lines and ``#`` comments
    skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ImageExtractError(f"cannot read the stem list {path}: {exc}") from exc
    stems = (ln.split("#", 1)[0].strip() for ln in lines)
    return [s for s in stems if s]


def _main(argv: list[str] | None = None) -> int:
    import argparse

    from ...cli import add_training_options  # shared with `imageextract train`

    p = argparse.ArgumentParser(prog="python -m imageextract.segment.bpartis.train",
                                description="Train the bpartis backend (resumable).")
    add_training_options(p)
    p.add_argument("--crop", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-finish", action="store_true",
                   help="stop after training; run --finish later (e.g. off the GPU machine)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return _run_main(a)
    except ImageExtractError as err:  # bad input: a message, not a traceback
        p.exit(2, f"{p.prog}: error: {err}\n")


def _run_main(a) -> int:
    from ...cli import finish_options, training_options

    fin = finish_options(a)  # refuses the finishing options without --finish
    if fin is not None:
        res = finish(a.data, a.out, progress=not a.no_progress, **fin)
        logging.getLogger(__name__).info("result: %s", res)
        return 0

    res = train(a.data, a.out, crop=a.crop, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                val_every=a.val_every, checkpoint_minutes=a.checkpoint_minutes,
                progress=not a.no_progress, max_steps=a.max_steps, threads=a.threads,
                export_at_end=not a.no_finish, **training_options(a))
    logging.getLogger(__name__).info("result: %s", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
