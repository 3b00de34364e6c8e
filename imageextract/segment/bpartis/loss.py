"""Training loss of the ``bpartis`` backend (SpatialEmbeddings-style).

For each ground-truth instance ``k`` of an image:

* centre ``C_k`` = centroid of the instance's pixel coordinates (or the mean
  embedding with ``center="embedding"``), in embedding units;
* ``s_k`` = ``exp(mean log_s)`` inside the instance (per axis, elliptical);
* ``phi_k(e_i) = exp(-sum_axis (e_i - C_k)^2 * s_k)`` for every pixel ``i``;
* ``w_inst`` x Lovasz hinge of ``2 phi_k - 1`` against the instance mask;
* ``w_var`` x variance of ``log_s`` inside the instance (smoothness);
* ``w_seed`` x seed regression: ``(seed - phi_k)^2`` inside the instance
  (``phi`` detached, weighted by ``fg_weight``), ``seed^2`` on background,
  summed and divided by the number of pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss, row-wise.

    Parameters
    ----------
    gt_sorted : (K, N) float tensor
        Ground truth (0/1) ordered by decreasing error in each row.

    Returns
    -------
    (K, N) tensor
    """
    gts = gt_sorted.sum(1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(1)
    union = gts + (1.0 - gt_sorted).cumsum(1)
    jaccard = 1.0 - intersection / union.clamp_min(1e-12)
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge loss (Berman et al. 2018), one value per row.

    Parameters
    ----------
    logits : (K, N) float tensor
        Real-valued scores (> 0 means foreground).
    labels : (K, N) float tensor of 0/1

    Returns
    -------
    (K,) tensor
    """
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    gt_sorted = torch.gather(labels, 1, perm)
    grad = lovasz_grad(gt_sorted)
    return (F.relu(errors_sorted) * grad).sum(1)


def coordinate_grid(h: int, w: int, scale: float, *, device=None, y0: int = 0,
                    x0: int = 0) -> torch.Tensor:
    """``(2, h, w)`` pixel coordinates (y, x) divided by ``scale``."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + y0) / scale
    xs = (torch.arange(w, device=device, dtype=torch.float32) + x0) / scale
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), 0)


def _windows(lab_k: np.ndarray, k: int, margin: int, rel_margin: float) -> list:
    """Bounding boxes of instances 0..k-1 of ``lab_k`` (-1 = background),
    grown by ``margin + rel_margin * extent`` and clipped to the image."""
    h, w = lab_k.shape
    boxes = ndimage.find_objects(lab_k + 1, max_label=k)
    out = []
    for sl in boxes:
        if sl is None:  # cannot happen for ids from unique(); keep robust
            out.append((0, h, 0, w))
            continue
        ys, xs = sl
        m = int(margin + rel_margin * max(ys.stop - ys.start, xs.stop - xs.start))
        out.append((max(0, ys.start - m), min(h, ys.stop + m),
                    max(0, xs.start - m), min(w, xs.stop + m)))
    return out


def prepare_targets(labels: np.ndarray, *, margin: int = 16, rel_margin: float = 0.3,
                    chunk_elems: int = 2_000_000) -> dict:
    """The label-only part of :func:`instance_loss` for one image.

    Pure numpy on the labels, so a data-loading worker can do it while the
    accelerator trains (on a GPU this bookkeeping, not the network, bounds
    the step time).

    Parameters
    ----------
    labels : (H, W) int array
        Instance ids, 0 = background (need not be consecutive).

    Returns
    -------
    dict with ``k`` (number of instances), ``lab_k`` ((H*W,) int64 tensor:
    instance index 0..k-1, -1 = background) and ``chunks`` (list of
    ``(rows, index)`` int64 tensors: the instances of one Lovasz call and the
    flat pixel indices of their windows, padded with -1).
    """
    lab = np.asarray(labels)
    h, w = lab.shape
    flat = lab.reshape(-1).astype(np.int64, copy=False)
    present = np.bincount(flat, minlength=1) > 0 if flat.size else np.zeros(1, bool)
    present[0] = False  # background
    lut = np.full(present.size, -1, dtype=np.int64)
    k = int(present.sum())
    lut[present] = np.arange(k)
    lab_k_np = lut[lab]  # -1 = background, ids in increasing order
    chunks = []
    if k:
        boxes = _windows(lab_k_np, k, margin, rel_margin)
        sizes = np.array([(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in boxes])
        order = np.argsort(sizes)
        start = 0
        while start < k:
            stop = start + 1
            while stop < k and int(sizes[order[stop]]) * (stop - start + 1) <= chunk_elems:
                stop += 1
            rows = order[start:stop]
            length = int(sizes[rows].max())
            index = np.full((rows.size, length), -1, dtype=np.int64)
            for r, kk in enumerate(rows):
                y0, y1, x0, x1 = boxes[kk]
                fl = (np.arange(y0, y1)[:, None] * w + np.arange(x0, x1)[None, :]).ravel()
                index[r, : fl.size] = fl
            chunks.append((torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(index)))
            start = stop
    return {"k": k, "lab_k": torch.from_numpy(lab_k_np.reshape(-1)), "chunks": chunks}


def instance_loss(offsets: torch.Tensor, log_s: torch.Tensor, seed: torch.Tensor,
                  labels: torch.Tensor | None, *, coord_scale: float, w_inst: float = 1.0,
                  w_var: float = 10.0, w_seed: float = 1.0, fg_weight: float = 10.0,
                  center: str = "centroid", margin: int = 16, rel_margin: float = 0.3,
                  chunk_elems: int = 2_000_000, var_scale: float = 1.0,
                  w_repel: float = 0.0, repel_phi: float = 0.3,
                  targets: list[dict] | None = None) -> tuple[torch.Tensor, dict]:
    """Loss of a batch.

    The Lovasz hinge of instance ``k`` is evaluated on the instance's bounding
    box grown by ``margin + rel_margin * extent`` pixels: pixels further away
    have ``phi_k`` near 0, an error near 0 and (the Lovasz gradient summing to
    at most 1) a negligible share of the loss, so this is an accurate and much
    cheaper approximation of the full-image loss.

    Parameters
    ----------
    offsets : (B, 2, H, W) tensor
    log_s : (B, 2, H, W) tensor
    seed : (B, 1, H, W) tensor in [0, 1]
    labels : (B, H, W) int64 tensor
        Instance ids, 0 = background (need not be consecutive); may be None
        when ``targets`` is given.
    coord_scale : float
        Pixels per embedding unit.
    chunk_elems : int
        Bound on instances x window pixels handled in one Lovasz call.
    var_scale : float
        The sigma smoothness term is the variance of ``log_s / var_scale``
        inside each instance.  With the model's ``sigma_scale`` (``log_s`` =
        ``sigma_scale`` x the head's raw output) it penalises the raw output,
        as SpatialEmbeddings and BPartIS do; 1 penalises ``log_s`` itself,
        ``var_scale**2`` times harder, which flattens the sigma head to a
        constant (what recipes without ``loss.var_scale`` trained with).
    w_repel, repel_phi : float
        Weight of a term that keeps each instance's ``phi_k`` at or below
        ``repel_phi`` at the centroids of the other instances of the image:
        the mean over instances of ``sum_j relu(phi_k(C_j) - repel_phi)``
        (:func:`repel_loss`).  The clustering claims every pixel within a
        centre's ``phi > 0.5``, so a neighbour whose centroid lies there is
        merged however well its pixels collapse; this term asks for a
        bandwidth narrow enough to leave it out.  0 (default) leaves it out.
    targets : list of dict, optional
        :func:`prepare_targets` of each image, made ahead (e.g. by a data
        worker); ``margin``, ``rel_margin`` and ``chunk_elems`` then are
        those it was made with.

    Returns
    -------
    loss : scalar tensor
    parts : dict of floats (``inst``, ``var``, ``seed``; ``repel`` with
        ``w_repel``)
    """
    b, _, h, w = offsets.shape
    dev = offsets.device
    if targets is None:
        if labels is None:
            raise ValueError("instance_loss needs labels or targets")
        targets = [prepare_targets(labels[i].cpu().numpy(), margin=margin,
                                   rel_margin=rel_margin, chunk_elems=chunk_elems)
                   for i in range(b)]
    grid = coordinate_grid(h, w, coord_scale, device=dev).view(2, -1)
    total = offsets.new_zeros(())
    parts = {"inst": 0.0, "var": 0.0, "seed": 0.0} | ({"repel": 0.0} if w_repel else {})
    n_pix = h * w
    for i in range(b):
        emb = offsets[i].view(2, -1) + grid  # (2, N)
        ls = log_s[i].view(2, -1)
        sd = seed[i].view(-1)
        tg = targets[i]
        k = int(tg["k"])
        lab_k = torch.as_tensor(tg["lab_k"]).to(dev, non_blocking=True)
        fg = lab_k >= 0
        seed_bg = (sd[~fg] ** 2).sum()
        if k == 0:
            total = total + w_seed * seed_bg / n_pix
            parts["seed"] += float(seed_bg.detach()) / n_pix
            continue
        idx = lab_k[fg]
        counts = torch.bincount(idx, minlength=k).to(emb.dtype)
        zeros2 = torch.zeros(k, 2, dtype=emb.dtype, device=dev)
        ls_fg = ls[:, fg].T  # (M, 2)
        ls_mean = zeros2.index_add(0, idx, ls_fg) / counts[:, None]
        src = grid if center == "centroid" else emb
        centers = zeros2.index_add(0, idx, src[:, fg].T) / counts[:, None]
        var = (((ls_fg - ls_mean.detach()[idx]) / var_scale) ** 2).mean(1)
        var_loss = (torch.zeros(k, dtype=emb.dtype, device=dev).index_add(0, idx, var)
                    / counts).mean()
        s = torch.exp(ls_mean)  # (K, 2)
        # seed regression towards phi of the pixel's own instance
        d_own = ((emb[:, fg].T - centers[idx]) ** 2 * s[idx]).sum(1)
        phi_own = torch.exp(-d_own).detach()
        seed_l = (seed_bg + fg_weight * ((sd[fg] - phi_own) ** 2).sum()) / n_pix
        # Lovasz hinge on windows, instances grouped by window size
        inst_sum = emb.new_zeros(())
        for rows, index in tg["chunks"]:
            rows_t = torch.as_tensor(rows).to(dev, non_blocking=True)
            index_t = torch.as_tensor(index).to(dev, non_blocking=True)
            valid = index_t >= 0
            safe = index_t.clamp_min(0)
            e = emb[:, safe]  # (2, R, L)
            c = centers[rows_t].T[:, :, None]  # (2, R, 1)
            sr = s[rows_t].T[:, :, None]
            phi = torch.exp(-(((e - c) ** 2) * sr).sum(0))  # (R, L)
            target = ((lab_k[safe] == rows_t[:, None]) & valid).to(emb.dtype)
            logits = torch.where(valid, 2.0 * phi - 1.0, torch.full_like(phi, -1.0))
            inst_sum = inst_sum + lovasz_hinge(logits, target).sum()
        inst_loss = inst_sum / k
        total = total + w_inst * inst_loss + w_var * var_loss + w_seed * seed_l
        if w_repel:
            rep = repel_loss(centers, s, phi_max=repel_phi)
            total = total + w_repel * rep
            parts["repel"] += float(rep.detach())
        parts["inst"] += float(inst_loss.detach())
        parts["var"] += float(var_loss.detach())
        parts["seed"] += float(seed_l.detach())
    return total / b, {key: val / b for key, val in parts.items()}


def repel_loss(centers: torch.Tensor, s: torch.Tensor, *, phi_max: float = 0.3) -> torch.Tensor:
    """How far each instance's Gaussian reaches its neighbours' centroids.

    Parameters
    ----------
    centers : (K, 2) tensor
        Instance centroids in embedding units.
    s : (K, 2) tensor
        Each instance's ``1 / (2 sigma^2)`` per axis.
    phi_max : float
        ``phi_k(C_j)`` allowed without cost.

    Returns
    -------
    scalar tensor
        Mean over instances of ``sum_{j != k} relu(phi_k(C_j) - phi_max)``
        with ``phi_k(C_j) = exp(-sum_axis s_k (C_j - C_k)^2)``; 0 for fewer
        than two instances.  Its gradient narrows the bandwidth of an
        instance whose neighbour lies within its reach.

    Examples
    --------
    >>> c = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    >>> s = torch.full((3, 2), 0.5)  # phi between the first two: exp(-0.5)
    >>> round(float(repel_loss(c, s)), 4)  # 2 x (0.6065 - 0.3) / 3
    0.2044
    """
    k = centers.shape[0]
    if k < 2:
        return centers.new_zeros(())
    d2 = (centers[None, :, :] - centers[:, None, :]) ** 2  # (K, K, 2): row k, neighbour j
    phi = torch.exp(-(d2 * s[:, None, :]).sum(2))
    off_diag = ~torch.eye(k, dtype=torch.bool, device=centers.device)
    return (torch.relu(phi - phi_max) * off_diag).sum(1).mean()


def turn_pairs(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch followed by its copies turned a quarter turn (counter-clockwise,
    as :func:`numpy.rot90`): ``(2B, C, H, W)`` images and ``(2B, H, W)`` labels, in
    the order :func:`turn_consistency` expects."""
    return (torch.cat([images, torch.rot90(images, 1, (2, 3))]),
            torch.cat([labels, torch.rot90(labels, 1, (1, 2))]))


def turn_consistency(offsets: torch.Tensor, log_s: torch.Tensor, foreground: torch.Tensor, *,
                     coord_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teach the x channels what the y channels do on the image turned 90 degrees.

    The network's output channel 0 is always y and channel 1 always x, so
    turning the training crops does not make the two axes alike: a network
    can (and the 2026-12-02 weights do) collapse the x offsets less tightly
    and learn a looser x sigma.  A network that behaves the same whichever
    way the image lies satisfies, for ``J = rot90(I)``::

        offsets_J[0] = -rot90(offsets_I[1])     offsets_J[1] = rot90(offsets_I[0])
        log_s_J[0]   =  rot90(log_s_I[1])       log_s_J[1]   = rot90(log_s_I[0])

    This returns the disagreement of each image's x channels with the turned
    y channels of its partner, the y side detached (the y axis teaches):

    * offsets: smooth L1 in pixels (``beta`` 1 px), per foreground pixel;
    * log sigmas: squared difference, per foreground pixel.

    Parameters
    ----------
    offsets, log_s : (2B, 2, H, W) tensors
        Outputs on a batch made by :func:`turn_pairs` (``H == W``).
    foreground : (2B, 1, H, W) or (2B, H, W) tensor
        1 on particle pixels, 0 elsewhere (the labels of :func:`turn_pairs`
        ``> 0``).
    coord_scale : float
        Pixels per embedding unit.

    Returns
    -------
    (offset_loss, sigma_loss) : scalar tensors
    """
    n2 = offsets.shape[0]
    if n2 % 2 or offsets.shape[-1] != offsets.shape[-2]:
        raise ValueError(f"turn_consistency needs a batch of pairs of square crops, got "
                         f"shape {tuple(offsets.shape)}")
    b = n2 // 2
    fg = foreground.reshape(n2, 1, *offsets.shape[-2:]).to(offsets.dtype)

    def partner_y(t: torch.Tensor, sign: float) -> torch.Tensor:
        """Each image's partner's y channel, turned into the image's frame (the
        turned copies' turned back, times ``sign``), detached: the x targets."""
        return torch.cat([sign * torch.rot90(t[b:, 0:1], -1, (2, 3)),
                          torch.rot90(t[:b, 0:1], 1, (2, 3))]).detach()

    d_off = (offsets[:, 1:2] - partner_y(offsets, -1.0)) * fg * coord_scale
    d_ls = (log_s[:, 1:2] - partner_y(log_s, 1.0)) * fg
    n = fg.sum().clamp_min(1.0)
    off_loss = F.smooth_l1_loss(d_off, torch.zeros_like(d_off), reduction="sum", beta=1.0) / n
    return off_loss, (d_ls ** 2).sum() / n
