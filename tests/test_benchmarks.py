"""The helpers of ``benchmarks/compare.py`` that summarise results (no
backend or peer is run here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from imageextract.evaluation.harness import write_label_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _disc_and_rods(tmp_path: Path) -> Path:
    (tmp_path / "segmaps").mkdir()
    yy, xx = np.mgrid[:128, :128]
    discs = np.zeros((128, 128), np.int32)
    for k, (cy, cx) in enumerate([(30, 30), (30, 90), (90, 60)], 1):
        discs[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] = k
    rods = np.zeros((128, 128), np.int32)
    rods[10:18, 5:120] = 1     # 8 x 115: aspect ~14
    rods[40:52, 0:90] = 2      # touches the border: still counted
    rods[80:110, 40:70] = 3    # one square among rods
    write_label_png(discs, tmp_path / "segmaps" / "discs.png")
    write_label_png(rods, tmp_path / "segmaps" / "rods.png")
    return tmp_path


def test_shape_groups_split_rods_from_discs(compare, tmp_path):
    data = _disc_and_rods(tmp_path)
    assert compare.shape_groups(data, ["discs", "rods"]) == {
        "discs": "compact", "rods": "elongated"}
    # the threshold is the median aspect ratio of the image's particles
    assert compare.shape_groups(data, ["rods"], threshold=20.0) == {"rods": "compact"}


def test_by_shape_means_each_method_on_its_own_images(compare):
    metrics = dict.fromkeys(compare.METRICS, 0.0)
    ours = {"method": "ours", "status": "ok", "per_image": [
        {"stem": "a", **metrics, "ap50": 1.0}, {"stem": "b", **metrics, "ap50": 0.5},
        {"stem": "c", **metrics, "ap50": 0.0}]}
    peer = {"method": "peer", "status": "ok", "per_image": [{"stem": "a", **metrics}]}
    skipped = {"method": "gone", "status": "skipped", "reason": "no weights"}
    out = compare.by_shape([ours, peer, skipped], {"a": "compact", "b": "compact",
                                                   "c": "elongated"})
    assert out["compact"]["n_images"] == 2
    assert out["compact"]["methods"]["ours"]["mean"]["ap50"] == pytest.approx(0.75)
    assert out["compact"]["methods"]["peer"]["n_images"] == 1
    assert out["elongated"]["methods"] == {"ours": {"n_images": 1, "mean": {
        **metrics, "ap50": 0.0}}}


def test_markdown_has_the_shape_tables(compare, tmp_path):
    metrics = dict.fromkeys(compare.METRICS, 0.5)
    timing = {"wall_seconds_median": 1.0, "wall_seconds_mean": 1.0,
              "cpu_seconds_median": 1.0, "cpu_seconds_mean": 1.0}
    ours = {"method": "ours", "status": "ok", "n_images": 2, "mean": metrics, **timing,
            "per_image": [{"stem": "a", **metrics}, {"stem": "b", **metrics}]}
    report = {"split": "test", "date": "now", "methods": [ours],
              "machine": {"cpu": "x", "cpu_count": 2, "load_average_1_5_15": [0, 0, 0]},
              "by_shape": compare.by_shape([ours], {"a": "compact", "b": "elongated"})}
    compare.write_markdown(report, tmp_path / "c.md")
    text = (tmp_path / "c.md").read_text()
    assert "## By particle shape" in text
    assert "**elongated** (1 image)" in text
    assert text.count("| ours | 1 |") == 2
