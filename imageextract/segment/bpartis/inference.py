"""Tiled, MC-dropout inference of a :class:`~.model.BPartISNet` on one image.

Large images are cut into overlapping tiles; each tile's outputs are kept only
in its core (the overlaps are split at their midpoints), so the stitched maps
equal those of a network that saw every pixel with at least ``overlap / 2``
pixels of context.  Offsets are relative to each pixel, so the stitched maps
are clustered once on the whole image and particles on a seam stay whole.
"""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from ..base import keep_instances
from .cluster import cluster, compiled_clustering, instance_consistency, instance_means
from .model import BPartISNet


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``0..n``.

    >>> tile_starts(1000, 512, 96)
    [0, 416, 488]
    >>> tile_starts(300, 512, 96)
    [0]
    """
    if n <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def core_bounds(starts: list[int], tile: int, n: int) -> list[tuple[int, int]]:
    """Global ``(lo, hi)`` of the part of each tile whose outputs are kept.

    >>> core_bounds([0, 416, 488], 512, 1000)
    [(0, 464), (464, 708), (708, 1000)]
    """
    out = []
    for i, s in enumerate(starts):
        lo = 0 if i == 0 else (starts[i - 1] + tile + s) // 2
        hi = n if i == len(starts) - 1 else (s + tile + starts[i + 1]) // 2
        out.append((lo, hi))
    return out


def stitch(tiles: dict, ys: list[int], xs: list[int], tile: int, shape: tuple[int, int]) -> np.ndarray:
    """Assemble per-tile maps into one image-sized map.

    Parameters
    ----------
    tiles : dict (i, j) -> (C, th, tw) array
        Output of the tile starting at ``(ys[i], xs[j])``.
    ys, xs : list of int
        Tile starts (from :func:`tile_starts`).
    tile : int
        Nominal tile size.
    shape : (M, N)

    Returns
    -------
    (C, M, N) array
    """
    h, w = shape
    by, bx = core_bounds(ys, tile, h), core_bounds(xs, tile, w)
    first = next(iter(tiles.values()))
    out = np.zeros((first.shape[0], h, w), first.dtype)
    for (i, j), arr in tiles.items():
        _paste(out, arr, ys[i], xs[j], by[i], bx[j])
    return out


def _paste(out: np.ndarray, arr: np.ndarray, y0: int, x0: int, yb: tuple[int, int],
           xb: tuple[int, int]) -> None:
    """Write the core ``yb`` x ``xb`` (image rows and columns, from
    :func:`core_bounds`) of the tile ``arr`` (..., th, tw) that starts at
    ``(y0, x0)`` into ``out`` (..., M, N)."""
    (ylo, yhi), (xlo, xhi) = yb, xb
    out[..., ylo:yhi, xlo:xhi] = arr[..., ylo - y0:yhi - y0, xlo - x0:xhi - x0]


#: Tiles smaller than this (px) run on a flat canvas of their mean grey, as
#: training shows them (:func:`~.train.augment_crop`).
CANVAS_PX = 256


def _pad32(x: torch.Tensor, *, canvas: int = 0) -> tuple[torch.Tensor, int, int]:
    """Pad ``x`` (B, C, h, w) at the bottom and right to multiples of 32;
    returns ``(padded, h, w)``.

    A tile smaller than ``canvas`` on either side is placed at the top left
    of a ``canvas``-sized (then 32-rounded) field of its own mean grey: the
    way training crops show an image smaller than the crop.  Mirrored
    borders instead make a small image look like part of a larger one, and
    the network then misses or splits its few large particles (EMPS val,
    2026-12-01: 0.131 against 0.961 on a two-particle image).
    """
    h, w = x.shape[-2:]
    if canvas and (h < canvas or w < canvas):
        hh, ww = max(h, canvas), max(w, canvas)
        hh, ww = hh + (-hh) % 32, ww + (-ww) % 32
        out = x.mean((-2, -1), keepdim=True).expand(*x.shape[:-2], hh, ww).clone()
        out[..., :h, :w] = x
        return out, h, w
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


_LN2 = float(np.log(2.0))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy (nats) of ``p`` clamped to [1e-7, 1 - 1e-7]:
    ``-(p log p + (1 - p) log1p(-p))``, with three temporaries instead of
    nine (the same operations on the same operands: the same values)."""
    p = p.clamp(1e-7, 1 - 1e-7)
    out = torch.log(p).mul_(p)
    q = torch.neg(p).log1p_().mul_(torch.rsub(p, 1))
    return out.add_(q).neg_()


def _tile_maps(net: BPartISNet, t: torch.Tensor, samples: int,
               mc_layers: tuple[str, ...], mc_maps: str = "mean",
               keep: list | None = None, canvas: int = 0) -> tuple[torch.Tensor, ...]:
    """Offsets, log_s, seed and MI of one ``(1, 3, h, w)`` tile; with a
    ``keep`` list, the MC samples' maps are appended to it in order, as
    float16 chunks ``(n, 5, h, w)`` of one or more samples; ``canvas`` as
    in :func:`_pad32`."""
    x, th, tw = _pad32(t, canvas=canvas)
    x = x.contiguous(memory_format=torch.channels_last)  # the backend's layout
    if samples > 1:
        point = mc_maps == "point"
        o, chunks = net.sample_mc_chunks(x, samples, layers=mc_layers, point=point, reuse=True)
        if point:
            off, ls = o["offsets"][0, :, :th, :tw], o["log_s"][0, :, :th, :tw]
            seed = o["seed"][0, :, :th, :tw]
        off_sum = ls_sum = p_sum = ent_sum = 0.0
        for chunk in chunks:  # (n, 1, 5, H, W)
            c = chunk[:, 0, :, :th, :tw]
            if keep is not None:
                keep.append(c.half().cpu())
            p = c[:, 4:5]
            ent = _entropy(p)
            # summed one sample at a time, in order: the same maps whatever
            # the chunk size
            for k in range(c.shape[0]):
                p_sum = p_sum + p[k]
                ent_sum = ent_sum + ent[k]
                if not point:
                    off_sum = off_sum + c[k, 0:2]
                    ls_sum = ls_sum + c[k, 2:4]
        mean = p_sum / samples
        if not point:
            off, ls, seed = off_sum / samples, ls_sum / samples, mean
        mi = (_entropy(mean) - ent_sum / samples).clamp_(0.0, _LN2)
    else:
        o = net(x)
        off, ls = o["offsets"][0, :, :th, :tw], o["log_s"][0, :, :th, :tw]
        seed = o["seed"][0, :, :th, :tw]
        mi = torch.zeros_like(seed)
    return off, ls, seed, mi


MC_MAPS = ("mean", "point")

#: Test-time views of :func:`network_maps` besides the plain one.
TTA_VIEWS = ("flip_lr", "flip_tb", "transpose")


def _to_view(t: torch.Tensor, name: str) -> torch.Tensor:
    """The ``(1, 3, h, w)`` tile ``t`` as seen in view ``name``."""
    if name == "flip_lr":
        return t.flip(3)
    if name == "flip_tb":
        return t.flip(2)
    return t.transpose(2, 3)


def _from_view(maps: tuple[torch.Tensor, ...], name: str) -> tuple[torch.Tensor, ...]:
    """Offsets (2, h, w), log sigmas (2, h, w), seed (1, h, w) and MI of a
    view's pass, mapped back to the plain tile's frame (channel 0 is y,
    channel 1 x)."""
    off, ls, seed, mi = maps
    if name == "transpose":
        back = [m.transpose(1, 2) for m in maps]
        off, ls = back[0][[1, 0]], back[1][[1, 0]]
        return off, ls, back[2], back[3]
    dim, axis = (2, 1) if name == "flip_lr" else (1, 0)
    off = off.flip(dim)
    off[axis].neg_()
    return off, ls.flip(dim), seed.flip(dim), mi.flip(dim)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Run the block with torch's random state seeded by ``seed``; the
    caller's state is restored afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.inference_mode()
def network_maps(net: BPartISNet, rgb: np.ndarray, *, samples: int = 1, tile: int = 1024,
                 overlap: int = 96, mc_layers: tuple[str, ...] = ("head",),
                 mc_maps: str = "mean", flips: bool = False, keep_samples: bool = False,
                 device: str | torch.device = "cpu",
                 mc_seed: int | None = None, canvas: int = CANVAS_PX,
                 tta: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Run the network on ``rgb`` (M, N, 3) uint8 and return stitched maps.

    Parameters
    ----------
    samples : int
        MC-dropout samples ``T``; 1 = deterministic (dropout off).
    tile, overlap : int
        Tile size and overlap in pixels (images up to ``tile`` run whole).
    mc_layers : tuple of str
        Dropout layers sampled (see :meth:`~.model.BPartISNet.sample_mc`).
    mc_maps : {"mean", "point"}
        Maps clustered when ``samples > 1``: ``"mean"`` averages the
        offsets, sigmas and seed over the samples (Yildirim & Cole);
        ``"point"`` takes them from the deterministic pass (dropout off,
        the weight-scaling estimate of the predictive mean) and uses the
        samples only for the MI.  Averaging the sigmoid seed pulls
        confident seeds towards 0.5, so a ``min_score`` tuned at ``T = 1``
        keeps its meaning only with ``"point"``.
    flips : bool
        Test-time augmentation: also run the left-right mirrored tile and
        average the (un-mirrored) maps; twice the network time.  The mirror
        runs ``samples`` samples and its MI is averaged in; with ``tta`` too,
        every view weighs the same in the mean.
    tta : tuple of str
        More test-time views (names of :data:`TTA_VIEWS`), each run on every
        tile and mapped back (offsets and sigmas follow the view: a mirror
        negates one offset axis, a transpose swaps the two); the offsets,
        sigmas and seed clustered are the mean over the plain view and
        these.  With ``mc_maps="point"`` or ``keep_samples`` the extra
        views run deterministically (the point maps are all they add) and
        the MI and the kept samples are the plain view's; otherwise each
        runs ``samples`` samples and the MI is averaged too.  Each view
        costs one more network pass.
    keep_samples : bool
        Also return every MC sample's maps (for
        :func:`~.cluster.instance_consistency`); float16, ``5 T`` values per
        pixel.  Every tile uses the same ``T`` dropout masks (drawn once per
        image), so sample ``k`` is one network across the whole image.
    mc_seed : int, optional
        Seed of the dropout masks: the same image then always gives the
        same samples, whatever ran before.  None draws it from torch's
        random state.
    canvas : int
        A tile smaller than this (px) runs on a flat canvas of its mean grey
        (see :func:`_pad32`); 0 mirrors its borders instead.

    Returns
    -------
    dict with ``offsets`` (2, M, N), ``log_s`` (2, M, N), ``seed`` (M, N)
    (means over the samples, or the deterministic pass with ``"point"``)
    and ``mi`` (M, N): mutual information of the seed in nats (zeros when
    ``samples == 1``); with ``keep_samples`` and ``samples > 1``,
    ``samples`` (T, 5, M, N): offsets, log_s and seed of each sample.
    """
    if mc_maps not in MC_MAPS:
        raise ValueError(f"mc_maps must be one of {MC_MAPS}, got {mc_maps!r}")
    keep_samples = bool(keep_samples) and samples > 1
    if keep_samples and flips:
        raise ValueError("keep_samples does not combine with flips")
    tta = tuple(tta)
    unknown = [v for v in tta if v not in TTA_VIEWS]
    if unknown:
        raise ValueError(f"tta views must be among {TTA_VIEWS}, got {unknown}")
    # extra views add point maps only when the clustered maps are the
    # deterministic pass's (or the samples kept are the plain view's)
    view_samples = 1 if (mc_maps == "point" or keep_samples) else samples
    # (view, MC samples, dropout-mask seed offset): the mirror of ``flips``
    # runs the plain view's samples, so its MI is averaged in too
    views = ([("flip_lr", samples, 1)] if flips else []) \
        + [(name, view_samples, 2 + k) for k, name in enumerate(tta)]
    net.eval()
    h, w = rgb.shape[:2]
    img = torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C")).to(device)
    img = img.permute(2, 0, 1).float().div_(255.0)[None]
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    # one set of dropout masks per image: sample k is the same network on
    # every tile, so a particle on a seam is not judged by two draws
    if samples <= 1:
        mask_seed = 0
    elif mc_seed is None:
        mask_seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    else:
        mask_seed = int(mc_seed)
    by, bx = core_bounds(ys, tile, h), core_bounds(xs, tile, w)
    # each tile's core goes straight into the image-sized arrays: with T
    # samples kept, a dictionary of overlapping tiles plus a stitched copy
    # held the samples 2.8 times over (4096^2, T = 8: 5.7 GB peak RSS, now 2.7)
    # an image in one tile keeps the tile's own arrays: no copy (of the
    # kept samples above all, 80 bytes per pixel with T = 8)
    whole = len(ys) == 1 and len(xs) == 1
    full = None if whole else np.empty((6, h, w), np.float32)
    kept_all = None
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            t = img[..., y0:y0 + tile, x0:x0 + tile]
            kept = [] if keep_samples else None
            with _seeded(mask_seed, img.device):
                off, ls, seed, mi = _tile_maps(net, t, samples, mc_layers, mc_maps, keep=kept,
                                               canvas=canvas)
            if kept:
                kept = torch.cat(kept, 0).numpy()  # (T, 5, th, tw)
                if whole:
                    kept_all = kept
                else:
                    if kept_all is None:
                        kept_all = np.empty((len(kept), 5, h, w), np.float16)
                    _paste(kept_all, kept, y0, x0, by[i], bx[j])
            if views:
                off, ls, seed = off.clone(), ls.clone(), seed.clone()
                mi_n = 1
                for name, n_samples, seed_offset in views:
                    with _seeded(mask_seed + seed_offset, img.device):
                        maps = _tile_maps(net, _to_view(t, name), n_samples, mc_layers,
                                          mc_maps, canvas=canvas)
                    o2, l2, s2, m2 = _from_view(maps, name)
                    off += o2
                    ls += l2
                    seed += s2
                    if n_samples > 1:
                        mi = mi + m2
                        mi_n += 1
                n = len(views) + 1
                off, ls, seed, mi = off / n, ls / n, seed / n, mi / mi_n
            maps = torch.cat([off, ls, seed, mi], 0).float().cpu().numpy()
            if whole:
                full = maps
            else:
                _paste(full, maps, y0, x0, by[i], bx[j])
    out = {"offsets": full[0:2], "log_s": full[2:4], "seed": full[4], "mi": full[5]}
    if kept_all is not None:
        out["samples"] = kept_all
    return out


#: Per-particle uncertainty: ``"mi"`` the mean mutual information of the seed
#: inside the particle (Yildirim & Cole); ``"consistency"`` one minus its mean
#: best IoU with the particles of each MC sample clustered on its own.
UNCERTAINTY_KINDS = ("mi", "consistency")


#: Largest map (pixels at the working scale) whose MC samples are clustered
#: two at a time: a clustering holds about 60 bytes per pixel, and above this
#: (4000^2 px, about 1 GB each) memory matters more than the third of the
#: clustering time that threads save.
THREADED_CLUSTERING_MAX_PX = 16_000_000


def sample_consistency(maps: dict[str, np.ndarray], labels: np.ndarray, k: int, *,
                       coord_scale: float, **cluster_options) -> np.ndarray:
    """:func:`~.cluster.instance_consistency` of the ``k`` instances of
    ``labels`` over the MC samples in ``maps["samples"]`` (from
    :func:`network_maps` with ``keep_samples``), each clustered with
    ``cluster_options`` (those of :func:`~.cluster.cluster`); ones when
    there are no samples."""
    if "samples" not in maps or k == 0:
        return np.ones(k, np.float64)

    def one(smp):
        # the float16 maps go in as they are: cluster() widens the offsets
        # itself and float16 -> float32 is exact, so the labels are the same
        # as from a float32 copy (20 bytes per pixel spared)
        return cluster(smp[0:2], smp[2:4], smp[4], coord_scale=coord_scale,
                       with_scores=False, **cluster_options)[0]

    def sample_labels():
        # a few samples at a time (T label maps at once cost 4 T bytes per
        # pixel).  The compiled clustering releases the GIL, so two samples
        # are clustered at once on two threads (a third less time)
        samples = maps["samples"]
        workers = min(2, os.cpu_count() or 1)
        if workers < 2 or len(samples) < 2 or not compiled_clustering() \
                or labels.size > THREADED_CLUSTERING_MAX_PX:
            yield from (one(smp) for smp in samples)
            return
        with ThreadPoolExecutor(workers) as pool:
            for i in range(0, len(samples), workers):
                yield from pool.map(one, samples[i:i + workers])

    return instance_consistency(labels, k, sample_labels())


def segment_maps(maps: dict[str, np.ndarray], *, coord_scale: float,
                 uncertainty_threshold: float | None = None, min_score: float = 0.0,
                 min_rel_area: float = 0.0, uncertainty: str = "mi",
                 **cluster_options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster stitched maps, then drop instances whose mean seed is below
    ``min_score``, whose area is below ``min_rel_area`` times the median
    instance area, or whose uncertainty exceeds ``uncertainty_threshold``.

    ``uncertainty`` (one of :data:`UNCERTAINTY_KINDS`): ``"mi"``, the mean
    MI (nats) inside each instance; ``"consistency"``, one minus
    :func:`sample_consistency` (needs ``maps["samples"]``; zeros without).

    Returns
    -------
    labels : (M, N) int32, consecutive
    scores : (K,) float64
    uncertainty : (K,) float64
    """
    if uncertainty not in UNCERTAINTY_KINDS:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY_KINDS}, got {uncertainty!r}")
    labels, scores = cluster(maps["offsets"], maps["log_s"], maps["seed"],
                             coord_scale=coord_scale, **cluster_options)
    if uncertainty == "consistency":
        # the score and area filters first: no need to match instances they drop
        labels, scores, _ = filter_instances(labels, scores, np.zeros(scores.size),
                                             min_score=min_score, min_rel_area=min_rel_area)
        unc = 1.0 - sample_consistency(maps, labels, scores.size, coord_scale=coord_scale,
                                       **cluster_options)
        return filter_instances(labels, scores, unc,
                                uncertainty_threshold=uncertainty_threshold)
    unc = instance_means(maps["mi"], labels, scores.size)
    return filter_instances(labels, scores, unc, min_score=min_score,
                            min_rel_area=min_rel_area,
                            uncertainty_threshold=uncertainty_threshold)


def filter_instances(labels: np.ndarray, scores: np.ndarray, uncertainty: np.ndarray, *,
                     min_score: float = 0.0, min_rel_area: float = 0.0,
                     uncertainty_threshold: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the instances with score >= ``min_score`` and area >=
    ``min_rel_area`` x the median area of those, then drop those with
    uncertainty above ``uncertainty_threshold``; relabel 1..K.

    >>> lab = np.array([[1, 1, 2, 3, 3]], np.int32)
    >>> filter_instances(lab, np.array([0.9, 0.9, 0.5]), np.zeros(3), min_score=0.6,
    ...                  min_rel_area=0.8)[0].tolist()
    [[1, 1, 0, 0, 0]]
    """
    k = scores.size
    if k == 0:
        return labels, scores, uncertainty
    keep = scores >= min_score
    if min_rel_area > 0 and keep.any():
        area = np.bincount(labels.ravel(), minlength=k + 1)[1:]
        keep &= area >= min_rel_area * np.median(area[keep])
    if uncertainty_threshold is not None:
        keep &= uncertainty <= uncertainty_threshold
    return keep_instances(labels, scores, uncertainty, keep)


# ---------------------------------------------------------------------------
# working scale: particles are brought to the size the network was trained on
# ---------------------------------------------------------------------------
def resize_rgb(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize ``(M, N, 3) uint8`` to ``shape`` (antialiased when shrinking)."""
    if tuple(rgb.shape[:2]) == tuple(shape):
        return rgb
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C")).permute(2, 0, 1)[None].float()
    down = shape[0] < rgb.shape[0] or shape[1] < rgb.shape[1]
    t = F.interpolate(t, size=tuple(int(v) for v in shape), mode="bilinear",
                      align_corners=False, antialias=down)
    return t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map (pixel centres)."""
    h, w = labels.shape
    if (h, w) == tuple(shape):
        return labels
    yi = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    xi = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return labels[yi[:, None], xi[None, :]]


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map ``(M, N)``."""
    if tuple(values.shape) == tuple(shape):
        return values
    t = torch.from_numpy(np.array(values, dtype=np.float32, order="C"))[None, None]
    return F.interpolate(t, size=tuple(int(v) for v in shape), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def upsample_labels(labels: np.ndarray, seed: np.ndarray, shape: tuple[int, int], *,
                    fg_threshold: float = 0.5) -> np.ndarray:
    """Enlarge a label map to ``shape`` with smooth outlines.

    The foreground is the bilinearly upsampled ``seed`` map above
    ``fg_threshold``; each foreground pixel takes the label of the nearest
    pixel of the nearest-neighbour-enlarged label map, if that is within one
    working-scale pixel; pixels outside the foreground become background.

    >>> lab = np.zeros((4, 4), np.int32); lab[1:3, 1:3] = 1
    >>> seed = np.where(lab > 0, 0.9, 0.1).astype(np.float32)
    >>> up = upsample_labels(lab, seed, (16, 16))
    >>> int(up.max()), int((up == 1).sum()) in range(36, 101)
    (1, True)
    """
    from scipy import ndimage

    near = resize_labels(labels, shape)
    fg = resize_map(seed, shape) > fg_threshold
    reach = max(shape[0] / labels.shape[0], shape[1] / labels.shape[1])
    dist, (iy, ix) = ndimage.distance_transform_edt(near == 0, return_indices=True)
    out = np.where(fg & (dist <= reach), near[iy, ix], 0).astype(np.int32)
    return out


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent circular diameter (px) of the instances; nan if none.

    >>> lab = np.zeros((20, 20), np.int32); lab[2:6, 2:6] = 1; lab[10:18, 10:18] = 2
    >>> round(median_diameter(lab), 2)
    6.77
    """
    counts = np.bincount(labels.ravel())[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return float("nan")
    return float(np.median(np.sqrt(4.0 * counts / np.pi)))


def scaled_shape(shape: tuple[int, int], scale: float, *, min_side: int = 32) -> tuple[int, int]:
    """``shape`` times ``scale``, rounded, each side at least ``min_side``
    (or the original side, if smaller)."""
    return tuple(max(min(min_side, n), int(round(n * scale))) for n in shape)


def find_scale(run, shape: tuple[int, int], *, target_diameter: float, estimate=None,
               probe_px: int = 512, scale_limits: tuple[float, float] = (0.05, 2.5),
               tolerance: float = 1.25, max_refine: int = 2, max_halvings: int = 2):
    """Working scale at which the particles have ``target_diameter`` px.

    1. First guess: ``estimate(s0)`` (the size model's diameter at the probe
       scale ``s0``, where the longest side is ``probe_px``), or ``s0``.
    2. Refine from the instances ``run(s)`` finds: their median diameter
       ``d`` gives ``s * target / d`` (each step at most 2x), until ``d`` is
       within ``tolerance`` of the target or ``max_refine`` steps.
    3. Fragmentation check: real particles shrink with the image, pieces of
       a particle too large for the network do not.  If the instances found
       at ``s / 2`` are not clearly smaller than those at ``s``
       (ratio > 1.5 / 2), ``s`` was too large: halve it (``max_halvings``).

    Parameters
    ----------
    run : callable ``s -> (labels, ...)``
        Segments the image at scale ``s`` (results are cached here).

    Returns
    -------
    (scale, run(scale), number of distinct scales run)
    """
    h, w = shape
    lo, hi = scale_limits
    cache: dict[float, tuple] = {}

    def at(sc: float):
        key = round(sc, 4)
        if key not in cache:
            cache[key] = run(sc)
        return cache[key]

    def clip(v: float) -> float:
        return float(np.clip(v, lo, hi))

    s0 = min(1.0, probe_px / max(h, w))
    s = s0
    if estimate is not None:
        d = estimate(s0)
        if np.isfinite(d) and d > 0:
            s = clip(s0 * target_diameter / d)
    tried_native = False
    for _ in range(max_refine):
        d = median_diameter(at(s)[0])
        if not np.isfinite(d):  # nothing found: look once at native resolution
            if s < 1.0 and not tried_native:
                s, tried_native = clip(1.0), True
                continue
            break
        r = target_diameter / d
        if max(r, 1.0 / r) < tolerance:
            break
        nxt = clip(s * float(np.clip(r, 0.5, 2.0)))
        if round(nxt, 4) in cache or nxt == s:
            break
        s = nxt
    for _ in range(max_halvings):
        if s / 2 < lo:
            break
        d_full, d_half = median_diameter(at(s)[0]), median_diameter(at(s / 2)[0])
        if not (np.isfinite(d_full) and np.isfinite(d_half)) or d_half / d_full <= 0.75:
            break
        s = s / 2
    return s, at(s), len(cache)


def _is_number(v, *, whole: bool = False, finite: bool = False) -> bool:
    """Whether the option value ``v`` is a Python number (a whole one with
    ``whole``; a finite one with ``finite``); a bool is not."""
    if isinstance(v, bool) or not isinstance(v, int if whole else (int, float)):
        return False
    return not finite or bool(np.isfinite(v))


def segment_image(net: BPartISNet, rgb: np.ndarray, *, coord_scale: float,
                  samples: int = 1, scale: float | None = None,
                  target_diameter: float | None = 48.0, probe_px: int = 512,
                  scale_limits: tuple[float, float] = (0.05, 2.5), max_passes: int = 2,
                  max_halvings: int = 2, size_model=None,
                  tolerance: float = 1.25, tile: int = 512, overlap: int = 128,
                  mc_layers: tuple[str, ...] = ("head",), mc_maps: str = "mean",
                  uncertainty: str = "mi", device: str | torch.device = "cpu",
                  uncertainty_threshold: float | None = None,
                  cluster_options: dict | None = None, refine: bool = True,
                  flips: bool = False, rescorer=None, mc_seed: int | None = None,
                  canvas: int = CANVAS_PX, scale_factors: tuple[float, ...] = (1.0,),
                  merge: dict | None = None, outline=None,
                  zoom_below: float | None = None,
                  sparse_factors: dict | None = None, sure_confidence: float | None = None,
                  scale_coverage: float = 0.0, coverage_min_elongation: float | None = None,
                  tta: tuple[str, ...] = (),
                  tta_max_px: int | None = None) -> dict:
    """Segment ``rgb`` at the working scale where particles have the size the
    network was trained on, then map the instances back to full resolution.

    The image is never shrunk to a fixed size: with ``scale=None`` the
    working scale is found by :func:`find_scale` (size model, then the
    particles the network finds); images larger than ``tile`` at the working
    scale are tiled with ``overlap`` (so a 2048² micrograph of 40-px
    particles runs tiled at full resolution).

    Parameters
    ----------
    rgb : (M, N, 3) uint8
    scale : float, optional
        Fixed working scale (output px per input px); skips the search.
    target_diameter : float or None
        Particle diameter (px) the network was trained at; None = native scale.
    size_model : :class:`~.size.SizeModel`, optional
        First guess of the diameter from one encoder pass at the probe scale
        (:func:`~.size.estimate_diameter`).
    zoom_below : float, optional
        When the size model reads particles smaller than this (px at the
        probe scale) on an image shown below native resolution, it reads
        windows of the image again at a larger scale; None =
        :data:`~.size.ZOOM_BELOW`, 0 = never.
    max_passes : int
        Refinement passes of the scale from the instances found.
    max_halvings : int
        Fragmentation checks (see :func:`find_scale`).
    mc_maps : {"mean", "point"}
        Maps clustered when ``samples > 1`` (see :func:`network_maps`).
    uncertainty : {"mi", "consistency"}
        Per-particle uncertainty (see :func:`segment_maps`).
    flips : bool
        Average the maps of the image and its mirror image (see
        :func:`network_maps`).
    tta, tta_max_px : tuple of str, int
        Test-time views (see :func:`network_maps`), used at the working
        scales where the image has at most ``tta_max_px`` pixels (None:
        at every scale).
    refine : bool
        When the working scale is below 1, trace the instances' outlines on
        the bilinearly upsampled seed map (:func:`upsample_labels`) instead
        of enlarging the label map's blocky pixels.
    mc_seed : int, optional
        Seed of the dropout masks (see :func:`network_maps`).
    canvas : int
        Images smaller than this at the working scale run on a flat canvas
        (see :func:`_pad32`).
    scale_factors : tuple of float
        When the working scale is searched (``scale`` None), also segment at
        these multiples of the scale found and keep the result with the
        highest :func:`scale_score` (ties keep the scale found); each
        factor other than 1 costs one more pass.
    sparse_factors : dict or sequence of dict, optional
        Rules ``{"factors": (f, ...), "max_particles": n}``, each optionally
        with ``"max_side_px"`` and ``"max_scale"``: when the working scale
        is searched and the result at the scale found keeps at most ``n``
        particles, these factors are tried as well, like ``scale_factors``
        (see :func:`sparse_scale_factors`).  An image of a few large
        particles (single rods, a handful of crystals) is where the size
        model's guess is furthest too large; a dense image, where a pass
        costs most, skips them.  Larger factors look closer where the size
        model read small particles as a few large ones; ``max_side_px``
        keeps them to images the scale found shrank (cheap passes), and
        ``max_scale`` to working scales at most that (1: never beyond
        native resolution).  A rule's ``"growth"`` (``{"min_particles": n,
        "min_ratio": r}``) lets its factors win on particle count rather
        than confidence (see :func:`grown_factor`).
    sure_confidence : float, optional
        When the result at the scale found has a :func:`scale_confidence`
        of at least this, ``scale_factors`` are not tried (the sparse
        rules still are: a blob read at too small a scale can be sure).
    scale_coverage : float
        Among the scales tried, keep the one with the highest
        :func:`scale_score`: its :func:`scale_confidence` plus this much of
        the share of the network's foreground its kept particles cover
        (0: confidence alone).  At a scale where the rescorer keeps only the
        few particles it is sure of (dense rods read at the wrong size), the
        mean confidence can be high while most particles are missing.
    coverage_min_elongation : float, optional
        Weigh the coverage only where the particles at the scale found have
        a median elongation (:func:`particle_axes`) of at least this (rods);
        elsewhere confidence alone decides.  None: everywhere.
    merge : dict, optional
        With ``scale_factors``: keyword arguments of :func:`merge_scales`
        (``min_score``, ``max_overlap``); the particles that only the other
        scales found are added to the chosen result (no extra pass).
    rescorer : :class:`~.rescore.Rescorer`, optional
        Learned particle rescoring at full resolution: ``scores`` become its
        probability that each particle is real, particles below its
        threshold (or above ``uncertainty_threshold``) are dropped.
    outline : :class:`~.outline.OutlineRefiner`, optional
        Learned outline refinement, last: the pixels near each kept
        particle's outline are re-decided from the image and the seed map of
        the scale used (particles merged from other scales included).

    Returns
    -------
    dict with ``labels`` (M, N) int32, ``scores`` (K,), ``uncertainty`` (K,),
    ``mi`` (M, N) float32, ``seed`` (the seed map at the working scale),
    ``scale`` (the working scale used) and
    ``passes`` (network passes run); with a rescorer also ``seed_scores``
    (K,), the mean seed of the kept particles; with ``scale_factors``,
    ``scale_confidence`` (factor -> :func:`scale_confidence`; with
    the coverage weighed also ``scale_score``, factor -> :func:`scale_score`); with
    ``merge``, ``merged`` (particles added from the other scales); where a
    sparse rule's ``growth`` chose the scale, ``grown`` (its factor); with
    ``outline``, ``refined`` (True).
    """
    h, w = rgb.shape[:2]
    opts = dict(cluster_options or {})
    u_threshold = uncertainty_threshold
    if rescorer is not None:
        # the rescorer was fitted on unfiltered proposals: filter after it
        uncertainty_threshold = None

    def run(s: float):
        shp = scaled_shape((h, w), s)
        views = tta if tta_max_px is None or shp[0] * shp[1] <= tta_max_px else ()
        maps = network_maps(net, resize_rgb(rgb, shp), samples=samples, tile=tile,
                            overlap=overlap, mc_layers=mc_layers, mc_maps=mc_maps, flips=flips,
                            keep_samples=uncertainty == "consistency", device=device,
                            mc_seed=mc_seed, canvas=canvas, tta=views)
        lab, sc, un = segment_maps(maps, coord_scale=coord_scale, uncertainty=uncertainty,
                                   uncertainty_threshold=uncertainty_threshold, **opts)
        return lab, sc, un, maps["mi"], maps["seed"]

    if not (_is_number(scale_coverage, finite=True) and scale_coverage >= 0):
        raise ValueError(f"scale_coverage must be a number >= 0, got {scale_coverage!r}")
    if coverage_min_elongation is not None \
            and not _is_number(coverage_min_elongation, finite=True):
        raise ValueError("coverage_min_elongation must be None or a number, "
                         f"got {coverage_min_elongation!r}")
    if any(not f > 0 for f in scale_factors):
        raise ValueError(f"scale_factors must be positive, got {scale_factors}")
    sparse_rules = _sparse_rules(sparse_factors)
    searched = scale is None and bool(target_diameter)
    if not searched:
        s = float(scale) if scale is not None else 1.0
        if not s > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        res, passes = run(s), 1
    else:
        estimate = None
        if size_model is not None:
            from .size import ZOOM_BELOW, estimate_diameter

            zoom = ZOOM_BELOW if zoom_below is None else float(zoom_below)

            def size_estimate(sc: float) -> float:
                return estimate_diameter(net, size_model, rgb, scale=sc, zoom_below=zoom,
                                         device=device)

            estimate = size_estimate

        s, res, passes = find_scale(run, (h, w), target_diameter=target_diameter,
                                    estimate=estimate, probe_px=probe_px,
                                    scale_limits=scale_limits, tolerance=tolerance,
                                    max_refine=max_passes, max_halvings=max_halvings)

    image_stats: dict = {}

    def finish(s: float, res: tuple) -> dict:
        lab, sc, un, mi, seed = res
        if refine and lab.shape[0] < h:
            lab = upsample_labels(lab, seed, (h, w), fg_threshold=opts.get("fg_threshold", 0.5))
        else:
            lab = resize_labels(lab, (h, w)).astype(np.int32, copy=False)
        # an instance smaller than a native pixel may have vanished
        present = np.bincount(lab.ravel(), minlength=sc.size + 1)[1:] > 0
        lab, sc, un = keep_instances(lab, sc, un, present)
        mi = resize_map(mi, (h, w)).astype(np.float32, copy=False)
        out = {"scale": s}
        if rescorer is not None:
            from .rescore import image_statistics, instance_features

            if not image_stats and sc.size:  # once per image, whatever the scales tried
                image_stats.update(image_statistics(rgb))
            feats = instance_features(rgb, lab, scores=sc, uncertainty=un, mi=mi, scale=s,
                                      target_diameter=target_diameter or 48.0,
                                      stats=image_stats or None)
            prob = rescorer.predict_proba(feats) if sc.size else np.zeros(0)
            keep = rescorer.keep(prob)
            if u_threshold is not None:
                keep &= un <= u_threshold
            out["seed_scores"] = sc[keep]
            lab, sc, un = keep_instances(lab, prob, un, keep)
        out.update(labels=lab, scores=sc, uncertainty=un, mi=mi, seed=seed)
        return out

    out = finish(s, res)
    if searched and sure_confidence is not None and scale_confidence(out) >= sure_confidence:
        scale_factors = (1.0,)
    growth: dict[float, dict] = {}
    if searched and sparse_rules:
        scale_factors = (*scale_factors,
                         *sparse_scale_factors(sparse_rules, n_found=out["scores"].size,
                                               scale=s, side_px=max(h, w) * s,
                                               exclude=scale_factors))
        for r in sparse_rules:
            for f in r["factors"] if "growth" in r else ():
                growth.setdefault(float(f), r["growth"])
    if searched and any(f != 1.0 for f in scale_factors):
        # the size model's guess is often off by 20-30 %: look at a few
        # multiples of it and keep the one whose particles the network is surest of
        # (with scale_coverage: and that covers most of its foreground)
        fg_threshold = opts.get("fg_threshold", 0.5)
        weight = scale_coverage
        if weight and coverage_min_elongation is not None \
                and not particle_axes(out["labels"])[1] >= coverage_min_elongation:
            weight = 0.0  # not rods (nan: no particles)

        def judged(r: dict) -> float:
            return scale_score(r, coverage=weight, fg_threshold=fg_threshold)

        confidence = {1.0: scale_confidence(out)}
        best = judged(out)
        score = {1.0: best}
        results = [out]
        by_factor = {1.0: out}
        for f in scale_factors:
            sf = float(np.clip(s * f, *scale_limits))
            if f == 1.0 or round(sf, 4) == round(s, 4):
                continue
            cand = finish(sf, run(sf))
            passes += 1
            results.append(cand)
            by_factor[float(f)] = cand
            confidence[float(f)] = scale_confidence(cand)
            score[float(f)] = c = judged(cand)
            if c > best:
                out, best = cand, c
        grown = grown_factor({f: r["scores"].size for f, r in by_factor.items()}, growth)
        if grown is not None:
            out = by_factor[grown]
        if merge is not None:
            out = merge_scales(out, [r for r in results if r is not out], **merge)
        out["scale_confidence"] = confidence
        if weight:
            out["scale_score"] = score
        if grown is not None:
            out["grown"] = grown
    if outline is not None:
        out["labels"] = outline.refine(rgb, out["labels"], out["seed"], scale=out["scale"])
        out["refined"] = True
    out["passes"] = passes
    return out


def coarse_particles(result: dict, coarse: dict, *, min_score: float = 0.99,
                     min_rel_area: float = 2.0) -> dict:
    """The particles of ``coarse`` that a coarse look may add to ``result``.

    ``coarse`` is a :func:`segment_image` result for the same image at a
    smaller working scale, where a particle too large for the scale used
    comes down to the size the network was trained on.  Kept: the particles
    scoring at least ``min_score`` and at least ``min_rel_area`` times the
    median area of ``result``'s particles (any size where ``result`` has
    none), so that what the scale used found in pieces or missed as too
    large is what can come in; :func:`merge_scales` then adds those whose
    pixels are still free.  Returns ``coarse`` with only those particles,
    renumbered ``1..K'``.

    >>> lab = np.zeros((6, 12), np.int32); lab[0, :2] = 1; lab[5, :2] = 2
    >>> big = np.zeros((6, 12), np.int32); big[1:5, 4:9] = 1; big[0, 10] = 2
    >>> c = coarse_particles({"labels": lab, "scores": np.array([0.9, 0.9])},
    ...                      {"labels": big, "scores": np.array([0.995, 0.999]),
    ...                       "uncertainty": np.zeros(2)})
    >>> c["scores"].tolist(), int(c["labels"].sum())
    ([0.995], 20)
    """
    if not (_is_number(min_rel_area, finite=True) and min_rel_area >= 0):
        raise ValueError(f"min_rel_area must be a number >= 0, got {min_rel_area!r}")
    scores = np.asarray(coarse["scores"], dtype=np.float64)
    mine = np.bincount(np.asarray(result["labels"]).ravel())[1:]
    mine = mine[mine > 0]
    floor = min_rel_area * float(np.median(mine)) if mine.size else 0.0
    area = np.bincount(np.asarray(coarse["labels"]).ravel(), minlength=scores.size + 1)[1:]
    keep = (scores >= min_score) & (area >= floor) & (area > 0)
    lab, sc, un = keep_instances(coarse["labels"], scores, coarse["uncertainty"], keep)
    out = dict(coarse, labels=lab, scores=sc, uncertainty=un)
    if "seed_scores" in coarse:
        out["seed_scores"] = np.asarray(coarse["seed_scores"])[keep]
    return out


def _sparse_rules(spec) -> tuple[dict, ...]:
    """``sparse_factors`` of :func:`segment_image` as a tuple of checked
    rules (one dict or a sequence of dicts; None: no rule), factors as
    floats."""
    if spec is None:
        return ()
    keys = {"factors", "max_particles", "max_side_px", "max_scale", "growth"}
    rules = [spec] if isinstance(spec, dict) else spec
    out = []
    try:
        for r in rules:
            g = r.get("growth", {"min_particles": 1, "min_ratio": 1})
            ok = set(r) <= keys and _is_number(r["max_particles"], whole=True) \
                and r["max_particles"] >= 0 \
                and _is_number(r.get("max_side_px", 0)) and r.get("max_side_px", 0) >= 0 \
                and _is_number(r.get("max_scale", 1)) and r.get("max_scale", 1) > 0 \
                and isinstance(g, dict) and set(g) == {"min_particles", "min_ratio"} \
                and _is_number(g["min_particles"], whole=True) and g["min_particles"] >= 1 \
                and _is_number(g["min_ratio"]) and g["min_ratio"] > 0 \
                and len(r["factors"]) > 0 \
                and all(_is_number(f) and f > 0 for f in r["factors"])
            out.append(dict(r, factors=tuple(float(f) for f in r["factors"])) if ok else None)
    except (AttributeError, KeyError, TypeError):
        out = []
    if not out or None in out:
        raise ValueError("sparse_factors must be a rule or a non-empty list of rules with "
                         "factors (a non-empty list of positive numbers), max_particles (a "
                         "whole number >= 0) and optionally max_side_px (a number >= 0), "
                         "max_scale (a number > 0) and growth (min_particles, a whole number "
                         f">= 1, and min_ratio, a number > 0), got {spec!r}")
    return tuple(out)


def grown_factor(counts: dict[float, int], growth: dict[float, dict]) -> float | None:
    """The factor whose particles the image really holds when the count
    grows with zoom, or None.

    ``counts`` maps each factor tried to the particles kept there;
    ``growth`` maps factors of sparse rules with a ``growth`` limit to it
    (``{"min_particles": n, "min_ratio": r}``).  Among those factors, the
    one keeping most particles (ties: the larger factor) is returned when it
    keeps at least ``n`` and ``r`` times as many as any factor without such
    a limit.  Where the size model read many small particles as one blob,
    the blob can be what the network is surest of, but a closer look
    breaks it into many particles; a large particle breaks into a few
    fragments at most.

    >>> g = {2.0: {"min_particles": 6, "min_ratio": 4}, 3.2: {"min_particles": 6,
    ...                                                        "min_ratio": 4}}
    >>> grown_factor({1.0: 1, 0.8: 1, 2.0: 9, 3.2: 26}, g)
    3.2
    >>> grown_factor({1.0: 2, 0.8: 1, 2.0: 5, 3.2: 7}, g) is None  # 7 < 4 x 2
    True
    """
    mine = [f for f in counts if f in growth]
    rest = [counts[f] for f in counts if f not in growth]
    if not mine or not rest:
        return None
    top = max(mine, key=lambda f: (counts[f], f))
    lim = growth[top]
    if counts[top] >= max(lim["min_particles"], lim["min_ratio"] * max(rest)):
        return top
    return None


def sparse_scale_factors(rules, *, n_found: int, scale: float, side_px: float,
                         exclude: tuple[float, ...] = ()) -> list[float]:
    """The factors of the ``sparse_factors`` ``rules`` (see
    :func:`segment_image`) to try on an image whose result at the scale
    found (``scale``, where the image is ``side_px`` long) keeps
    ``n_found`` particles: those of every rule whose limits the image is
    within, in rule order, each once and none of ``exclude``.

    >>> rules = [{"factors": [0.64], "max_particles": 20},
    ...          {"factors": [2.0, 3.2], "max_particles": 5, "max_side_px": 256,
    ...           "max_scale": 1.0}]
    >>> sparse_scale_factors(rules, n_found=3, scale=0.25, side_px=200)
    [0.64, 2.0, 3.2]
    >>> sparse_scale_factors(rules, n_found=3, scale=0.4, side_px=200)  # 3.2 x 0.4 > 1
    [0.64, 2.0]
    >>> sparse_scale_factors(rules, n_found=3, scale=0.25, side_px=300)
    [0.64]
    >>> sparse_scale_factors(rules, n_found=6, scale=0.25, side_px=200)
    [0.64]
    """
    out: list[float] = []
    for r in _sparse_rules(rules):
        if n_found > r["max_particles"] or side_px > r.get("max_side_px", math.inf):
            continue
        out += [float(f) for f in r["factors"] if scale * f <= r.get("max_scale", math.inf)
                and f not in exclude and f not in out]
    return out


def merge_scales(result: dict, others: list[dict], *, min_score: float = 0.9,
                 max_overlap: float = 0.05) -> dict:
    """Add to ``result`` the particles that only the other working scales found.

    A particle of one of ``others`` (:func:`segment_image` results of the same
    image at other scales) is added when its score is at least ``min_score``
    and at most ``max_overlap`` of its pixels already belong to particles;
    it gets the pixels not yet claimed.  Candidates are taken in order of
    decreasing score, so two scales never add the same particle twice.
    ``scores``, ``uncertainty`` and (when present) ``seed_scores`` grow with
    the labels; the input dicts are not modified.

    >>> a = np.zeros((4, 8), np.int32); a[:, :3] = 1
    >>> b = np.zeros((4, 8), np.int32); b[:, :3] = 1; b[:, 5:] = 2
    >>> r = merge_scales({"labels": a, "scores": np.array([.9]), "uncertainty": np.zeros(1)},
    ...                  [{"labels": b, "scores": np.array([.95, .93]),
    ...                    "uncertainty": np.array([.1, .2])}])
    >>> r["labels"][0].tolist(), r["scores"].tolist(), r["merged"]
    ([1, 1, 1, 0, 0, 2, 2, 2], [0.9, 0.93], 1)
    """
    from scipy import ndimage

    if not 0.0 <= max_overlap < 1.0:
        raise ValueError(f"max_overlap must be in [0, 1), got {max_overlap}")
    labels = np.array(result["labels"], dtype=np.int32, copy=True)
    scores = list(np.asarray(result["scores"], dtype=np.float64))
    unc = list(np.asarray(result["uncertainty"], dtype=np.float64))
    seeds = (list(np.asarray(result["seed_scores"], dtype=np.float64))
             if "seed_scores" in result else None)
    cand = []
    for o in others:
        osc = np.asarray(o["scores"], dtype=np.float64)
        if o["labels"].shape != labels.shape:
            raise ValueError(f"labels of shape {o['labels'].shape} cannot be merged into "
                             f"{labels.shape}")
        sure = np.flatnonzero(osc >= min_score)
        if not sure.size:
            continue
        boxes = ndimage.find_objects(o["labels"], max_label=int(sure[-1]) + 1)
        for i in sure:
            if boxes[i] is not None:
                cand.append((-osc[i], len(cand), o, int(i), boxes[i]))
    added = 0
    for _, _, o, i, box in sorted(cand, key=lambda t: t[:2]):
        mask = o["labels"][box] == i + 1
        area = int(mask.sum())
        free = mask & (labels[box] == 0)
        if area - int(free.sum()) > max_overlap * area:
            continue
        labels[box][free] = len(scores) + 1
        scores.append(float(o["scores"][i]))
        unc.append(float(o["uncertainty"][i]))
        if seeds is not None:
            seeds.append(float(o["seed_scores"][i]) if "seed_scores" in o else float("nan"))
        added += 1
    out = dict(result)
    out.update(labels=labels, scores=np.asarray(scores), uncertainty=np.asarray(unc),
               merged=added)
    if seeds is not None:
        out["seed_scores"] = np.asarray(seeds)
    return out


def scale_confidence(result: dict) -> float:
    """How sure the network is of the particles in a :func:`segment_image`
    ``result``: the mean over its particles of score times (1 - uncertainty),
    -1 when it found none.  With a rescorer the score is the probability
    that the particle is real; without one, its mean seed."""
    sc = np.asarray(result["scores"], dtype=np.float64)
    if not sc.size:
        return -1.0
    un = np.asarray(result["uncertainty"], dtype=np.float64)
    return float(np.mean(sc * (1.0 - un)))


def covered_foreground(result: dict, *, fg_threshold: float = 0.5) -> float:
    """The share of the network's foreground (``seed`` above
    ``fg_threshold``, at the working scale) that the kept particles of a
    :func:`segment_image` ``result`` cover (``labels``, at full
    resolution); 0 without foreground.  Both are fractions of the image, so
    the two resolutions compare.

    >>> seed = np.zeros((4, 4)); seed[:2] = 0.9
    >>> lab = np.zeros((8, 8), np.int32); lab[:2] = 1
    >>> covered_foreground({"seed": seed, "labels": lab})
    0.5
    """
    fg = float(np.mean(np.asarray(result["seed"]) > fg_threshold))
    if fg <= 0.0:
        return 0.0
    return float(np.mean(np.asarray(result["labels"]) > 0)) / fg


def scale_score(result: dict, *, coverage: float = 0.0, fg_threshold: float = 0.5) -> float:
    """How :func:`segment_image` judges a working scale: the result's
    :func:`scale_confidence` plus ``coverage`` times its
    :func:`covered_foreground`.

    >>> seed = np.full((4, 4), 0.9); lab = np.zeros((4, 4), np.int32); lab[:1] = 1
    >>> few = {"seed": seed, "labels": lab, "scores": np.array([0.95]),
    ...        "uncertainty": np.zeros(1)}
    >>> lab2 = lab.copy(); lab2[1:] = 2
    >>> most = dict(few, labels=lab2, scores=np.array([0.9, 0.8]), uncertainty=np.zeros(2))
    >>> scale_score(few) > scale_score(most)
    True
    >>> scale_score(few, coverage=0.3) < scale_score(most, coverage=0.3)
    True
    """
    c = scale_confidence(result)
    if coverage and result["scores"].size:
        c += coverage * covered_foreground(result, fg_threshold=fg_threshold)
    return c


def particle_axes(labels: np.ndarray) -> tuple[float, float]:
    """How the particles of ``labels`` lie: the area-weighted fraction of
    them whose long axis is nearer the x axis than the y axis, and their
    median elongation (long over short axis of the pixels' covariance
    ellipse).  ``(nan, nan)`` without particles.

    >>> lab = np.zeros((40, 60), np.int32)
    >>> lab[5:9, 5:45] = 1; lab[20:24, 5:45] = 2; lab[10:30, 50:54] = 3  # 160, 160, 80 px
    >>> frac, elong = particle_axes(lab)
    >>> round(frac, 3), round(elong, 1)
    (0.8, 10.3)
    """
    ids = np.asarray(labels).ravel()
    n = int(ids.max()) if ids.size else 0
    if n <= 0:
        return float("nan"), float("nan")
    fg = ids > 0
    i = ids[fg]
    y, x = np.divmod(np.flatnonzero(fg), labels.shape[1])
    area = np.bincount(i, minlength=n + 1)[1:].astype(np.float64)
    seen = area > 0

    def mean(v):
        return np.bincount(i, v.astype(np.float64), minlength=n + 1)[1:][seen] / area[seen]

    my, mx = mean(y), mean(x)
    vy, vx = mean(y * y) - my ** 2, mean(x * x) - mx ** 2
    cxy = mean(x * y) - mx * my
    a = area[seen]
    half = (vx + vy) / 2.0
    root = np.sqrt(np.maximum(half ** 2 - (vx * vy - cxy ** 2), 0.0))
    elong = np.sqrt((half + root) / np.maximum(half - root, 1.0 / 12.0))  # a pixel's own
    return float((a * (vx > vy)).sum() / a.sum()), float(np.median(elong))


def turned_back(result: dict) -> dict:
    """A :func:`segment_image` result of the image turned a quarter turn
    (``np.rot90(rgb)``), in the frame of the image as given: its maps turned
    back, ``turned`` True."""
    out = dict(result)
    for key in ("labels", "mi", "seed"):
        if key in out:
            out[key] = np.ascontiguousarray(np.rot90(out[key], -1))
    out["turned"] = True
    return out
