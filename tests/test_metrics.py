"""Each metric on small hand-made label maps whose answers are worked out on
paper (see the comment of each case).  Tiny deviations come only from the
1e-12 in precision = TP / (TP + FP + 1e-12) and pycocotools' 2**-52."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imageextract.errors import ImageExtractError
from imageextract.evaluation.metrics import (
    AJI_PARTS,
    aji_plus,
    aji_plus_parts,
    all_metrics,
    coco_mask_ap,
    ecd_and_aspect,
    histogram_cosine_distance,
    matched_pairs,
    panoptic_quality,
    paper_metrics,
    rdf_rmse,
    relative_error,
    size_metrics,
)

TOL = 1e-9


def boxes(shape, *rects):
    """Label map with rectangle k (r0, r1, c0, c1; end exclusive) labelled k."""
    lab = np.zeros(shape, dtype=np.int32)
    for k, (r0, r1, c0, c1) in enumerate(rects, start=1):
        lab[r0:r1, c0:c1] = k
    return lab


def approx(x, tol=TOL):
    return pytest.approx(x, abs=tol)


# ---------------------------------------------------------------- paper metrics


def test_perfect_prediction_scores_one_with_any_label_values():
    gt = boxes((8, 8), (0, 2, 0, 2), (4, 6, 4, 7))
    pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0))
    m = all_metrics(gt, pred)
    # IoU 1 everywhere: P = R = 1 at all 20 thresholds -> the float16 all-ones case.
    assert m["ap"] == 1.0
    assert m["ap50"] == approx(1.0) and m["ap75"] == approx(1.0)
    assert m["mean_iou"] == 1.0
    assert (m["n_true"], m["n_pred"], m["tp50"], m["fp50"], m["fn50"]) == (2, 2, 2, 0, 0)
    assert m["aji_plus"] == 1.0 and m["pq"] == 1.0
    assert m["coco_ap"] == approx(1.0)


def test_empty_and_empty_is_one():
    z = np.zeros((5, 5), dtype=np.int32)
    m = all_metrics(z, z)
    for key in ("ap", "ap50", "ap75", "mean_iou", "aji_plus", "coco_ap", "pq"):
        assert m[key] == 1.0, key
    assert (m["n_true"], m["n_pred"]) == (0, 0)


@pytest.mark.parametrize("which", ["no_prediction", "no_truth"])
def test_exactly_one_empty_is_zero(which):
    lab = boxes((6, 6), (1, 3, 1, 3), (4, 6, 0, 2))
    z = np.zeros_like(lab)
    gt, pred = (lab, z) if which == "no_prediction" else (z, lab)
    m = all_metrics(gt, pred)
    for key in ("ap", "ap50", "ap75", "mean_iou", "aji_plus", "coco_ap", "pq"):
        assert m[key] == 0.0, key
    assert m["tp50"] == 0
    assert m["fn50"] == (2 if which == "no_prediction" else 0)
    assert m["fp50"] == (0 if which == "no_prediction" else 2)


def test_shifted_iou_is_a_strict_threshold():
    # 4x4 box shifted one column: |g & p| = 12, |g | p| = 20, IoU = 0.6.
    # Match for t = 0.00..0.55 (12 points, P = R = 1); IoU > 0.6 is false,
    # so t = 0.60..0.95 (8 points) has P = R = 0.  The curve jumps from
    # (R 0, P 1 after the monotone step) to (R 1, P 1): AP = 1.
    gt = boxes((8, 8), (0, 4, 0, 4))
    pred = boxes((8, 8), (0, 4, 1, 5))
    m = paper_metrics(gt, pred)
    assert m["ap50"] == approx(1.0)
    assert m["ap75"] == 0.0
    assert m["mean_iou"] == approx(0.6, 1e-6)  # float32 IoU
    assert m["ap"] == approx(1.0)
    assert aji_plus(gt, pred) == approx(12 / 20)
    assert panoptic_quality(gt, pred) == approx(0.6)


def test_shifted_coco_ap_counts_thresholds_below_the_iou():
    # 10x10 box shifted one column: IoU = 90 / 110 = 0.818; matches at
    # t = 0.50..0.80 (7 of 10 thresholds) with precision 1 at every recall.
    gt = boxes((12, 12), (0, 10, 0, 10))
    pred = boxes((12, 12), (0, 10, 1, 11))
    assert coco_mask_ap(gt, pred) == approx(0.7)
    m = paper_metrics(gt, pred)  # matches at t = 0..0.80: AP 1, AP75 1
    assert m["ap"] == approx(1.0) and m["ap75"] == approx(1.0)
    assert m["mean_iou"] == approx(90 / 110, 1e-6)
    assert aji_plus(gt, pred) == approx(90 / 110)


def test_merged_prediction():
    # Two 2x2 truths, one column apart; one 2x5 prediction covers both:
    # IoU 4/10 = 0.4 with each.  t < 0.4 (8 points): both truths matched
    # once, P = R = 1; t >= 0.4 (12 points): P = R = 0.  AP = 1 (the jump
    # from R 0 to R 1 at P 1), AP50 = 0, mean IoU 0 (0.4 is no match).
    gt = boxes((4, 6), (0, 2, 0, 2), (0, 2, 3, 5))
    pred = boxes((4, 6), (0, 2, 0, 5))
    m = paper_metrics(gt, pred)
    assert m["ap"] == approx(1.0)
    assert m["ap50"] == 0.0 and m["ap75"] == 0.0 and m["mean_iou"] == 0.0
    assert (m["tp50"], m["fp50"], m["fn50"]) == (0, 1, 2)
    # Hungarian pairs the prediction with one truth: 4 / (10 + 4 unpaired).
    assert aji_plus(gt, pred) == approx(4 / 14)
    assert panoptic_quality(gt, pred) == 0.0  # 0 / (0 + 1/2 + 2/2)
    assert coco_mask_ap(gt, pred) == 0.0


def test_split_prediction_counts_the_second_half_as_duplicate():
    # One 2x4 truth split into two 2x2 predictions: IoU 4/8 = 0.5 each.
    # t < 0.5 (10 points): TP 1, FP 1 (duplicate), P = 1/2, R = 1;
    # t >= 0.5 (10 points): P = R = 0.  AP = (1 - 0) (1/2 + 1/2) / 2 = 1/2.
    gt = boxes((2, 4), (0, 2, 0, 4))
    pred = boxes((2, 4), (0, 2, 0, 2), (0, 2, 2, 4))
    m = paper_metrics(gt, pred)
    assert m["ap"] == approx(0.5)
    assert m["ap50"] == 0.0 and m["mean_iou"] == 0.0
    assert aji_plus(gt, pred) == approx(4 / 12)  # 4 / (8 + 4 unpaired)
    assert panoptic_quality(gt, pred) == 0.0  # IoU 0.5 is not > 0.5
    # COCO: IoU >= t, so at t = 0.50 the first-ranked half is a TP
    # (precision 1 up to recall 1); nothing matches at t >= 0.55.
    assert coco_mask_ap(gt, pred) == approx(0.1)


def test_duplicate_of_touching_particles_gives_ap_zero():
    # Two touching 10x10 truths; prediction 1 is truth 1 plus one pixel of
    # truth 2, prediction 2 is truth 2 less that pixel.  IoUs: 100/101,
    # 99/100 and 1/200 (pred 1 with truth 2).  t = 0: truth 2 is matched
    # twice -> P = 2/3, R = 1; t = 0.05..0.95: P = R = 1.  All recalls are 1,
    # precisions are not all equal: the trapezoid has no width, AP = 0
    # (the quirk METRICS.md warns about).
    gt = boxes((12, 22), (1, 11, 1, 11), (1, 11, 11, 21))
    pred = gt.copy()
    pred[1, 11] = 1
    m = paper_metrics(gt, pred)
    assert m["ap"] == 0.0
    assert m["ap50"] == approx(1.0) and m["ap75"] == approx(1.0)
    assert m["mean_iou"] == approx((100 / 101 + 99 / 100) / 2, 1e-6)
    assert aji_plus(gt, pred) == approx(199 / 201)
    assert panoptic_quality(gt, pred) == approx((100 / 101 + 99 / 100) / 2)
    assert coco_mask_ap(gt, pred) == approx(1.0)


def test_duplicate_and_partial_match_curve():
    # Touching 4x4 truths g1 (cols 0-3), g2 (cols 4-7); p1 = cols 0-4,
    # p2 = cols 5-7.  IoU(g1,p1) = 16/20 = 0.8, IoU(g2,p2) = 12/16 = 0.75,
    # IoU(g2,p1) = 4/32 = 0.125.
    # t = 0, 0.05, 0.10: g2 matched twice -> P 2/3, R 1
    # t = 0.15..0.70:    P 1, R 1
    # t = 0.75:          only g1 -> TP 1, FP 1, FN 1: P 1/2, R 1/2
    # t = 0.80..0.95:    P 0, R 0
    # Monotone precision is 1 from t = 0.95 to 0.15; AP = 0.5*1 + 0.5*1 = 1.
    gt = boxes((4, 8), (0, 4, 0, 4), (0, 4, 4, 8))
    pred = boxes((4, 8), (0, 4, 0, 5), (0, 4, 5, 8))
    m = paper_metrics(gt, pred)
    assert m["ap"] == approx(1.0)
    assert m["ap50"] == approx(1.0)
    assert m["ap75"] == approx(0.5)
    assert m["mean_iou"] == approx((0.8 + 0.75) / 2, 1e-6)
    assert aji_plus(gt, pred) == approx((16 + 12) / (20 + 16))


def test_extra_false_positives_single_point_curve():
    # One truth found exactly plus two false positives: P = 1/3, R = 1 at
    # every threshold -> the single-point case, AP = mean precision = 1/3.
    gt = boxes((8, 8), (0, 2, 0, 2))
    pred = boxes((8, 8), (5, 7, 5, 7), (5, 7, 0, 2), (0, 2, 0, 2))
    m = paper_metrics(gt, pred)
    assert m["ap"] == approx(1 / 3)
    assert m["ap50"] == approx(1 / 3) and m["ap75"] == approx(1 / 3)
    assert m["mean_iou"] == approx(1 / 3)
    assert (m["tp50"], m["fp50"], m["fn50"]) == (1, 2, 0)
    assert aji_plus(gt, pred) == approx(4 / 12)
    assert panoptic_quality(gt, pred) == approx(1 / 2)  # 1 / (1 + 2/2)
    # COCO: equal areas rank by label, the true one last: P = 1/3 at R = 1
    # and (monotone) at every recall.  With scores the true one comes first.
    assert coco_mask_ap(gt, pred) == approx(1 / 3)
    assert coco_mask_ap(gt, pred, scores=[0.2, 0.1, 0.9]) == approx(1.0)
    assert coco_mask_ap(gt, pred, scores=[0.9, 0.8, 0.1]) == approx(1 / 3)


def test_missed_instance():
    # Two 2x2 truths, one predicted exactly: P = 1, R = 1/2 everywhere
    # -> single point, AP = 1.  COCO: precision 1 for recalls 0.00..0.50
    # (51 of 101 points).
    gt = boxes((6, 6), (0, 2, 0, 2), (3, 5, 3, 5))
    pred = boxes((6, 6), (0, 2, 0, 2))
    m = paper_metrics(gt, pred)
    assert m["ap"] == approx(1.0) and m["ap50"] == approx(1.0)
    assert (m["tp50"], m["fp50"], m["fn50"]) == (1, 0, 1)
    assert aji_plus(gt, pred) == approx(4 / 8)
    assert panoptic_quality(gt, pred) == approx(2 / 3)  # 1 / (1 + 1/2)
    assert coco_mask_ap(gt, pred) == approx(51 / 101)


def test_aji_plus_parts_split_the_union():
    # g1 (cols 0-3) is found a column too wide: IoU 16 / 20, outline 4 px.
    # g2 (cols 5-12) is found as a merged particle that also covers g3
    # (cols 14-17) and the gap: IoU 32 / 52, a weak pair at min_iou 0.7,
    # its 20 extra pixels in ``weak_pairs``; g3 is left unpaired (16 px
    # missed); a 2x2 false particle (4 px).  Union 20 + 52 + 16 + 4 = 92.
    gt = boxes((4, 20), (0, 4, 0, 4), (0, 4, 5, 13), (0, 4, 14, 18))
    pred = boxes((4, 20), (0, 4, 0, 5), (0, 4, 5, 18))
    pred[:2, 18:20] = 7
    parts = aji_plus_parts(gt, pred, min_iou=0.7)
    assert tuple(parts) == AJI_PARTS
    want = {"aji_plus": 48, "outline": 4, "weak_pairs": 20, "missed": 16, "false": 4}
    assert parts == {k: approx(v / 92) for k, v in want.items()}
    assert parts["aji_plus"] == approx(aji_plus(gt, pred))
    # at the default min_iou 0.5 the merged particle's pair counts as found
    half = aji_plus_parts(gt, pred)
    assert half["outline"] == approx(24 / 92) and half["weak_pairs"] == 0.0


def test_aji_plus_parts_sum_to_one_and_agree_with_aji_plus():
    rng = np.random.default_rng(3)
    for _ in range(20):
        gt = rng.integers(0, 4, (12, 12)).astype(np.int32)
        pred = rng.integers(0, 5, (12, 12)).astype(np.int32)
        parts = aji_plus_parts(gt, pred)
        assert sum(parts.values()) == approx(1.0)
        assert parts["aji_plus"] == approx(aji_plus(gt, pred))
        assert min(parts.values()) >= 0.0


def test_aji_plus_parts_empty_maps_and_bad_threshold():
    empty, one = np.zeros((3, 3), np.int32), boxes((3, 3), (0, 1, 0, 1))
    assert aji_plus_parts(empty, empty)["aji_plus"] == 1.0
    assert aji_plus_parts(one, empty)["missed"] == 1.0
    assert aji_plus_parts(empty, one)["false"] == 1.0
    assert sum(aji_plus_parts(empty, one).values()) == 1.0
    with pytest.raises(ImageExtractError, match="min_iou"):
        aji_plus_parts(one, one, min_iou=1.0)


def test_coco_max_dets_caps_ranked_predictions():
    # Three exact predictions of three truths, but only the top 2 are scored:
    # recall stops at 2/3 -> precision 1 at recalls 0.00..0.66 (67 points).
    gt = boxes((2, 9), (0, 2, 0, 2), (0, 2, 3, 5), (0, 2, 6, 8))
    assert coco_mask_ap(gt, gt, max_dets=2) == approx(67 / 101)
    assert coco_mask_ap(gt, gt, max_dets=None) == approx(1.0)


def test_bad_inputs_raise_clear_errors():
    a = np.zeros((3, 3), dtype=np.int32)
    with pytest.raises(ImageExtractError, match="shape"):
        paper_metrics(a, np.zeros((3, 4), dtype=np.int32))
    with pytest.raises(ImageExtractError, match="integer"):
        aji_plus(a, a.astype(float))
    with pytest.raises(ImageExtractError, match="scores"):
        coco_mask_ap(boxes((3, 3), (0, 1, 0, 1)), boxes((3, 3), (0, 1, 0, 1)), scores=[1.0, 2.0])


def test_matched_pairs_keeps_only_matches_above_the_threshold():
    # gt 1: 4x4 box; pred 5 covers it shifted by one column: 12 / 20 = 0.6.
    # gt 2: 2x2 box; pred 9 is the same box plus a column: 4 / 6 = 0.667.
    # gt 3 has no prediction; pred 4 covers nothing of the truth.
    gt = boxes((12, 12), (0, 4, 0, 4), (6, 8, 6, 8), (10, 12, 0, 2))
    pred = np.zeros_like(gt)
    pred[0:4, 1:5] = 5
    pred[6:8, 6:9] = 9
    pred[10:12, 8:10] = 4
    m = matched_pairs(gt, pred)
    assert m["gt_id"].tolist() == [1, 2] and m["pred_id"].tolist() == [5, 9]
    assert m["iou"] == approx(np.array([0.6, 4 / 6]))
    assert m["gt_area"].tolist() == [16, 4] and m["pred_area"].tolist() == [16, 6]
    # a stricter threshold drops the first pair; the threshold is strict
    assert matched_pairs(gt, pred, min_iou=0.6)["gt_id"].tolist() == [2]
    empty = matched_pairs(gt, np.zeros_like(gt))
    assert all(v.size == 0 for v in empty.values())
    with pytest.raises(ImageExtractError, match="min_iou"):
        matched_pairs(gt, pred, min_iou=0.3)


# ---------------------------------------------------------------- analysis metrics


def test_histogram_cosine_distance_by_hand():
    # Shared edges [1, 1.5, 2]: counts (2, 1) and (1, 2); cos = 4 / 5.
    assert histogram_cosine_distance([1, 1, 2], [1, 2, 2], bins=2) == approx(0.2)
    assert histogram_cosine_distance([1, 1, 2], [1, 1, 2, 1, 1, 2], bins=2) == approx(0.0)
    assert histogram_cosine_distance([1.0], [9.0], bins=[0, 5, 10]) == 1.0
    assert histogram_cosine_distance([], [], bins=3) == 0.0
    assert histogram_cosine_distance([1.0], [], bins=3) == 1.0


def test_rdf_rmse_and_relative_error():
    assert rdf_rmse([1, 2, 3], [1, 2, 5]) == approx(math.sqrt(4 / 3))
    assert rdf_rmse([1, np.nan], [2, 7]) == approx(1.0)
    with pytest.raises(ImageExtractError, match="same radii"):
        rdf_rmse([1, 2], [1, 2, 3])
    assert relative_error(9.0, 10.0) == approx(0.1)
    assert relative_error(0.0, 0.0) == 0.0
    assert relative_error(1.0, 0.0) == math.inf


def test_size_metrics_by_hand():
    # Truth: a 5x5 square inside and one touching the border (left out).
    # Prediction: a 10x10 square: ECD doubles (sqrt of 4x the area), so the
    # D50 error is 1 and the two one-value size histograms share no bin.
    # Squares have aspect ratio 1: identical aspect histograms.
    gt = boxes((20, 20), (3, 8, 3, 8), (0, 4, 15, 19))
    pred = boxes((20, 20), (5, 15, 5, 15))
    m = size_metrics(gt, pred, bins=2)
    assert (m["n_true"], m["n_pred"]) == (1, 1)
    assert m["d50_true_px"] == approx(math.sqrt(100 / math.pi))
    assert m["d50_relative_error"] == approx(1.0)
    assert m["size_cosine_distance"] == approx(1.0)
    assert m["aspect_cosine_distance"] == approx(0.0)


def test_ecd_and_aspect_of_a_rectangle():
    # Uniform 3x9 rectangle: variances (9^2 - 1)/12 and (3^2 - 1)/12, so the
    # axis ratio is sqrt(80 / 8) = sqrt(10); ECD = sqrt(4 * 27 / pi).
    lab = boxes((7, 13), (2, 5, 2, 11))
    ecd, ar = ecd_and_aspect(lab)
    assert ecd.tolist() == approx([math.sqrt(108 / math.pi)])
    assert ar.tolist() == approx([math.sqrt(10)], 1e-9)
    lab[0, 0] = 2  # a border pixel: left out unless asked
    assert ecd_and_aspect(lab)[0].size == 1
    ecd_all, ar_all = ecd_and_aspect(lab, exclude_border=False)
    assert ecd_all.size == 2 and math.isnan(ar_all[1])
