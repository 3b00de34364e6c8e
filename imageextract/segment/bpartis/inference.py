"""Tiled, MC-dropout inference of a :class:`~.model.BPartISNet` on one image.

Large images are cut into overlapping tiles; each tile's outputs are kept only
in its core (the overlaps are split at their midpoints), so the stitched maps
equal those of a network that saw every pixel with at least ``overlap / 2``
pixels of context.  Offsets are relative to each pixel, so the stitched maps
are clustered once on the whole image and particles on a seam stay whole.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .cluster import cluster, instance_means
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
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            (ylo, yhi), (xlo, xhi) = by[i], bx[j]
            out[:, ylo:yhi, xlo:xhi] = tiles[i, j][:, ylo - y0:yhi - y0, xlo - x0:xhi - x0]
    return out


def _pad32(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


_LN2 = float(np.log(2.0))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * torch.log(p) + (1 - p) * torch.log1p(-p))


@torch.inference_mode()
def network_maps(net: BPartISNet, rgb: np.ndarray, *, samples: int = 1, tile: int = 1024,
                 overlap: int = 96, mc_layers: tuple[str, ...] = ("head",),
                 device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Run the network on ``rgb`` (M, N, 3) uint8 and return stitched maps.

    Parameters
    ----------
    samples : int
        MC-dropout samples ``T``; 1 = deterministic (dropout off).
    tile, overlap : int
        Tile size and overlap in pixels (images up to ``tile`` run whole).
    mc_layers : tuple of str
        Dropout layers sampled (see :meth:`~.model.BPartISNet.sample_mc`).

    Returns
    -------
    dict with ``offsets`` (2, M, N), ``log_s`` (2, M, N), ``seed`` (M, N)
    (means over the samples) and ``mi`` (M, N): mutual information of the
    seed in nats (zeros when ``samples == 1``).
    """
    net.eval()
    h, w = rgb.shape[:2]
    img = torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C")).to(device)
    img = img.permute(2, 0, 1).float().div_(255.0)[None]
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    tiles = {}
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            x, th, tw = _pad32(img[..., y0:y0 + tile, x0:x0 + tile])
            if samples > 1:
                off = ls = p_sum = ent_sum = None
                for o in net.sample_mc(x, samples, layers=mc_layers):
                    p = o["seed"][0, :, :th, :tw]
                    if off is None:
                        off, ls = o["offsets"][0, :, :th, :tw].clone(), o["log_s"][0, :, :th, :tw].clone()
                        p_sum, ent_sum = p.clone(), _entropy(p)
                    else:
                        off += o["offsets"][0, :, :th, :tw]
                        ls += o["log_s"][0, :, :th, :tw]
                        p_sum += p
                        ent_sum += _entropy(p)
                off, ls, seed = off / samples, ls / samples, p_sum / samples
                mi = (_entropy(seed) - ent_sum / samples).clamp_(0.0, _LN2)
            else:
                o = net(x)
                off, ls = o["offsets"][0, :, :th, :tw], o["log_s"][0, :, :th, :tw]
                seed = o["seed"][0, :, :th, :tw]
                mi = torch.zeros_like(seed)
            tiles[i, j] = torch.cat([off, ls, seed, mi], 0).float().cpu().numpy()
    full = stitch(tiles, ys, xs, tile, (h, w))
    return {"offsets": full[0:2], "log_s": full[2:4], "seed": full[4], "mi": full[5]}


def segment_maps(maps: dict[str, np.ndarray], *, coord_scale: float,
                 uncertainty_threshold: float | None = None,
                 **cluster_options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster stitched maps; drop instances whose mean MI exceeds
    ``uncertainty_threshold``.

    Returns
    -------
    labels : (M, N) int32, consecutive
    scores : (K,) float64
    uncertainty : (K,) float64, mean MI (nats) inside each instance
    """
    labels, scores = cluster(maps["offsets"], maps["log_s"], maps["seed"],
                             coord_scale=coord_scale, **cluster_options)
    k = scores.size
    unc = instance_means(maps["mi"], labels, k)
    if uncertainty_threshold is not None and k:
        keep = unc <= uncertainty_threshold
        if not keep.all():
            lut = np.zeros(k + 1, np.int32)
            lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            labels = lut[labels]
            scores, unc = scores[keep], unc[keep]
    return labels, scores, unc
