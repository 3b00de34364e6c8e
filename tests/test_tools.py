"""tools/pack_emps.py: the smaller EMPS copy for GPU machines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imageextract.data import disc_labels
from imageextract.datasets import load_item
from imageextract.errors import ImageExtractError

pytest.importorskip("torch")  # base_scale lives in the bpartis trainer


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("tools/pack_emps.py")


def _emps(root: Path) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "segmaps").mkdir()
    rng = np.random.default_rng(0)
    items = {"small": disc_labels((200, 240), [(50, 50), (120, 160), (150, 60)], [20] * 3),
             "large": disc_labels((400, 360), [(100, 100), (250, 230)], [60] * 2)}
    for stem, lab in items.items():
        grey = np.where(lab > 0, 60, 190) + rng.integers(0, 20, lab.shape)
        Image.fromarray(np.stack([grey.astype(np.uint8)] * 3, -1)).save(
            root / "images" / f"{stem}.png")
        Image.fromarray(lab.astype(np.uint16)).save(root / "segmaps" / f"{stem}.png")
    (root / "train.csv").write_text("stem\nsmall\nlarge\n")
    (root / "test.csv").write_text("stem\nsmall\n")
    return root


@pytest.mark.parametrize("quality", [95, 0])
def test_pack_keeps_the_resolution_training_uses(tmp_path, quality, tool):
    """Particles 40 px across (base scale 1.2) are kept as they are; 120-px
    ones (base 0.4) are stored at twice their base scale, 0.8; labels stay
    whole and the images load like EMPS ones."""
    data = _emps(tmp_path / "emps")
    out = tmp_path / "pack"
    s = tool.pack_emps(data, out, max_zoom=2.0, target=48.0, jpeg_quality=quality,
                          progress=False)
    assert s["images"] == 2 and s["shrunk"] == 1
    assert s["scales"]["small"] == 1.0
    assert s["scales"]["large"] == pytest.approx(0.8, rel=0.02)
    assert json.loads((out / "pack.json").read_text())["scales"] == s["scales"]
    ext = ".jpg" if quality else ".png"
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"large{ext}", f"small{ext}"]
    rgb, lab = load_item(out, "large")
    assert rgb.shape == (320, 288, 3) and lab.shape == (320, 288)
    assert sorted(np.unique(lab).tolist()) == [0, 1, 2]
    # the particles are where they were, at 0.8 scale
    assert lab[80, 80] == 1 and lab[200, 184] == 2
    assert abs(int(rgb[80, 80, 0]) - 70) < 15 and abs(int(rgb[5, 5, 0]) - 200) < 15
    rgb0, lab0 = load_item(data, "small")
    rgb1, lab1 = load_item(out, "small")
    np.testing.assert_array_equal(lab1, lab0)
    if not quality:
        np.testing.assert_array_equal(rgb1, rgb0)  # lossless
    assert (out / "test.csv").read_text() == (data / "test.csv").read_text()
    with pytest.raises(FileExistsError, match="already holds a pack"):
        tool.pack_emps(data, out, progress=False)


def test_pack_refuses_bad_options_and_data(tmp_path, caplog, tool):
    data = _emps(tmp_path / "emps")
    with pytest.raises(ValueError, match="jpeg_quality"):
        tool.pack_emps(data, tmp_path / "p", jpeg_quality=101, progress=False)
    with pytest.raises(ValueError, match="max_zoom"):
        tool.pack_emps(data, tmp_path / "p", max_zoom=0, progress=False)
    assert tool.main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "q"),
                      "--no-progress"]) == 2
    assert "train.csv not found" in caplog.text


def test_load_item_names_the_missing_file(tmp_path):
    data = _emps(tmp_path / "emps")
    (data / "images" / "small.png").unlink()
    with pytest.raises(ImageExtractError, match=r"small\.png not found.*images/"):
        load_item(data, "small")
