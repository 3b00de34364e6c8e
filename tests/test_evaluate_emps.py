"""The metric implementation reproduces ``shared/data/metrics-check/expected.json``
(computed with the procedure of docs/METRICS.md) on the EMPS test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageextract.evaluation.harness import run_evaluation

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
EMPS = DATA / "emps"
CHECK = DATA / "metrics-check"

pytestmark = [
    pytest.mark.emps,
    pytest.mark.skipif(
        not (EMPS / "test.csv").is_file() or not (CHECK / "expected.json").is_file(),
        reason=f"EMPS data not found in {DATA.resolve()} (needs emps/ and metrics-check/)",
    ),
]

KEYS = ("ap", "ap50", "ap75", "mean_iou", "aji_plus")


def test_metrics_check_reproduces_expected_values():
    expected = json.loads((CHECK / "expected.json").read_text())
    result = run_evaluation(EMPS, split="test", predictions=CHECK, progress=False)

    assert result["backend"] == "predictions:metrics-check"
    assert result["split"] == "test"
    assert result["n_images"] == len(expected["per_image"]) == 99
    assert result["seconds_per_image"] == 0.0
    for key in ("ap", "ap50", "ap75", "mean_iou", "aji_plus", "coco_ap", "pq"):
        assert key in result["mean"]
    for key in KEYS + ("tp50", "fp50", "fn50", "n_pred"):
        assert result["mean"][key] == pytest.approx(expected["mean"][key], abs=1e-3), key
    assert result["mean"]["n_true"] == pytest.approx(expected["mean"]["n_gt"], abs=1e-9)

    ours = {row["stem"]: row for row in result["per_image"]}
    bad = []
    for row in expected["per_image"]:
        got = ours[row["stem"]]
        assert got["n_true"] == row["n_gt"] and got["n_pred"] == row["n_pred"], row["stem"]
        for key in KEYS:
            if abs(got[key] - row[key]) > 1e-3:
                bad.append((row["stem"], key, got[key], row[key]))
    assert not bad, bad
