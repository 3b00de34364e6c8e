"""Working-scale search and scale-normalised training crops of the bpartis
backend (oracle network maps; no trained weights needed)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imageextract.segment.bpartis import inference  # noqa: E402
from imageextract.segment.bpartis.inference import (  # noqa: E402
    median_diameter, resize_labels, segment_image)
from imageextract.segment.bpartis.train import augment_crop, base_scale  # noqa: E402

SCALE = 64.0


def _disc_image(shape, discs):
    """Dark discs on a light background and their label map."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(discs, 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    gray = np.where(truth > 0, 50, 200).astype(np.uint8)
    return np.stack([gray] * 3, -1), truth


def _oracle_maps(min_diameter, max_diameter, calls):
    """A stand-in for the network: perfect maps for dark blobs whose diameter
    lies in the range it was 'trained' on, nothing for the others (as a
    network does with particles far outside its training sizes)."""
    from scipy import ndimage

    def network_maps(net, rgb, *, samples=1, **_):
        calls.append(rgb.shape[:2])
        lab, n = ndimage.label(rgb[..., 0] < 125)
        h, w = lab.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        off = np.zeros((2, h, w), np.float32)
        seed = np.zeros((h, w), np.float32)
        for i, sl in enumerate(ndimage.find_objects(lab), 1):
            m = lab == i
            d = np.sqrt(4 * m.sum() / np.pi)
            if not (min_diameter <= d <= max_diameter):
                continue
            cy, cx = yy[m].mean(), xx[m].mean()
            off[0][m] = (cy - yy[m]) / SCALE
            off[1][m] = (cx - xx[m]) / SCALE
            seed[m] = 0.9
        ls = np.full((2, h, w), 3.0, np.float32)
        return {"offsets": off, "log_s": ls, "seed": seed, "mi": np.zeros((h, w), np.float32)}

    return network_maps


@pytest.mark.parametrize("radius", [60, 18])
def test_working_scale_brings_particles_to_the_trained_size(monkeypatch, radius):
    calls = []
    monkeypatch.setattr(inference, "network_maps", _oracle_maps(20, 110, calls))
    centres = [(100, 100), (100, 300), (300, 120), (310, 320), (200, 500)]
    rgb, truth = _disc_image((420, 640), [(y, x, radius) for y, x in centres])
    res = segment_image(None, rgb, coord_scale=SCALE, target_diameter=48.0, probe_px=512)
    # the final pass ran where the median particle is ~48 px across
    d_native = 2 * radius
    assert res["scale"] * d_native == pytest.approx(48.0, rel=0.3)
    assert res["passes"] == len(calls) >= 2
    # instances come back at full resolution, one per disc, IoU > 0.9
    assert res["labels"].shape == truth.shape and res["labels"].max() == len(centres)
    for i in range(1, len(centres) + 1):
        p = np.bincount(res["labels"][truth == i]).argmax()
        inter = np.sum((truth == i) & (res["labels"] == p))
        union = np.sum((truth == i) | (res["labels"] == p))
        assert inter / union > 0.9
    assert res["scores"].shape == (len(centres),) and res["mi"].shape == truth.shape


def test_fixed_scale_and_native_scale(monkeypatch):
    calls = []
    monkeypatch.setattr(inference, "network_maps", _oracle_maps(5, 500, calls))
    rgb, truth = _disc_image((300, 300), [(150, 150, 40)])
    res = segment_image(None, rgb, coord_scale=SCALE, scale=0.5)
    assert calls == [(150, 150)] and res["scale"] == 0.5 and res["labels"].max() == 1
    calls.clear()
    res = segment_image(None, rgb, coord_scale=SCALE, target_diameter=None)
    assert calls == [(300, 300)] and res["labels"].max() == 1
    with pytest.raises(ValueError, match="scale"):
        segment_image(None, rgb, coord_scale=SCALE, scale=0.0)


def test_large_micrograph_with_small_particles_runs_at_full_resolution(monkeypatch):
    calls = []
    monkeypatch.setattr(inference, "network_maps", _oracle_maps(6, 110, calls))
    rng = np.random.default_rng(3)
    centres = [(int(y), int(x)) for y, x in rng.integers(40, 2008, (30, 2))]
    rgb, truth = _disc_image((2048, 2048), [(y, x, 22) for y, x in centres])
    res = segment_image(None, rgb, coord_scale=SCALE, target_diameter=48.0)
    assert calls[-1][0] >= 2048  # never shrunk: diameter 44 px is already right
    assert res["labels"].shape == (2048, 2048)


def test_resize_labels_keeps_ids():
    lab = np.zeros((10, 10), np.int32)
    lab[2:6, 2:6] = 7
    up = resize_labels(lab, (40, 40))
    assert set(np.unique(up)) == {0, 7} and np.sum(up == 7) == 16 * 16
    assert median_diameter(np.zeros((4, 4), np.int32)) != median_diameter(lab)  # nan


def test_training_crop_is_scale_normalised():
    rng = np.random.default_rng(0)
    rgb, truth = _disc_image((400, 600), [(120, 150, 100), (260, 420, 110)])
    base = base_scale(truth, 48.0)
    assert 48.0 / 220 < base < 48.0 / 200
    img, lab = augment_crop(rng, rgb, truth, 128, base=base, scale_range=(1.0, 1.0))
    assert img.shape == (3, 128, 128) and lab.shape == (128, 128)
    # whole image fits (600 * 0.23 < 128): both particles, padded with background
    assert set(np.unique(lab.numpy())) == {0, 1, 2}
    assert median_diameter(lab.numpy()) == pytest.approx(48.0, rel=0.1)
    assert base_scale(np.zeros((5, 5), np.int32), 48.0) == 1.0
    assert base_scale(truth, None) == 1.0


def _fragmenting_maps(max_diameter, piece, calls):
    """A stand-in network that cuts blobs wider than ``max_diameter`` into
    ``piece``-px squares (as a network does with particles larger than any it
    was trained on) and segments smaller blobs whole."""
    from scipy import ndimage

    def network_maps(net, rgb, *, samples=1, **_):
        calls.append(rgb.shape[:2])
        lab, n = ndimage.label(rgb[..., 0] < 125)
        h, w = lab.shape
        yy, xx = np.mgrid[0:h, 0:w]
        inst = np.zeros((h, w), np.int64)
        for i in range(1, n + 1):
            m = lab == i
            if np.sqrt(4 * m.sum() / np.pi) > max_diameter:
                cells = (yy // piece) * (w // piece + 1) + xx // piece + 1
                inst[m] = i * 100000 + cells[m]
            else:
                inst[m] = i * 100000
        off = np.zeros((2, h, w), np.float32)
        seed = (inst > 0).astype(np.float32) * 0.9
        yf, xf = yy.astype(np.float32), xx.astype(np.float32)
        for v in np.unique(inst[inst > 0]):
            m = inst == v
            off[0][m] = (yf[m].mean() - yf[m]) / SCALE
            off[1][m] = (xf[m].mean() - xf[m]) / SCALE
        return {"offsets": off, "log_s": np.full((2, h, w), 3.0, np.float32), "seed": seed,
                "mi": np.zeros((h, w), np.float32)}

    return network_maps


def test_fragments_are_recognised_and_the_scale_lowered(monkeypatch):
    calls = []
    # particles of 240 px; a first guess 4x too large would see 960-px blobs
    # cut into 48-px pieces that look just right
    monkeypatch.setattr(inference, "network_maps", _fragmenting_maps(100, 48, calls))
    rgb, truth = _disc_image((700, 700), [(200, 200, 120), (480, 470, 120)])
    res = segment_image(None, rgb, coord_scale=SCALE, target_diameter=48.0, scale_limits=(0.05, 4),
                        size_model=None)
    assert res["labels"].max() == 2, res["scale"]
    assert res["scale"] * 240 < 100  # ended where particles are whole


def test_size_model_first_guess(monkeypatch):
    from imageextract.segment.bpartis import size

    calls = []
    monkeypatch.setattr(inference, "network_maps", _oracle_maps(20, 110, calls))
    rgb, truth = _disc_image((600, 600), [(150, 150, 100), (420, 430, 100)])

    class Perfect:  # diameter 200 px at native resolution
        @staticmethod
        def predict(features):
            return np.array([np.log(200 * features[0])])

    monkeypatch.setattr(size, "image_features", lambda net, rgb, scale, device: np.array([scale]))
    res = segment_image(None, rgb, coord_scale=SCALE, target_diameter=48.0, size_model=Perfect())
    assert res["scale"] == pytest.approx(0.24, rel=0.01)
    assert calls[0] == (144, 144)  # the first network pass is already at the right scale
    assert res["labels"].max() == 2


def test_size_model_reads_each_probe(monkeypatch):
    """With probes (0.5, 1), the estimate reads the features at half and at
    the probe scale, side by side, and the model sees both."""
    from imageextract.segment.bpartis import size

    monkeypatch.setattr(inference, "network_maps", _oracle_maps(20, 110, []))
    rgb, _ = _disc_image((600, 600), [(150, 150, 100), (420, 430, 100)])
    seen = []

    class TwoProbes:
        probes = (0.5, 1.0)

        @staticmethod
        def predict(features):
            seen.append(np.array(features))
            return np.array([np.log(200 * features[1])])  # the full-scale view

    monkeypatch.setattr(size, "image_features", lambda net, rgb, scale, device: np.array([scale]))
    res = segment_image(None, rgb, coord_scale=SCALE, target_diameter=48.0, size_model=TwoProbes())
    s0 = 512 / 600  # the probe scale: longest side 512 px
    assert seen[0] == pytest.approx([0.5 * s0, s0])
    assert res["scale"] == pytest.approx(0.24, rel=0.01)


class _Blurry:
    """A size model that cannot read particles smaller than 20 px: it sees
    the true diameter at the probe scale (the stand-in features) but reads
    anything smaller as 20 px, as the real one overestimates tiny particles."""

    @staticmethod
    def predict(features):
        return np.array([np.log(max(features[0], 20.0))])


def test_size_model_zooms_in_on_large_micrographs_of_small_particles(monkeypatch):
    """A 2048 px micrograph of 12 px particles is probed at 512 px, where the
    particles are 3 px: the whole-image reading (20 px there, 80 px native)
    is 7x too large.  The zoom reads windows of the probe's size at larger
    scales, up to native resolution, and gets within the model's limit."""
    from imageextract.segment.bpartis import size

    reads = []

    def features(net, rgb, scale, device):
        reads.append((rgb.shape[:2], scale))
        return np.array([12.0 * scale])  # true diameter at this scale

    monkeypatch.setattr(size, "image_features", features)
    rgb = np.zeros((2048, 1536, 3), np.uint8)
    s0 = 0.25
    off = size.estimate_diameter(None, _Blurry(), rgb, scale=s0, zoom_below=0) / s0
    assert off == pytest.approx(80.0) and len(reads) == 1
    reads.clear()
    on = size.estimate_diameter(None, _Blurry(), rgb, scale=s0) / s0
    assert on == pytest.approx(20.0)  # the model's best: 20 px read at native scale
    assert reads[0] == ((2048, 1536), s0)
    scales = [sc for _, sc in reads[1:]]
    # 20 px at 0.25 -> aim at 48 px: 0.6; 20 px again there -> native (capped)
    assert sorted(set(np.round(scales, 6))) == [0.6, 1.0]
    for shape, sc in reads[1:]:  # windows of the probe's size, inside the image
        assert max(shape) * sc == pytest.approx(512, abs=2)
    assert len([sc for sc in scales if sc == 1.0]) == 4  # a 2 x 2 grid of windows


def test_size_model_does_not_zoom_when_it_can_read_the_particles(monkeypatch):
    from imageextract.segment.bpartis import size

    reads = []

    def features(net, rgb, scale, device):  # 400-px particles
        reads.append(scale)
        return np.array([400 * scale])

    monkeypatch.setattr(size, "image_features", features)
    big = np.zeros((2048, 2048, 3), np.uint8)
    assert size.estimate_diameter(None, _Blurry(), big, scale=0.25) == pytest.approx(100.0)
    small = np.zeros((400, 300, 3), np.uint8)  # shown whole at native scale: nothing to zoom
    monkeypatch.setattr(size, "image_features",
                        lambda net, rgb, scale, device: reads.append(scale) or np.array([5.0]))
    assert size.estimate_diameter(None, _Blurry(), small, scale=1.0) == pytest.approx(20.0)
    # under twice the probe's size (700 px, probe 512): read whole, as before
    mid = np.zeros((700, 500, 3), np.uint8)
    assert size.estimate_diameter(None, _Blurry(), mid, scale=512 / 700) == pytest.approx(20.0)
    assert reads == [0.25, 1.0, 512 / 700]


def test_probe_windows_cover_the_image():
    from imageextract.segment.bpartis.size import probe_windows

    wins = probe_windows((2048, 1536), 512)
    assert len(wins) == 4
    for y0, y1, x0, x1 in wins:
        assert 0 <= y0 < y1 <= 2048 and 0 <= x0 < x1 <= 1536
        assert (y1 - y0, x1 - x0) == (512, 512)
    assert probe_windows((300, 300), 512) == [(0, 300, 0, 300)]  # one, clipped


def test_size_model_probes_survive_save_and_state(tmp_path):
    from imageextract.segment.bpartis.size import SizeModel, pop_from_state, to_state

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    m = SizeModel.fit(x, x[:, 0] * 2.0 + 1.0, alpha=0.1, probes=(0.5, 1.0))
    m.save(tmp_path / "s.npz")
    back = SizeModel.load(tmp_path / "s.npz")
    assert back.probes == (0.5, 1.0)
    np.testing.assert_allclose(back.predict(x[:4]), m.predict(x[:4]))
    st = to_state(m)
    assert pop_from_state(st).probes == (0.5, 1.0) and not st
    # a model saved before probes existed reads as one probe at the working scale
    np.savez(tmp_path / "old.npz", mean=m.mean, std=m.std, coef=m.coef,
             intercept=np.float64(1.0), alpha=np.float64(1.0))
    assert SizeModel.load(tmp_path / "old.npz").probes == (1.0,)
    one = SizeModel(m.mean, m.std, m.coef, 1.0)
    st = to_state(one)
    assert "size_model.probes" not in st  # files of one-probe models are unchanged
    assert pop_from_state(st).probes == (1.0,)


def test_probe_features_concatenates_views():
    import torch

    from imageextract.segment.bpartis.model import BPartISNet, ModelConfig
    from imageextract.segment.bpartis.size import fit_size_model, image_features, probe_features

    torch.manual_seed(0)
    net = BPartISNet(ModelConfig(width=0.25, depth=0.34, dec_channels=(16, 16, 8, 8, 8))).eval()
    rgb = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    one = image_features(net, rgb, scale=1.0)
    both = probe_features(net, rgb, scale=1.0, probes=(0.5, 1.0))
    assert both.shape == (2 * one.size,)
    np.testing.assert_allclose(both[one.size:], one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[:one.size], image_features(net, rgb, scale=0.5),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="probes"):
        fit_size_model(net, [], [], probes=(0.0, 1.0), progress=False)
