"""run_evaluation on a tiny synthetic EMPS-layout folder (no real data)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from PIL import Image

from imageextract.errors import ImageExtractError
from imageextract.evaluation.harness import (
    format_summary,
    read_label_png,
    run_evaluation,
    write_json,
    write_label_png,
)
from imageextract.types import Segmentation

CONTRACT_MEAN = {"ap", "ap50", "ap75", "mean_iou", "aji_plus", "coco_ap", "pq"}
CONTRACT_ROW = {"stem", "ap", "ap50", "ap75", "mean_iou", "aji_plus", "n_true", "n_pred", "seconds"}


@pytest.fixture()
def emps_dir(tmp_path):
    root = tmp_path / "emps"
    (root / "images").mkdir(parents=True)
    (root / "segmaps").mkdir()
    truths = {}
    for i, stem in enumerate(["aa", "bb", "cc"]):
        lab = np.zeros((16, 20), np.int32)
        lab[2:6, 2:6] = 1
        lab[8:14, 10 + i:16 + i] = 300  # a 16-bit label value
        truths[stem] = lab
        write_label_png(lab, root / "segmaps" / f"{stem}.png")
        Image.fromarray((lab > 0).astype(np.uint8) * 200).convert("RGB").save(root / "images" / f"{stem}.png")
    (root / "test.csv").write_text("aa\nbb\ncc\n")
    (root / "train.csv").write_text("")
    return root, truths


def test_predictions_folder_scores_and_contract(emps_dir, tmp_path):
    root, truths = emps_dir
    pred_dir = tmp_path / "preds"
    write_label_png(truths["aa"], pred_dir / "aa.png")  # perfect
    write_label_png(np.zeros((16, 20), np.int32), pred_dir / "bb.png")  # nothing found
    half = truths["cc"].copy()
    half[half == 300] = 0  # one of two found
    write_label_png(half, pred_dir / "cc.png")
    r = run_evaluation(root, predictions=pred_dir, progress=False)
    assert r["backend"] == "predictions:preds" and r["split"] == "test" and r["n_images"] == 3
    assert CONTRACT_MEAN <= set(r["mean"]) and all(CONTRACT_ROW <= set(row) for row in r["per_image"])
    assert [row["stem"] for row in r["per_image"]] == ["aa", "bb", "cc"]
    assert r["seconds_per_image"] == 0.0
    # per image AJI+: 1, 0, 16 / (16 + 36)
    assert r["mean"]["aji_plus"] == pytest.approx((1 + 0 + 16 / 52) / 3)
    assert r["per_image"][2]["n_true"] == 2 and r["per_image"][2]["n_pred"] == 1
    out = write_json(r, tmp_path / "out" / "eval.json")
    assert json.loads(out.read_text())["mean"]["aji_plus"] == pytest.approx(r["mean"]["aji_plus"])
    assert "AJI+" in format_summary(r)


def test_limit_and_missing_prediction(emps_dir, tmp_path):
    root, truths = emps_dir
    pred_dir = tmp_path / "preds"
    write_label_png(truths["aa"], pred_dir / "aa.png")
    assert run_evaluation(root, predictions=pred_dir, limit=1, progress=False)["n_images"] == 1
    with pytest.raises(ImageExtractError, match="bb.png"):
        run_evaluation(root, predictions=pred_dir, progress=False)


def test_exactly_one_source(emps_dir, tmp_path):
    root, _ = emps_dir
    with pytest.raises(ImageExtractError, match="exactly one"):
        run_evaluation(root, progress=False)
    with pytest.raises(ImageExtractError, match="exactly one"):
        run_evaluation(root, backend="classical", predictions=tmp_path, progress=False)


class _Oracle:
    """A fake backend that returns the truth it is handed at construction."""

    name = "oracle"
    weights = "none"

    def __init__(self, truths):
        self.truths = list(truths.values())
        self.calls = 0

    def predict(self, image):
        lab = self.truths[self.calls]
        self.calls += 1
        relabelled = np.zeros_like(lab)
        for k, v in enumerate(np.unique(lab[lab > 0]), start=1):
            relabelled[lab == v] = k
        return Segmentation(relabelled, np.ones(int(relabelled.max())))


def test_backend_is_built_once_and_timed(emps_dir, tmp_path, monkeypatch):
    root, truths = emps_dir
    built = []

    def fake_get_segmenter(name, **options):
        built.append((name, options))
        return _Oracle(truths)

    # the package exports a function named ``segment``: fetch the module itself
    segment_module = importlib.import_module("imageextract.segment")
    monkeypatch.setattr(segment_module, "get_segmenter", fake_get_segmenter)
    r = run_evaluation(root, backend="oracle", backend_options={"x": 1}, progress=False,
                       save_predictions=tmp_path / "saved")
    assert built == [("oracle", {"x": 1})]
    assert r["backend"] == "oracle"
    assert r["mean"]["ap"] == 1.0 and r["mean"]["aji_plus"] == 1.0
    assert all(row["seconds"] >= 0 for row in r["per_image"])
    saved = read_label_png(tmp_path / "saved" / "bb.png")
    assert saved.shape == (16, 20) and saved.max() == 2
