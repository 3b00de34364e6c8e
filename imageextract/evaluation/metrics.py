"""Instance-segmentation and analysis metrics on label maps.

Every function here is pure: label maps (or numbers) in, numbers out.  The
segmentation metrics follow ``docs/METRICS.md`` step by step:

- :func:`paper_metrics` -- AP, AP50, AP75 and mean IoU exactly as the BPartIS
  paper (Yildirim & Cole, J. Chem. Inf. Model. 2021, Table 1) computed them:
  IoU-threshold sweep, no score ranking;
- :func:`aji_plus` -- aggregated Jaccard index "plus" (Hungarian pairing);
- :func:`coco_mask_ap` -- COCO-style mask AP (score-ranked, IoU 0.50:0.95,
  101-point interpolation), per image;
- :func:`panoptic_quality` -- PQ with matches at IoU > 0.5;
- :func:`all_metrics` -- all of the above in one dictionary;
- :func:`matched_pairs` -- the instances matched at IoU > 0.5 with their IoU
  and areas (how well the particles found are outlined).

Analysis-stage metrics compare distributions measured on a prediction with
those measured on the ground truth: :func:`histogram_cosine_distance`,
:func:`rdf_rmse`, :func:`relative_error` and :func:`size_metrics`.

Label maps are ``(M, N)`` integer arrays, 0 = background, every other value
one instance; the values need not be consecutive.  A dataset score is the
mean of the per-image values.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ImageExtractError

logger = logging.getLogger(__name__)

#: IoU thresholds of the BPartIS-paper sweep: 0.00, 0.05, ..., 0.95.
PAPER_THRESHOLDS = np.round(np.arange(20) * 0.05, 2)
#: IoU thresholds of COCO AP: 0.50, 0.55, ..., 0.95.
COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: Recall points of COCO's interpolated precision: 0.00, 0.01, ..., 1.00.
COCO_RECALLS = np.linspace(0.0, 1.0, 101)

_EPS = 1e-12


# --------------------------------------------------------------------------
# overlaps


@dataclass(frozen=True)
class _Overlap:
    """Pairwise overlap of the instances of two label maps.

    ``inter[i, j]`` is the number of pixels shared by ground-truth instance
    ``gt_ids[i]`` and predicted instance ``pred_ids[j]``.
    """

    gt_ids: np.ndarray  # (G,)
    pred_ids: np.ndarray  # (P,)
    gt_areas: np.ndarray  # (G,) int64
    pred_areas: np.ndarray  # (P,) int64
    inter: np.ndarray  # (G, P) int64

    @property
    def union(self) -> np.ndarray:
        return self.gt_areas[:, None] + self.pred_areas[None, :] - self.inter

    def iou(self, dtype=np.float64) -> np.ndarray:
        """``(G, P)`` IoU matrix in ``dtype`` (both operands cast first)."""
        union = self.union
        out = np.zeros(self.inter.shape, dtype=dtype)
        np.divide(
            self.inter.astype(dtype), union.astype(dtype), out=out, where=union > 0
        )
        return out


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim != 2 or pred.ndim != 2:
        raise ImageExtractError(
            f"label maps must be 2-D, got shapes {gt.shape} (truth) and {pred.shape} (prediction)"
        )
    if gt.shape != pred.shape:
        raise ImageExtractError(
            f"truth and prediction differ in shape: {gt.shape} vs {pred.shape}"
        )
    for name, arr in (("truth", gt), ("prediction", pred)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ImageExtractError(
                f"{name} label map must be an integer array, got dtype {arr.dtype}"
            )
        if arr.size and arr.min() < 0:
            raise ImageExtractError(f"{name} label map has negative labels")
    return gt.astype(np.int64, copy=False), pred.astype(np.int64, copy=False)


def _overlap(gt: np.ndarray, pred: np.ndarray) -> _Overlap:
    """Sparse contingency table of two (checked) label maps."""
    g = gt.ravel()
    p = pred.ravel()
    gt_ids, g_counts = np.unique(g, return_counts=True)
    pred_ids, p_counts = np.unique(p, return_counts=True)
    g_keep = gt_ids != 0
    p_keep = pred_ids != 0
    gt_ids, g_counts = gt_ids[g_keep], g_counts[g_keep]
    pred_ids, p_counts = pred_ids[p_keep], p_counts[p_keep]
    inter = np.zeros((gt_ids.size, pred_ids.size), dtype=np.int64)
    both = (g != 0) & (p != 0)
    if both.any():
        gi = np.searchsorted(gt_ids, g[both])
        pi = np.searchsorted(pred_ids, p[both])
        pairs, counts = np.unique(gi * pred_ids.size + pi, return_counts=True)
        inter[pairs // pred_ids.size, pairs % pred_ids.size] = counts
    return _Overlap(gt_ids, pred_ids, g_counts.astype(np.int64), p_counts.astype(np.int64), inter)


# --------------------------------------------------------------------------
# BPartIS-paper metrics


def _counts_at(match: np.ndarray) -> tuple[int, int, int]:
    """TP, FP, FN of a boolean ``(G, P)`` match matrix (duplicates are FP)."""
    per_gt = match.sum(axis=1)
    per_pred = match.sum(axis=0)
    tp = int(np.count_nonzero(per_gt))
    fn = int(per_gt.size - tp)
    fp = int(np.count_nonzero(per_pred == 0)) + int(np.maximum(per_gt - 1, 0).sum())
    return tp, fp, fn


def _paper_ap(recalls: np.ndarray, precisions: np.ndarray) -> float:
    """AP of the 20-point curve, thresholds in ascending order (METRICS.md step 5)."""
    r = np.asarray(recalls, dtype=np.float64)[::-1]  # t = 0.95 ... 0
    p = np.asarray(precisions, dtype=np.float64)[::-1]
    p = np.maximum.accumulate(p[::-1])[::-1]  # p_i := max_{j >= i} p_j
    r16 = r.astype(np.float16)
    p16 = p.astype(np.float16)
    if np.all(r16 == 1) and np.all(p16 == 1):
        return 1.0
    if np.all(r16 == r16.mean(dtype=np.float16)) and np.all(p16 == p16.mean(dtype=np.float16)):
        return float(p.mean())
    return float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2.0))


def paper_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float | int]:
    """AP, AP50, AP75 and mean IoU as the BPartIS paper computed them.

    IoUs are computed in float32; at each threshold ``t`` in 0.00, 0.05, ...,
    0.95 a pair matches when IoU > t.  A ground-truth instance with at least
    one match is a TP, one without is a FN; a prediction matching nothing is
    a FP and a ground-truth instance matched by ``k > 1`` predictions adds
    ``k - 1`` FPs.  AP50/AP75 are the precisions at t = 0.5/0.75; AP is the
    trapezoid under the monotone precision-recall curve starting at the
    recall of t = 0.95 (with the float16 special cases of ``METRICS.md``).

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Ground-truth and predicted instance labels, 0 is background.

    Returns
    -------
    dict
        ``ap``, ``ap50``, ``ap75``, ``mean_iou`` (floats in [0, 1]),
        ``n_true``, ``n_pred`` (instance counts) and ``tp50``, ``fp50``,
        ``fn50`` (counts at t = 0.5).  No instances on either side gives 1
        for every metric; exactly one side empty gives 0.

    Examples
    --------
    >>> gt = np.zeros((4, 4), int); gt[:2, :2] = 1
    >>> paper_metrics(gt, gt)["ap"]
    1.0
    >>> paper_metrics(gt, np.zeros_like(gt))["ap50"]
    0.0
    """
    gt, pred = _check_pair(gt, pred)
    ov = _overlap(gt, pred)
    n_true, n_pred = int(ov.gt_ids.size), int(ov.pred_ids.size)
    out: dict[str, float | int] = {"n_true": n_true, "n_pred": n_pred}
    if n_true == 0 or n_pred == 0:
        value = 1.0 if n_true == n_pred else 0.0
        out.update(ap=value, ap50=value, ap75=value, mean_iou=value,
                   tp50=0, fp50=n_pred, fn50=n_true)
        return out

    iou = ov.iou(np.float32)
    recalls = np.empty(PAPER_THRESHOLDS.size)
    precisions = np.empty(PAPER_THRESHOLDS.size)
    for k, t in enumerate(PAPER_THRESHOLDS):
        tp, fp, fn = _counts_at(iou > np.float32(t))
        precisions[k] = tp / (tp + fp + _EPS)
        recalls[k] = tp / (tp + fn + _EPS)
        if k == 10:  # t = 0.5
            out.update(tp50=tp, fp50=fp, fn50=fn)
    best = iou.max(axis=0)  # (P,) best IoU of each prediction
    mean_iou = float(np.where(best > np.float32(0.5), best, np.float32(0)).astype(np.float64).mean())
    out.update(
        ap=_paper_ap(recalls, precisions),
        ap50=float(precisions[10]),
        ap75=float(precisions[15]),
        mean_iou=mean_iou,
    )
    return out


# --------------------------------------------------------------------------
# AJI+, COCO AP, PQ


def matched_pairs(gt: np.ndarray, pred: np.ndarray, *, min_iou: float = 0.5) -> dict:
    """The ground-truth and predicted instances that match at IoU above
    ``min_iou``, with their IoU and areas: how well the outlines of the
    particles found are drawn, apart from the particles missed.

    With ``min_iou`` >= 0.5 each instance has at most one match (two
    instances cannot both overlap a third by more than half of their union).

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Instance labels, 0 is background.
    min_iou : float
        Pairs with an IoU above this are kept; at least 0.5.

    Returns
    -------
    dict of (K,) arrays
        ``gt_id``, ``pred_id``, ``iou``, ``gt_area`` and ``pred_area``
        (pixels), ordered by ``gt_id``.

    Examples
    --------
    >>> gt = np.zeros((4, 4), int); gt[:, :2] = 1; gt[:, 3] = 2
    >>> pred = np.zeros((4, 4), int); pred[:, :3] = 7
    >>> m = matched_pairs(gt, pred)  # 8 shared pixels / 12 in the union
    >>> m["gt_id"].tolist(), m["pred_id"].tolist(), m["iou"].round(3).tolist()
    ([1], [7], [0.667])
    """
    if not 0.5 <= float(min_iou) < 1.0:
        raise ImageExtractError(f"min_iou must be in [0.5, 1), got {min_iou!r}")
    gt, pred = _check_pair(gt, pred)
    ov = _overlap(gt, pred)
    iou = ov.iou(np.float64)
    gi, pi = np.nonzero(iou > min_iou)
    return {"gt_id": ov.gt_ids[gi], "pred_id": ov.pred_ids[pi], "iou": iou[gi, pi],
            "gt_area": ov.gt_areas[gi], "pred_area": ov.pred_areas[pi]}


def aji_plus(gt: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard index "plus" (AJI+).

    Ground-truth and predicted instances are paired one-to-one so that the
    total IoU is maximal (Hungarian assignment); pairs with IoU 0 are
    dropped.  AJI+ = sum |g & p| over pairs / (sum |g | p| over pairs + area
    of unpaired ground truth + area of unpaired predictions).

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Instance labels, 0 is background.

    Returns
    -------
    float
        In [0, 1]; 1 when both maps are empty, 0 when exactly one is.

    Examples
    --------
    >>> gt = np.zeros((4, 4), int); gt[:, :2] = 1
    >>> pred = np.zeros((4, 4), int); pred[:, 1:3] = 1
    >>> aji_plus(gt, pred)  # 4 shared pixels / 12 in the union
    0.3333333333333333

    :func:`aji_plus_parts` computes it, with the rest of the union split
    into where it is lost.
    """
    return aji_plus_parts(gt, pred)["aji_plus"]


#: The shares of :func:`aji_plus_parts`, in order; they sum to 1.
AJI_PARTS = ("aji_plus", "outline", "weak_pairs", "missed", "false")


def aji_plus_parts(gt: np.ndarray, pred: np.ndarray, *,
                   min_iou: float = 0.5) -> dict[str, float]:
    """Where an image's AJI+ is lost: the shares of its union.

    AJI+ divides the pairs' intersections by a union ``U`` (see
    :func:`aji_plus`, which returns the first share below).  ``U`` splits into five parts, each
    returned as a share of ``U`` (they sum to 1):

    * ``aji_plus``: the pairs' intersections, i.e. AJI+ itself;
    * ``outline``: the rest of the pairs' unions, for pairs with IoU above
      ``min_iou`` (particles found and drawn a little wrong);
    * ``weak_pairs``: the same for the pairs at ``min_iou`` or below
      (particles merged, split or drawn badly wrong);
    * ``missed``: the ground-truth particles left unpaired;
    * ``false``: the predicted particles left unpaired.

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Instance labels, 0 is background.
    min_iou : float
        In [0, 1); 0.5 as :func:`matched_pairs`.

    Returns
    -------
    dict of float, keyed by :data:`AJI_PARTS`
        Both maps empty: ``aji_plus`` 1; only the prediction: ``false`` 1;
        only the ground truth: ``missed`` 1; the other shares 0.

    Examples
    --------
    >>> gt = np.zeros((4, 8), int); gt[:, :2] = 1; gt[:, 5:7] = 2
    >>> pred = np.zeros((4, 8), int); pred[:, :3] = 1; pred[0, 7] = 5
    >>> parts = aji_plus_parts(gt, pred)  # union 12 + 8 missed + 1 false
    >>> {k: round(v * 21) for k, v in parts.items()}
    {'aji_plus': 8, 'outline': 4, 'weak_pairs': 0, 'missed': 8, 'false': 1}
    """
    if not 0.0 <= float(min_iou) < 1.0:
        raise ImageExtractError(f"min_iou must be in [0, 1), got {min_iou!r}")
    gt, pred = _check_pair(gt, pred)
    ov = _overlap(gt, pred)
    out = dict.fromkeys(AJI_PARTS, 0.0)
    if ov.gt_ids.size == 0 or ov.pred_ids.size == 0:
        key = ("aji_plus" if ov.gt_ids.size == ov.pred_ids.size
               else "missed" if ov.gt_ids.size else "false")
        out[key] = 1.0
        return out
    from scipy.optimize import linear_sum_assignment

    iou = ov.iou(np.float64)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    keep = iou[rows, cols] > 0
    rows, cols = rows[keep], cols[keep]
    inter = ov.inter[rows, cols]
    rest = ov.union[rows, cols] - inter
    good = iou[rows, cols] > min_iou
    sums = {"aji_plus": int(inter.sum()), "outline": int(rest[good].sum()),
            "weak_pairs": int(rest[~good].sum()),
            "missed": int(ov.gt_areas.sum() - ov.gt_areas[rows].sum()),
            "false": int(ov.pred_areas.sum() - ov.pred_areas[cols].sum())}
    total = sum(sums.values())
    return {k: v / total for k, v in sums.items()}


def coco_mask_ap(
    gt: np.ndarray,
    pred: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    max_dets: int | None = 100,
) -> float:
    """COCO-style mask AP of one image (IoU 0.50:0.05:0.95, 101 recall points).

    Follows pycocotools' ``COCOeval`` for a single image and category, no
    crowd regions, area range "all": predictions are ranked by score (stable
    sort), only the top ``max_dets`` are kept, and each one in turn is matched
    greedily to the unmatched ground-truth instance of highest IoU, provided
    IoU >= t.  Precision is made monotone and sampled at recalls 0, 0.01, ...,
    1; AP is the mean over recalls and thresholds.

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Instance labels, 0 is background.
    scores : (P,) array_like or None
        Confidence of each predicted instance, in the order of the sorted
        nonzero label values of ``pred`` (for labels 1..K: row ``k - 1`` for
        label ``k``, as in :class:`~imageextract.types.Segmentation`).  When
        None, predictions are ranked by area, largest first (ties by label),
        which does not depend on how the labels are numbered.
    max_dets : int or None
        At most this many predictions are scored (pycocotools' default 100);
        None keeps them all.

    Returns
    -------
    float
        In [0, 1]; 1 when both maps are empty, 0 when exactly one is.

    Examples
    --------
    >>> gt = np.zeros((4, 4), int); gt[:2, :2] = 1
    >>> round(coco_mask_ap(gt, gt), 9)  # precision is TP / (TP + FP + 2**-52)
    1.0
    """
    gt, pred = _check_pair(gt, pred)
    ov = _overlap(gt, pred)
    n_true, n_pred = ov.gt_ids.size, ov.pred_ids.size
    if n_true == 0 or n_pred == 0:
        return 1.0 if n_true == n_pred else 0.0
    if scores is None:
        order = np.argsort(-ov.pred_areas, kind="mergesort")
    else:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.size != n_pred:
            raise ImageExtractError(
                f"scores has {s.size} entries for {n_pred} predicted instances"
            )
        order = np.argsort(-s, kind="mergesort")
    if max_dets is not None:
        order = order[: int(max_dets)]
    iou = ov.iou(np.float64)[:, order]  # (G, D) in rank order
    n_det = order.size

    precisions = np.zeros((COCO_THRESHOLDS.size, COCO_RECALLS.size))
    for k, t in enumerate(COCO_THRESHOLDS):
        gt_taken = np.zeros(n_true, dtype=bool)
        tp = np.zeros(n_det, dtype=bool)
        thr = min(t, 1 - 1e-10)
        for d in range(n_det):
            col = np.where(gt_taken, -1.0, iou[:, d])
            best = col.max()
            if best >= thr:
                # pycocotools keeps the last ground truth among equal IoUs
                g = n_true - 1 - int(np.argmax(col[::-1] == best))
                gt_taken[g] = True
                tp[d] = True
        tp_sum = np.cumsum(tp)
        fp_sum = np.cumsum(~tp)
        rc = tp_sum / n_true
        pr = tp_sum / (tp_sum + fp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        inds = np.searchsorted(rc, COCO_RECALLS, side="left")
        valid = inds < n_det
        precisions[k, valid] = pr[inds[valid]]
    return float(precisions.mean())


def panoptic_quality(gt: np.ndarray, pred: np.ndarray) -> float:
    """Panoptic quality of the instances (one class).

    A (ground truth, prediction) pair is a TP when IoU > 0.5, which makes the
    matching unique.  PQ = sum of TP IoUs / (TP + FP/2 + FN/2).

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Instance labels, 0 is background.

    Returns
    -------
    float
        In [0, 1]; 1 when both maps are empty, 0 when exactly one is.

    Examples
    --------
    >>> gt = np.zeros((4, 4), int); gt[:, :2] = 1
    >>> pred = np.zeros((4, 4), int); pred[:, :3] = 1
    >>> round(panoptic_quality(gt, pred), 4)  # one TP with IoU 8/12
    0.6667
    """
    gt, pred = _check_pair(gt, pred)
    ov = _overlap(gt, pred)
    n_true, n_pred = ov.gt_ids.size, ov.pred_ids.size
    if n_true == 0 or n_pred == 0:
        return 1.0 if n_true == n_pred else 0.0
    iou = ov.iou(np.float64)
    match = iou > 0.5
    tp = int(match.sum())
    fp = n_pred - tp
    fn = n_true - tp
    return float(iou[match].sum() / (tp + 0.5 * fp + 0.5 * fn))


def all_metrics(
    gt: np.ndarray, pred: np.ndarray, scores: np.ndarray | None = None
) -> dict[str, float | int]:
    """Every segmentation metric of one image in one dictionary.

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Instance labels, 0 is background.
    scores : (P,) array_like or None
        Per-instance confidences for :func:`coco_mask_ap`.

    Returns
    -------
    dict
        The keys of :func:`paper_metrics` plus ``aji_plus``, ``coco_ap`` and
        ``pq``.

    Examples
    --------
    >>> gt = np.zeros((4, 4), int); gt[:2, :2] = 1
    >>> sorted(all_metrics(gt, gt))[:4]
    ['aji_plus', 'ap', 'ap50', 'ap75']
    """
    out = paper_metrics(gt, pred)
    out["aji_plus"] = aji_plus(gt, pred)
    out["coco_ap"] = coco_mask_ap(gt, pred, scores)
    out["pq"] = panoptic_quality(gt, pred)
    return out


# --------------------------------------------------------------------------
# analysis-stage metrics


def histogram_cosine_distance(
    a: np.ndarray, b: np.ndarray, *, bins: int | np.ndarray = 20,
    range: tuple[float, float] | None = None,
) -> float:
    """Cosine distance between the histograms of two samples.

    Both histograms use the same bin edges: ``bins`` edges when an array is
    given, else ``bins`` equal bins spanning both samples (or ``range``).

    Parameters
    ----------
    a, b : (n,) and (m,) array_like of float
        Samples (e.g. particle diameters in px or nm); NaNs are dropped.
    bins : int or (B + 1,) array_like
        Number of bins, or the bin edges.
    range : (float, float) or None
        Lower and upper edge when ``bins`` is an int.

    Returns
    -------
    float
        ``1 - cos(h_a, h_b)`` in [0, 1]: 0 for proportional histograms
        (and for two empty samples), 1 when they share no bin (or exactly one
        sample is empty).

    Examples
    --------
    >>> histogram_cosine_distance([1, 2, 3], [1, 2, 3], bins=3)
    0.0
    >>> histogram_cosine_distance([1, 1], [5, 5], bins=2)
    1.0
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    b = b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return 0.0 if a.size == b.size else 1.0
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=bins, range=range)
    ha, _ = np.histogram(a, bins=edges)
    hb, _ = np.histogram(b, bins=edges)
    na, nb = np.linalg.norm(ha), np.linalg.norm(hb)
    if na == 0 or nb == 0:  # every sample outside the given edges
        return 0.0 if na == nb else 1.0
    cos = float(np.dot(ha, hb) / (na * nb))
    return float(min(max(1.0 - cos, 0.0), 1.0))


def rdf_rmse(g_pred: np.ndarray, g_true: np.ndarray) -> float:
    """Root-mean-square difference of two radial distribution functions.

    Parameters
    ----------
    g_pred, g_true : (R,) array_like of float
        g(r) sampled at the same radii.  Radii where either is NaN are ignored.

    Returns
    -------
    float
        RMSE; NaN when no radius has both values.

    Examples
    --------
    >>> rdf_rmse([1.0, 2.0], [1.0, 0.0])
    1.4142135623730951
    """
    gp = np.asarray(g_pred, dtype=np.float64).reshape(-1)
    gt = np.asarray(g_true, dtype=np.float64).reshape(-1)
    if gp.shape != gt.shape:
        raise ImageExtractError(
            f"g(r) arrays must be sampled at the same radii; got {gp.size} and {gt.size} values"
        )
    ok = np.isfinite(gp) & np.isfinite(gt)
    if not ok.any():
        return math.nan
    return float(np.sqrt(np.mean((gp[ok] - gt[ok]) ** 2)))


def relative_error(pred_value: float, true_value: float) -> float:
    """Absolute relative error ``|pred - true| / |true|``.

    Returns 0 when both are 0, ``inf`` when only ``true_value`` is 0 and NaN
    when either is NaN.

    Examples
    --------
    >>> relative_error(11.0, 10.0)
    0.1
    """
    p, t = float(pred_value), float(true_value)
    if math.isnan(p) or math.isnan(t):
        return math.nan
    if t == 0:
        return 0.0 if p == 0 else math.inf
    return abs(p - t) / abs(t)


def ecd_and_aspect(
    labels: np.ndarray, *, exclude_border: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Equivalent circular diameter and aspect ratio of every instance.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Instance labels, 0 is background.
    exclude_border : bool
        Leave out instances with a pixel on the image border.

    Returns
    -------
    ecd_px : (K,) ndarray of float64
        ``sqrt(4 * area / pi)`` in pixels, in label order.
    aspect_ratio : (K,) ndarray of float64
        Major / minor axis of the ellipse with the same second moments
        (:func:`skimage.measure.regionprops_table`), >= 1; NaN for instances
        one pixel thin.

    Examples
    --------
    >>> lab = np.zeros((7, 13), int); lab[2:5, 2:11] = 1  # 3 x 9 rectangle
    >>> ecd, ar = ecd_and_aspect(lab)
    >>> round(float(ar[0]) ** 2, 6)  # (9**2 - 1) / (3**2 - 1)
    10.0
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ImageExtractError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.size == 0 or labels.max() == 0:
        return np.zeros(0), np.zeros(0)
    props = regionprops_table(
        labels.astype(np.int32, copy=False),
        properties=("label", "area", "axis_major_length", "axis_minor_length"),
    )
    if exclude_border:
        border = np.unique(np.concatenate(
            [labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]]))
        inner = ~np.isin(props["label"], border)
    else:
        inner = np.ones(len(props["label"]), dtype=bool)
    area = np.asarray(props["area"], dtype=np.float64)[inner]
    major = np.asarray(props["axis_major_length"], dtype=np.float64)[inner]
    minor = np.asarray(props["axis_minor_length"], dtype=np.float64)[inner]
    ecd = np.sqrt(4.0 * area / np.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(minor > 0, major / np.where(minor > 0, minor, 1.0), np.nan)
    return ecd, aspect


#: Median aspect ratio above which an image's particles count as elongated
#: (rods, wires, fibres): the shape groups of the benchmarks and of training.
ELONGATED_ASPECT = 2.5


def is_elongated(labels: np.ndarray, *, threshold: float = ELONGATED_ASPECT) -> bool:
    """Whether the median aspect ratio (:func:`ecd_and_aspect`) of the
    particles of ``labels``, border ones included (a rod often crosses the
    border), is above ``threshold``; False without particles.

    >>> lab = np.zeros((40, 40), int); lab[2:5, 2:30] = 1; lab[10:20, 10:20] = 2
    >>> is_elongated(lab), is_elongated(lab, threshold=20.0)
    (True, False)
    """
    _, aspect = ecd_and_aspect(labels, exclude_border=False)
    aspect = aspect[np.isfinite(aspect)]
    return bool(aspect.size) and float(np.median(aspect)) > threshold


def size_metrics(
    gt: np.ndarray, pred: np.ndarray, *, bins: int = 20,
    aspect_bins: int | np.ndarray | None = None,
) -> dict[str, float | int]:
    """Compare the size and shape distributions of two label maps.

    Equivalent circular diameter (ECD, px) and aspect ratio (ellipse major /
    minor axis, from :func:`skimage.measure.regionprops_table`) are measured on
    every instance that does not touch the image border.

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Instance labels, 0 is background.
    bins : int
        Number of shared bins of the ECD histograms.
    aspect_bins : int, (B + 1,) array_like or None
        Bins of the aspect-ratio histograms; None uses ``bins`` equal bins.

    Returns
    -------
    dict
        ``size_cosine_distance``, ``aspect_cosine_distance`` (see
        :func:`histogram_cosine_distance`), ``d50_relative_error`` (of the
        median ECD), ``d50_true_px``, ``d50_pred_px`` (NaN without
        instances) and ``n_true``, ``n_pred`` (instances measured).
        Instances one pixel thin (minor axis 0) have no aspect ratio.

    Examples
    --------
    >>> gt = np.zeros((20, 20), int); gt[5:9, 5:9] = 1
    >>> size_metrics(gt, gt)["d50_relative_error"]
    0.0
    """
    gt, pred = _check_pair(gt, pred)
    ecd_t, ar_t = ecd_and_aspect(gt)
    ecd_p, ar_p = ecd_and_aspect(pred)
    d50_t = float(np.median(ecd_t)) if ecd_t.size else math.nan
    d50_p = float(np.median(ecd_p)) if ecd_p.size else math.nan
    if ecd_t.size == 0 and ecd_p.size == 0:
        d50_err = 0.0
    elif ecd_t.size == 0 or ecd_p.size == 0:
        d50_err = math.inf if ecd_t.size == 0 else 1.0
    else:
        d50_err = relative_error(d50_p, d50_t)
    return {
        "size_cosine_distance": histogram_cosine_distance(ecd_t, ecd_p, bins=bins),
        "aspect_cosine_distance": histogram_cosine_distance(
            ar_t, ar_p, bins=bins if aspect_bins is None else aspect_bins),
        "d50_relative_error": d50_err,
        "d50_true_px": d50_t,
        "d50_pred_px": d50_p,
        "n_true": int(ecd_t.size),
        "n_pred": int(ecd_p.size),
    }


__all__ = [
    "COCO_RECALLS",
    "COCO_THRESHOLDS",
    "PAPER_THRESHOLDS",
    "AJI_PARTS",
    "aji_plus",
    "aji_plus_parts",
    "all_metrics",
    "coco_mask_ap",
    "ELONGATED_ASPECT",
    "ecd_and_aspect",
    "is_elongated",
    "histogram_cosine_distance",
    "panoptic_quality",
    "paper_metrics",
    "rdf_rmse",
    "relative_error",
    "size_metrics",
]
