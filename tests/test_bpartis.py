"""Tests of the bpartis backend with tiny random-weight models (no trained
weights needed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imageextract.errors import ImageExtractError, WeightsError  # noqa: E402
from imageextract.segment.bpartis import BPartIS  # noqa: E402
from imageextract.segment.bpartis.cluster import cluster, mutual_information  # noqa: E402
from imageextract.segment.bpartis.inference import stitch, tile_starts  # noqa: E402
from imageextract.segment.bpartis.loss import (  # noqa: E402
    instance_loss,
    lovasz_hinge,
    prepare_targets,
    repel_loss,
    turn_consistency,
    turn_pairs,
)
from imageextract.types import Segmentation  # noqa: E402

TINY = {"width": 0.25, "depth": 0.34, "dec_channels": [16, 16, 8, 8, 8], "freeze": 0}
SCALE = 64.0  # pixels per embedding unit in the hand-made maps


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_backend(**kw) -> BPartIS:
    torch.manual_seed(0)
    return BPartIS.from_config({"model": TINY, "inference": {"tile_px": 64, "overlap_px": 16}}, **kw)


@pytest.mark.parametrize("shape,dtype", [((64, 64), np.uint8), ((50, 77), np.uint16),
                                         ((45, 70, 3), np.uint8), ((33, 40), np.float64)])
def test_predict_contract(shape, dtype):
    rng = np.random.default_rng(0)
    img = (rng.random(shape) * (255 if dtype != np.float64 else 1)).astype(dtype)
    img.setflags(write=False)  # as PIL's np.asarray gives
    seg = tiny_backend(mc_samples=2).predict(img)
    assert isinstance(seg, Segmentation)
    assert seg.labels.shape == shape[:2] and seg.labels.dtype == np.int32
    k = int(seg.labels.max())
    assert seg.scores.shape == (k,) and seg.uncertainty.shape == (k,)
    assert seg.pixel_uncertainty.shape == shape[:2]
    assert np.all(seg.pixel_uncertainty >= 0) and np.all(seg.pixel_uncertainty <= math.log(2) + 1e-6)
    assert seg.backend == "bpartis"
    if k:
        assert set(np.unique(seg.labels)) == set(range(k + 1))


def test_predict_deterministic_without_mc():
    b = tiny_backend(mc_samples=1)
    img = np.random.default_rng(1).integers(0, 255, (64, 96), dtype=np.uint8)
    s1, s2 = b.predict(img), b.predict(img)
    np.testing.assert_array_equal(s1.labels, s2.labels)
    assert np.all(s1.pixel_uncertainty == 0)


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEEXTRACT_MODELS", str(tmp_path))
    with pytest.raises(WeightsError, match="imageextract train bpartis"):
        BPartIS()


def _disc_maps(shape, discs, *, log_s=4.0, seed_peak=0.95):
    """Offsets pointing at each disc's centre, constant sigma, seeds high inside."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    off = np.zeros((2, h, w), np.float32)
    seed = np.zeros((h, w), np.float32)
    truth = np.zeros((h, w), np.int32)
    for i, (cy, cx, r) in enumerate(discs, 1):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        off[0][inside] = (cy - yy[inside]) / SCALE
        off[1][inside] = (cx - xx[inside]) / SCALE
        seed[inside] = seed_peak * (1 - 0.3 * np.sqrt((yy[inside] - cy) ** 2
                                                       + (xx[inside] - cx) ** 2) / r)
        truth[inside] = i
    ls = np.full((2, h, w), log_s, np.float32)
    return off, ls, seed, truth


def test_cluster_two_blobs():
    off, ls, seed, truth = _disc_maps((60, 80), [(20, 20, 10), (35, 55, 12)])
    labels, scores = cluster(off, ls, seed, coord_scale=SCALE, min_size=5)
    assert labels.max() == 2 and scores.shape == (2,)
    for t in (1, 2):
        vals = np.unique(labels[truth == t])
        assert vals.size == 1 and vals[0] > 0
    assert np.all(labels[truth == 0] == 0)
    assert np.all((scores > 0.5) & (scores <= 1))


def _cluster_reference(offsets, log_s, seed, *, coord_scale, min_size=10):
    """The greedy clustering written plainly, one candidate pixel at a time
    (no window, no skipping): what :func:`cluster` must reproduce."""
    h, w = seed.shape
    fg = seed > 0.5
    ey = offsets[0] + np.arange(h)[:, None] / coord_scale
    ex = offsets[1] + np.arange(w)[None, :] / coord_scale
    cand = np.flatnonzero(fg)
    cand = cand[np.argsort(-seed.ravel()[cand], kind="stable")]
    labels = np.zeros((h, w), np.int32)
    claimed = ~fg
    k = 0
    for flat in cand:
        cy, cx = divmod(int(flat), w)
        if claimed[cy, cx]:
            continue
        sy, sx = np.exp(log_s[0, cy, cx]), np.exp(log_s[1, cy, cx])
        d = (ey - ey[cy, cx]) ** 2 * sy + (ex - ex[cy, cx]) ** 2 * sx
        prop = (d < math.log(2.0)) & fg
        free = prop & ~claimed
        claimed[cy, cx] = True
        if prop.any() and free.sum() >= min_size and free.sum() >= 0.5 * prop.sum():
            k += 1
            labels[free] = k
        claimed |= prop
    return labels


def test_cluster_matches_the_plain_greedy_algorithm():
    # noisy embeddings of touching discs: many candidate pixels are claimed
    # early and skipped, and some proposals are rejected
    rng = np.random.default_rng(3)
    off, ls, seed, _ = _disc_maps((90, 110), [(20, 20, 10), (30, 40, 12), (60, 70, 15),
                                              (70, 25, 8), (45, 95, 9)])
    off = off + rng.normal(0, 0.02, off.shape).astype(np.float32)
    seed = np.clip(seed + rng.normal(0, 0.1, seed.shape), 0, 1).astype(np.float32)
    ls = ls + rng.normal(0, 0.3, ls.shape).astype(np.float32)
    ref = _cluster_reference(off, ls, seed, coord_scale=SCALE, min_size=5)
    assert ref.max() >= 5
    for engine in ("numpy", "auto"):  # auto: compiled where numba is installed
        labels, scores = cluster(off, ls, seed, coord_scale=SCALE, min_size=5, engine=engine)
        np.testing.assert_array_equal(labels, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cluster_engines_give_the_same_labels_and_scores(dtype):
    # the compiled loop (numba) and the NumPy one must agree pixel for pixel,
    # on noisy touching discs of several sizes, also from float16 maps (the
    # kept MC samples), with max_instances cutting the loop short
    pytest.importorskip("numba")
    rng = np.random.default_rng(7)
    discs = [(20, 20, 10), (30, 40, 12), (60, 70, 15), (70, 25, 8), (45, 95, 9), (85, 100, 20),
             (10, 80, 5), (100, 30, 14)]
    off, ls, seed, _ = _disc_maps((120, 130), discs)
    off = (off + rng.normal(0, 0.02, off.shape)).astype(dtype)
    seed = np.clip(seed + rng.normal(0, 0.1, seed.shape), 0, 1).astype(dtype)
    ls = (ls + rng.normal(0, 0.5, ls.shape)).astype(dtype)
    for kw in ({}, {"min_size": 3, "fg_threshold": 0.3}, {"max_instances": 4},
               {"min_unclaimed": 0.9, "window_factor": 1.0, "window_margin": 2}):
        a = cluster(off, ls, seed, coord_scale=SCALE, engine="numpy", **kw)
        b = cluster(off, ls, seed, coord_scale=SCALE, engine="compiled", **kw)
        assert a[0].max() >= 4
        np.testing.assert_array_equal(b[0], a[0])
        np.testing.assert_array_equal(b[1], a[1])
        c = cluster(off, ls, seed, coord_scale=SCALE, with_scores=False, **kw)
        np.testing.assert_array_equal(c[0], a[0])
        assert c[1].size == 0
    with pytest.raises(ValueError, match="engine"):
        cluster(off, ls, seed, coord_scale=SCALE, engine="fortran")


@pytest.mark.parametrize("channels_last", [True, False])
def test_same_padding_matches_tensorflows_with_the_input_layout(channels_last):
    """The encoder's stride-2 'SAME' padding: zeros at the top/left and one
    more at the bottom/right, the tensor's memory layout kept (channels_last
    inputs take a path that zeroes only the border)."""
    import math

    import torch.nn.functional as F

    from imageextract.segment.bpartis.model import _same_pad

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for shape, k in (((2, 8, 33, 46), 3), ((1, 5, 16, 16), 5), ((1, 4, 7, 1), 3)):
        x = torch.randn(shape).contiguous(memory_format=fmt)
        h, w = shape[-2:]
        ph = max((math.ceil(h / 2) - 1) * 2 + k - h, 0)
        pw = max((math.ceil(w / 2) - 1) * 2 + k - w, 0)
        want = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        got = _same_pad(x, k, 2)
        assert got.shape == want.shape and torch.equal(got, want)
        assert got.is_contiguous(memory_format=fmt)
    x = torch.randn(1, 3, 9, 9).contiguous(memory_format=fmt)
    assert _same_pad(x, 1, 2) is x  # nothing to pad


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cluster_candidate_order_is_the_stable_descending_one(dtype):
    from imageextract.segment.bpartis.cluster import _descending

    rng = np.random.default_rng(1)
    v = (rng.integers(0, 50, 5000) / 49).astype(dtype)  # many ties
    v[:3] = [0.0, -0.0, 1.0]
    np.testing.assert_array_equal(_descending(v), np.argsort(-v, kind="stable"))
    w = v - dtype(0.5)  # negative values take the plain stable sort
    np.testing.assert_array_equal(_descending(w), np.argsort(-w, kind="stable"))
    assert _descending(np.zeros(0, dtype)).size == 0


def test_cluster_empty():
    z = np.zeros((2, 16, 16), np.float32)
    labels, scores = cluster(z, z, np.zeros((16, 16), np.float32), coord_scale=SCALE)
    assert labels.max() == 0 and scores.shape == (0,)


def test_mutual_information_units_nats():
    same = np.full((8, 5), 0.3)
    np.testing.assert_allclose(mutual_information(same), 0.0, atol=1e-9)
    half = np.concatenate([np.zeros((4, 3)), np.ones((4, 3))])
    np.testing.assert_allclose(mutual_information(half), math.log(2), rtol=1e-6)


def test_tiling_keeps_particle_on_a_seam_whole():
    shape, tile, overlap = (150, 170), 64, 16
    off, ls, seed, truth = _disc_maps(shape, [(75, 58, 14), (30, 120, 9)])
    full = np.concatenate([off, ls, seed[None]], 0)
    ys, xs = tile_starts(shape[0], tile, overlap), tile_starts(shape[1], tile, overlap)
    assert len(xs) > 2
    # a disc crossing a tile border, as each tile would report it
    tiles = {(i, j): full[:, y0:y0 + tile, x0:x0 + tile].copy()
             for i, y0 in enumerate(ys) for j, x0 in enumerate(xs)}
    st = stitch(tiles, ys, xs, tile, shape)
    np.testing.assert_array_equal(st, full)
    labels, _ = cluster(st[0:2], st[2:4], st[4], coord_scale=SCALE, min_size=5)
    assert labels.max() == 2
    assert np.unique(labels[truth == 1]).size == 1


def test_lovasz_and_loss():
    lab = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert float(lovasz_hinge(torch.tensor([[5.0, 5.0, -5.0, -5.0]]), lab)[0]) == 0.0
    assert float(lovasz_hinge(torch.tensor([[-1.0, -1.0, 1.0, 1.0]]), lab)[0]) > 0.0
    off, ls, seed, truth = _disc_maps((32, 32), [(10, 10, 6), (22, 20, 7)], log_s=3.0)
    o = torch.tensor(off)[None].requires_grad_(True)
    loss, parts = instance_loss(o, torch.tensor(ls)[None], torch.tensor(seed)[None, None],
                                torch.tensor(truth)[None].long(), coord_scale=SCALE)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and set(parts) == {"inst", "var", "seed"}
    assert o.grad is not None



def test_sigma_smoothness_penalises_the_raw_head_output():
    """With ``var_scale`` = the model's sigma_scale the smoothness term is the
    variance of the raw sigma output (SpatialEmbeddings, BPartIS): 1/scale^2
    of the variance of log_s, and its gradient leaves the sigma head room."""
    off, ls, seed, truth = _disc_maps((32, 32), [(10, 10, 6), (22, 20, 7)], log_s=3.0)
    rng = np.random.default_rng(0)
    ls = ls + rng.normal(0, 0.5, ls.shape).astype(np.float32)  # uneven sigma inside
    args = (torch.tensor(off)[None], torch.tensor(ls)[None], torch.tensor(seed)[None, None],
            torch.tensor(truth)[None].long())
    _, raw = instance_loss(*args, coord_scale=SCALE, var_scale=10.0)
    _, old = instance_loss(*args, coord_scale=SCALE)
    assert old["var"] > 0.1
    assert raw["var"] == pytest.approx(old["var"] / 100.0, rel=1e-5)
    assert raw["inst"] == pytest.approx(old["inst"]) and raw["seed"] == pytest.approx(old["seed"])


def test_repel_term_narrows_the_bandwidth_of_instances_with_a_neighbour_in_reach():
    """Two discs 12 px apart (radius 5) with sigma 10 px: each one's phi at the
    other's centroid is exp(-0.70) = 0.495, above the 0.3 allowed, so the
    term costs and its gradient raises log_s (a narrower sigma); discs far
    apart cost nothing, and without ``w_repel`` the loss is as before."""
    off, ls, seed, truth = _disc_maps((32, 40), [(16, 12, 5), (16, 24, 5)], log_s=3.0)
    lt = torch.tensor(ls)[None].requires_grad_(True)
    args = (torch.tensor(off)[None], lt, torch.tensor(seed)[None, None],
            torch.tensor(truth)[None].long())
    base, parts0 = instance_loss(*args, coord_scale=SCALE)
    loss, parts = instance_loss(*args, coord_scale=SCALE, w_repel=2.0)
    assert "repel" not in parts0 and parts["repel"] == pytest.approx(0.495 - 0.3, abs=2e-3)
    assert float((loss - base).detach()) == pytest.approx(2.0 * parts["repel"], rel=1e-5)
    lt.grad = None
    (2.0 * repel_loss(torch.tensor([[16.0, 12.0], [16.0, 24.0]]) / SCALE,
                      torch.exp(lt[0, :, 16, [12, 24]].T))).backward()
    assert float(lt.grad[0, 1, 16, 12]) < 0 and float(lt.grad[0, 0, 16, 12]) == 0.0
    far = _disc_maps((32, 80), [(16, 12, 5), (16, 64, 5)], log_s=3.0)
    _, parts = instance_loss(*(torch.tensor(a)[None] for a in far[:2]),
                             torch.tensor(far[2])[None, None], torch.tensor(far[3])[None].long(),
                             coord_scale=SCALE, w_repel=2.0)
    assert parts["repel"] == 0.0
    assert float(repel_loss(torch.zeros(1, 2), torch.ones(1, 2))) == 0.0


def test_prepared_targets_give_the_same_loss():
    """Targets made ahead (in a data worker) equal the loss's own bookkeeping,
    also for non-consecutive ids and a small chunk bound (several Lovasz calls)."""
    off, ls, seed, truth = _disc_maps((40, 40), [(10, 10, 6), (25, 28, 8), (30, 8, 4)])
    truth = np.where(truth > 0, truth * 1000 + 7, 0)  # ids 1007, 2007, 3007
    labels = torch.tensor(truth)[None].long()
    args = (torch.tensor(off)[None], torch.tensor(ls)[None], torch.tensor(seed)[None, None])
    ref, _ = instance_loss(*args, labels, coord_scale=SCALE, chunk_elems=500)
    tg = prepare_targets(truth, chunk_elems=500)
    assert tg["k"] == 3 and len(tg["chunks"]) >= 2
    assert sorted(torch.unique(tg["lab_k"]).tolist()) == [-1, 0, 1, 2]
    got, _ = instance_loss(*args, None, coord_scale=SCALE, targets=[tg])
    assert torch.allclose(ref, got)
    empty = prepare_targets(np.zeros((8, 8), np.int32))
    assert empty["k"] == 0 and empty["chunks"] == []
    with pytest.raises(ValueError, match="labels or targets"):
        instance_loss(*args, None, coord_scale=SCALE)


def test_turn_consistency_is_zero_for_a_network_that_ignores_orientation():
    """Maps that turn with the image (offsets at each disc's centre, sigma
    4 along y and 2 along x, swapped in the turned copy) agree exactly; an x
    channel that does not follow costs, and only the x channels get gradients."""
    n, discs = 40, [(10, 12, 6), (26, 27, 8), (31, 8, 4)]
    off, _, _, truth = _disc_maps((n, n), discs)
    off_j, _, _, truth_j = _disc_maps((n, n), [(n - 1 - cx, cy, r) for cy, cx, r in discs])
    imgs, labs = turn_pairs(torch.rand(1, 3, n, n), torch.tensor(truth)[None].long())
    assert torch.equal(labs[1], torch.tensor(truth_j).long())
    assert torch.equal(imgs[1, :, 0, :], imgs[0, :, :, -1])  # numpy's quarter turn
    ls = np.stack([np.full((n, n), 4.0), np.full((n, n), 2.0)]).astype(np.float32)
    offsets = torch.tensor(np.stack([off, off_j]), requires_grad=True)
    log_s = torch.tensor(np.stack([ls, ls[::-1].copy()]), requires_grad=True)
    fg = labs > 0
    l_off, l_sig = turn_consistency(offsets, log_s, fg, coord_scale=SCALE)
    assert float(l_off.detach()) < 1e-4 and float(l_sig.detach()) < 1e-9
    # the unturned image's x sigma as loose as its y: 2 px^2 per pixel in log units
    l_off, l_sig = turn_consistency(offsets, torch.tensor(np.stack([ls[[0, 0]], ls[::-1]])),
                                    fg, coord_scale=SCALE)
    assert float(l_sig.detach()) == pytest.approx(2.0)
    # x offsets of the turned copy off by 3 px: 2.5 px smooth L1 on half the pixels
    bad = offsets.detach().clone()
    bad[1, 1] += 3.0 / SCALE
    bad.requires_grad_(True)
    l_off, _ = turn_consistency(bad, log_s, fg, coord_scale=SCALE)
    share = float(fg[1].sum()) / float(fg.sum())
    assert float(l_off.detach()) == pytest.approx(2.5 * share, rel=1e-4)
    l_off.backward()
    assert bad.grad[:, 0].abs().sum() == 0 and bad.grad[1, 1].abs().sum() > 0
    with pytest.raises(ValueError, match="pairs of square crops"):
        turn_consistency(offsets[:1], log_s[:1], fg[:1], coord_scale=SCALE)


def test_shading_augmentations():
    from imageextract.segment.bpartis.train import illumination_field, shade_particles

    lab = torch.zeros(30, 30, dtype=torch.int64)
    lab[5:15, 5:15] = 4
    lab[18:28, 12:26] = 9
    img = torch.full((3, 30, 30), 0.8)
    out = shade_particles(img, lab, angle=0.0, strength=0.6)  # darker towards +x
    assert torch.equal(out[:, lab == 0], img[:, lab == 0])
    assert float(out[0, 10, 14]) < float(out[0, 10, 11]) < 0.79  # right side of particle 4
    assert float(out[0, 10, 5]) == pytest.approx(0.8)  # left side untouched
    assert float(out.min()) >= 0.8 * (1 - 0.6) - 1e-6
    field = illumination_field(np.random.default_rng(3), 64)
    assert field.shape == (64, 64) and 0.4 <= float(field.min()) <= float(field.max()) <= 1.6
    # smooth: neighbouring pixels differ by far less than the field's range
    assert float((field[:, 1:] - field[:, :-1]).abs().max()) < 0.05


def test_turned_crops():
    """A crop turned by a random angle: image and labels turned together
    (a bar stays one bar, at that angle), nothing of the canvas outside the
    window shows, and the turn draws random numbers only when asked for, so
    older recipes keep their batches."""
    import math

    from imageextract.segment.bpartis.train import augment_crop, rotate_crop

    # a horizontal bar 41 x 5 px: turned by 30 degrees its pixels lie along that angle
    lab = torch.zeros(61, 61, dtype=torch.int64)
    lab[28:33, 10:51] = 7
    img = (lab > 0).float()[None].expand(3, -1, -1) * 0.8 + 0.1
    out, tl = rotate_crop(img, lab, math.radians(30.0), 45)
    assert out.shape == (3, 45, 45) and tl.dtype == torch.int64
    assert set(tl.unique().tolist()) == {0, 7}
    assert abs(int((tl > 0).sum()) - 205) <= 20  # area kept (41 x 5)
    ys, xs = np.nonzero(tl.numpy())
    angle = math.degrees(math.atan2(-np.polyfit(xs, ys, 1)[0], 1.0))  # y points down
    assert abs(abs(angle) - 30.0) < 3.0
    # image and labels turned alike: bright where labelled
    assert float(out[0][tl > 0].mean()) > 0.8 and float(out[0][tl == 0].mean()) < 0.2
    # a large image, turned crops: labels stay ids of the image, no fill at the corners
    rng = np.random.default_rng(0)
    big = np.zeros((200, 200), np.int32)
    big[20:180, 20:180] = np.arange(1, 161)[None, :] // 20 + 1  # stripes 1..9
    rgb = np.full((200, 200, 3), 128, np.uint8)
    for k in range(5):
        im, lb = augment_crop(rng, rgb, big, 64, p_rotate=1.0, p_invert=0.0, p_shade=0.5,
                              p_illumination=0.5)
        assert im.shape == (3, 64, 64) and lb.shape == (64, 64)
        assert set(lb.unique().tolist()) <= set(range(10))
    # p_rotate 0 leaves the random stream as it was
    a = augment_crop(np.random.default_rng(5), rgb, big, 64)
    b = augment_crop(np.random.default_rng(5), rgb, big, 64, p_rotate=0.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = augment_crop(np.random.default_rng(5), rgb, big, 64, p_rotate=1.0)
    assert not torch.equal(a[1], c[1])


def test_pasted_rods():
    """Rods of the paste bank land on the crop at the crop's scale: each
    takes a new id over what it covers, keeps its area (times the zoom
    squared) where it falls whole, and brings its own grey; pasting draws
    random numbers only when asked for."""
    from scipy import ndimage

    from imageextract.segment.bpartis.train import augment_crop, paste_bank, paste_rods

    lab = np.zeros((60, 80), np.int32)
    lab[10:16, 10:50] = 1  # 6 x 40 rods
    lab[30:36, 20:60] = 2
    lab[45:52, 60:67] = 3  # a square: not a rod
    rgb = np.full((60, 80, 3), 200, np.uint8)
    rgb[lab > 0] = 40
    bank = paste_bank([("r", rgb, lab)], [0.5])
    assert [int(m.sum()) for _, m, _ in bank] == [240, 240]
    # the caller's own finding of the rod images is used when given
    same = paste_bank([("r", rgb, lab)], [0.5], rods=np.array([True]))
    assert all((p == q).all() and (m == n).all() for (p, m, _), (q, n, _) in zip(same, bank))
    assert paste_bank([("r", rgb, lab)], [0.5], rods=np.array([False])) == ()
    img = torch.full((3, 64, 64), 0.9)
    under = torch.zeros(64, 64, dtype=torch.int64)
    under[20:44, 20:44] = 5  # a particle the rods may cover
    rng = np.random.default_rng(3)
    areas = []
    for _ in range(20):
        out, lb = paste_rods(rng, img, under, bank, zoom=2.0, count=(1, 1))
        assert out.shape == img.shape and lb.dtype == torch.int64
        assert set(lb.unique().tolist()) <= {0, 5, 6}
        new = lb == 6
        if new.any():
            assert float(out[0][new].mean()) < 0.25  # the rod's own grey (40 / 255)
            assert bool((under[new] == 5).any() or (under[new] == 0).all())
            ys, xs = np.nonzero(new.numpy())
            if ys.min() > 0 and xs.min() > 0 and ys.max() < 63 and xs.max() < 63:
                areas.append(int(new.sum()))
        # elsewhere nothing changes but the one-pixel blend of its outline
        far = torch.from_numpy(~ndimage.binary_dilation(new.numpy(), iterations=2))
        assert torch.equal(lb[~new], under[~new]) and torch.equal(out[:, far], img[:, far])
    assert areas and all(abs(a - 240) <= 30 for a in areas)  # 240 px x 0.5^2 x 2^2
    out, lb = paste_rods(np.random.default_rng(0), img, under, bank, count=(4, 4))
    assert int(lb.max()) <= 9 and len(lb.unique()) >= 3  # several rods, ids 6..9
    # p_paste 0 (or no bank) leaves the random stream as it was
    a = augment_crop(np.random.default_rng(5), rgb, lab, 48)
    b = augment_crop(np.random.default_rng(5), rgb, lab, 48, p_paste=0.0, paste_bank=bank)
    c = augment_crop(np.random.default_rng(5), rgb, lab, 48, p_paste=1.0, paste_bank=())
    assert all(torch.equal(x, y) for x, y in zip(a + b, b + c))
    d = augment_crop(np.random.default_rng(5), rgb, lab, 48, p_paste=1.0, paste_bank=bank)
    assert int(d[1].max()) > 3  # new ids


def test_stretched_crops():
    """A stretched crop keeps a particle's area (its equivalent diameter,
    the scale convention) and changes its aspect ratio by at most
    ``max_stretch``, both ways; it draws random numbers only when asked."""
    from imageextract.segment.bpartis.train import augment_crop

    lab = np.zeros((200, 200), np.int32)
    lab[90:110, 60:140] = 1  # a 20 x 80 rod: aspect 4
    rgb = np.where(lab > 0, 60, 200).astype(np.uint8)[..., None].repeat(3, -1)
    rng = np.random.default_rng(0)
    aspects = []
    for _ in range(40):
        im, lb = augment_crop(rng, rgb, lab, 256, scale_range=(1.0, 1.0), p_stretch=1.0,
                              max_stretch=2.0, p_invert=0.0)
        ys, xs = np.nonzero(lb.numpy())
        assert abs(ys.size - 1600) <= 0.12 * 1600  # area kept
        aspects.append(max(np.ptp(ys) + 1, np.ptp(xs) + 1) / min(np.ptp(ys) + 1, np.ptp(xs) + 1))
    assert min(aspects) >= 2.0 * 0.9 and max(aspects) <= 8.0 * 1.1
    assert max(aspects) > 6.0 and min(aspects) < 3.0  # longer and stubbier rods
    a = augment_crop(np.random.default_rng(5), rgb, lab, 64)
    b = augment_crop(np.random.default_rng(5), rgb, lab, 64, p_stretch=0.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _tiny_emps(root, n=6):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "segmaps").mkdir()
    rng = np.random.default_rng(0)
    stems = []
    for i in range(n):
        _, _, _, truth = _disc_maps((48, 56), [(rng.integers(10, 38), rng.integers(10, 46), 7)])
        img = np.where(truth > 0, 60, 200).astype(np.uint8)
        stem = f"img{i}"
        Image.fromarray(np.stack([img] * 3, -1)).save(root / "images" / f"{stem}.png")
        Image.fromarray(truth.astype(np.uint16)).save(root / "segmaps" / f"{stem}.png")
        stems.append(stem)
    (root / "train.csv").write_text("\n".join(stems) + "\n")
    (root / "test.csv").write_text(stems[0] + "\n")
    return root


def test_exact_resume(tmp_path):
    from imageextract.segment.bpartis.train import train

    data = _tiny_emps(tmp_path / "emps")
    opts = dict(epochs=10, crop=32, batch_size=2, val_every=1000, progress=False,
                device="cpu", model_config=TINY, pretrained=False, threads=None,
                export_at_end=False)
    train(data, tmp_path / "a", max_steps=2, **opts)
    train(data, tmp_path / "a", resume=True, max_steps=3, **opts)
    train(data, tmp_path / "b", max_steps=3, **opts)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 3
    # new recipes smooth the raw sigma output, as the paper does
    assert a["recipe"]["loss"]["var_scale"] == TINY.get("sigma_scale", 10.0)
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    log = (tmp_path / "a" / "train.log").read_text().splitlines()
    assert any("training:" in line for line in log)
    assert len(set(log)) == len(log)  # each line once (timestamps differ between lines)
    # export -> a self-contained model folder that the backend loads and verifies
    from imageextract.segment.bpartis.train import export

    def card_of(**inference) -> str:
        """Export with these inference settings; the MODEL_CARD.md it writes."""
        export(tmp_path / "a", inference=inference)
        return (tmp_path / "a" / "MODEL_CARD.md").read_text()

    card = card_of(mc_samples=2, uncertainty_threshold=0.5)
    seg = BPartIS(model=str(tmp_path / "a")).predict(np.zeros((40, 40), np.uint8))
    assert seg.weights.startswith("bpartis:emps-v1@sha256:")
    assert card.count("sha256") >= 1 and "then also at" not in card
    # the card names the extra working scales and the merge when the config has them
    card = card_of(mc_samples=2, uncertainty_threshold=0.5, scale_factors=[0.8, 1, 1.25],
                   scale_merge={"min_score": 0.95, "max_overlap": 0.05})
    assert "then also at 0.8, 1.25 x that scale" in card and "already that sure" not in card
    assert ("(1 - uncertainty)), unless the particles at that scale are already that sure "
            "(at least 0.97)") in card_of(mc_samples=2, scale_factors=[0.8, 1, 1.25],
                                          sure_confidence=0.97)
    assert ("(mean score x (1 - uncertainty), plus 0.3 x the share of the network's "
            "foreground they cover)") in card_of(mc_samples=2, scale_factors=[0.8, 1, 1.25],
                                                 scale_coverage=0.3)
    assert "(score >= 0.95, at most 5% of their pixels already taken)" in card
    assert "outline refiner" not in card
    # sparse factors alone (their passes are merged too)
    card = card_of(mc_samples=2, uncertainty_threshold=0.5, scale_factors=[1],
                   sparse_scale_factors={"factors": [0.64], "max_particles": 20},
                   scale_merge={"min_score": 0.95, "max_overlap": 0.05})
    assert "then also at" not in card
    assert "keeps at most 20 particles, also at 0.64 x, and adding the particles" in card
    assert "specialist" not in card and "long rod" not in card
    card = card_of(mc_samples=2, join_fragments={"max_angle": 10})
    assert ("lying end to end along the more elongated one's axis (elongation at least 2, "
            "within 10°) and touching across at least 0.5 of its width, when the joined "
            "particle is at most 1.3 x as wide, at least 1.2 x "
            "as elongated as either and at least 6 in all") in card
    assert "made whole" not in card
    card = card_of(mc_samples=2, whole_rods={"min_waist": 0.5})
    assert ("is made whole from the network's foreground (seed above 0.5): a band of it at "
            "least 6 x as long as wide, nowhere in its middle narrower than 0.5 x its median "
            "width, whose particles are all pieces of it (as wide within 1.3 x, on its axis, "
            "along it within 15°), becomes one particle") in card
    assert "scale bar" not in card
    card = card_of(mc_samples=2, drop_scale_bars={})
    assert ("- a particle lying on a scale bar drawn on the image (at least 0.5 of its pixels "
            "in the bar's box; a bar found without OCR and counted as drawn when at least 0.5 "
            "of its pixels are flat) is dropped") in card
    assert "too large" not in card
    assert ("- a last look for particles too large for the working scale: the image is "
            "segmented again, the same way, at 0.5 x the scale used, and its particles that "
            "score at least 0.99 and are at least 2 x the median area of those kept are added "
            "where at most 5% of their pixels are taken") \
        in card_of(mc_samples=2, coarse_pass={"factor": 0.5})
    card = card_of(mc_samples=2, uncertainty_threshold=0.5,
                   specialist={"model": "bpartis-emps-rods", "max_particles": 5,
                               "min_elongation": None})
    assert ("- specialist: on an image where the result keeps at most 5 particles, the "
            "network `bpartis-emps-rods`") in card
    card = card_of(mc_samples=2, specialist={
        "model": "bpartis-emps-rods", "max_particles": 5, "min_elongation": 3.0,
        "max_confidence": 0.95}, sparse_scale_factors=[
        {"factors": [2, 3.2], "max_particles": 5, "max_side_px": 256, "max_scale": 1,
         "growth": {"min_particles": 6, "min_ratio": 4}}])
    assert ("median elongation is at least 3, unless it is already sure of them (confidence "
            "at least 0.95), the network") in card
    assert ("keeps at most 5 particles and shows the image at most 256 px long, also at 2, "
            "3.2 x (up to 1 x native resolution), chosen over the surest scale where one of "
            "them keeps at least 6 particles and 4 x as many as any other scale") in card
    # ... and the outline refinement (the sentence only needs the band)
    card = card_of(outline={"kind": "mlp", "band": 4.0})
    assert "within 4 working-scale px of each particle's outline are re-decided" in card
    # a checkpoint stripped of its optimizer (to ship it) cannot resume: a clear error
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    del ckpt["optimizer"]
    torch.save(ckpt, tmp_path / "b" / "checkpoint.pt")
    from imageextract.errors import ImageExtractError

    with pytest.raises(ImageExtractError, match="no optimizer state.*--init"):
        train(data, tmp_path / "b", resume=True, max_steps=4, **opts)


def test_hard_mining_weights_and_exact_resume(tmp_path):
    """Hard-example sampling: the starting network's per-image scores set the
    draw probabilities, which are kept in the checkpoint so that a resumed run
    takes the same batches as an uninterrupted one."""
    from imageextract.errors import ImageExtractError
    from imageextract.segment.bpartis.train import hard_weights, make_batch, train

    w = hard_weights([1.0, 0.0, float("nan"), 0.75], strength=3.0)
    assert w.sum() == pytest.approx(1.0)
    assert w[1] == pytest.approx(4 * w[0]) and w[2] == pytest.approx(w[1])  # nan = failed
    assert w[3] == pytest.approx(1.75 * w[0])
    assert np.allclose(hard_weights([0.2, 0.9], strength=0.0), 0.5)
    with pytest.raises(ImageExtractError, match="strength"):
        hard_weights([0.5], strength=-1.0)
    # the draw follows the weights: item 1 only
    items = [(f"s{i}", np.full((40, 40, 3), 50 * i, np.uint8),
              np.full((40, 40), int(i == 1), np.int32)) for i in range(3)]
    imgs, labs = make_batch(items, np.random.default_rng(0), 6, 16,
                            weights=np.array([0.0, 1.0, 0.0]), p_invert=0.0, p_shade=0.0,
                            p_illumination=0.0)
    assert imgs.shape == (6, 3, 16, 16)
    assert all(bool((lab > 0).any()) for lab in labs)  # every crop from the one particle image

    data = _tiny_emps(tmp_path / "emps")
    opts = dict(epochs=10, crop=32, batch_size=2, val_every=1000, progress=False,
                device="cpu", model_config=TINY, pretrained=False, threads=None,
                export_at_end=False, hard_mining=2.0)
    train(data, tmp_path / "a", max_steps=2, **opts)
    train(data, tmp_path / "a", resume=True, max_steps=3, **opts)
    train(data, tmp_path / "b", max_steps=3, **opts)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["recipe"]["hard_mining"] == 2.0
    sw = np.asarray(b["sample_weights"])
    assert sw.size == 5 and sw.sum() == pytest.approx(1.0) and sw.min() > 0
    assert a["sample_weights"] == b["sample_weights"]
    assert set(a["recipe"]["hard_mining_scores"]) == {"mean", "below_0.5", "max_over_min_weight"}
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    with pytest.raises(ImageExtractError, match="strength"):  # refused before any work
        train(data, tmp_path / "c", max_steps=1, **{**opts, "hard_mining": -1.0})
    assert not (tmp_path / "c" / "checkpoint.pt").exists()


def test_elongated_weight_and_excluded_stems(tmp_path):
    """Images of rods are drawn ``elongated_weight`` times as often (on top of
    hard mining), stems can be left out of train-fit, and both are kept in
    the checkpoint (with the turned-crop and paste probabilities), so a
    resumed run draws as an uninterrupted one."""
    from PIL import Image

    from imageextract.datasets import split_stems
    from imageextract.errors import ImageExtractError
    from imageextract.segment.bpartis.train import elongated_images, shape_weights, train

    data = _tiny_emps(tmp_path / "emps")
    fit = split_stems(data, "train-fit")
    assert len(fit) >= 3
    rod, left_out = fit[0], fit[1]
    lab = np.zeros((48, 56), np.uint16)
    lab[10:15, 5:45] = 1
    lab[30:34, 8:50] = 2
    Image.fromarray(lab).save(data / "segmaps" / f"{rod}.png")
    img = np.where(lab > 0, 60, 200).astype(np.uint8)
    Image.fromarray(np.stack([img] * 3, -1)).save(data / "images" / f"{rod}.png")

    items = [("r", None, lab.astype(np.int32)), ("d", None, np.pad(np.ones((9, 9), np.int32), 5))]
    elongated = elongated_images(items)
    assert elongated.tolist() == [True, False]
    assert shape_weights(elongated, None, elongated_weight=1.0) is None
    w = shape_weights(elongated, np.array([0.2, 0.8]), elongated_weight=4.0)
    np.testing.assert_allclose(w, [0.5, 0.5])  # multiplies the weights it is given
    with pytest.raises(ImageExtractError, match="elongated weight"):
        shape_weights(elongated, None, elongated_weight=0.0)

    opts = dict(epochs=10, crop=32, batch_size=2, val_every=1000, progress=False,
                device="cpu", model_config=TINY, pretrained=False, threads=None,
                export_at_end=False, elongated_weight=4.0, exclude=[left_out], p_rotate=0.5,
                p_paste=0.5, p_stretch=0.5, repel_weight=1.0)
    train(data, tmp_path / "a", max_steps=2, **opts)
    train(data, tmp_path / "a", resume=True, max_steps=3, **opts)
    train(data, tmp_path / "b", max_steps=3, **opts)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["recipe"]["exclude"] == [left_out] and a["recipe"]["elongated_weight"] == 4.0
    assert a["recipe"]["elongated_images"] == 1 and a["recipe"]["p_rotate"] == 0.5
    assert a["recipe"]["p_paste"] == 0.5 and a["recipe"]["p_stretch"] == 0.5
    assert a["recipe"]["loss"]["w_repel"] == 1.0
    assert "pasting rods onto 50 % of the crops (2 rods in the bank)" in (
        tmp_path / "b" / "train.log").read_text()
    sw = np.asarray(b["sample_weights"])
    assert sw.size == len(fit) - 1 and sw.sum() == pytest.approx(1.0)
    assert sw.max() == pytest.approx(4 * sw.min()) and np.sum(sw == sw.max()) == 1
    assert a["sample_weights"] == b["sample_weights"]
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    with pytest.raises(ImageExtractError, match="not in train-fit: nosuchstem"):
        train(data, tmp_path / "c", max_steps=1, **{**opts, "exclude": ["nosuchstem"]})
    with pytest.raises(ImageExtractError, match="elongated weight"):
        train(data, tmp_path / "d", max_steps=1, **{**opts, "elongated_weight": -2.0})
    with pytest.raises(ImageExtractError, match="turned crop must be in"):
        train(data, tmp_path / "d", max_steps=1, **{**opts, "p_rotate": 1.5})
    with pytest.raises(ImageExtractError, match="pasting rods onto a crop must be in"):
        train(data, tmp_path / "d", max_steps=1, **{**opts, "p_paste": -0.1})
    with pytest.raises(ImageExtractError, match="stretched crop must be in"):
        train(data, tmp_path / "d", max_steps=1, **{**opts, "p_stretch": 2.0})
    with pytest.raises(ImageExtractError, match="repel weight must be >= 0"):
        train(data, tmp_path / "d", max_steps=1, **{**opts, "repel_weight": -1.0})
    with pytest.raises(ImageExtractError, match="no rods to paste"):  # the rod image left out
        train(data, tmp_path / "d", max_steps=1, **{**opts, "exclude": [rod]})
    assert not (tmp_path / "c" / "checkpoint.pt").exists()
    from imageextract.segment.bpartis.train import read_stems

    (tmp_path / "hold.txt").write_text(f"# held out\n{rod}  # a rod\n\n{left_out}\n")
    assert read_stems(tmp_path / "hold.txt") == [rod, left_out]


def test_turn_consistency_training_pairs_crops_and_resumes_exactly(tmp_path):
    """With ``turn_consistency`` each batch is half crops, half the same crops
    turned a quarter turn; the weights go in the recipe, the loss moves the
    network differently from a plain run, resume is exact, and an odd batch or
    a negative weight is refused before any work."""
    from imageextract.errors import ImageExtractError
    from imageextract.segment.bpartis.train import _BatchStream, export, train

    items = [("s", np.tile(np.arange(32, dtype=np.uint8)[:, None, None], (1, 32, 3)),
              np.pad(np.ones((6, 12), np.int32), ((4, 22), (8, 12))))]
    aug = {"scale_range": (1.0, 1.0), "p_invert": 0.0}
    imgs, targets = _BatchStream(items, [1.0], seed=0, batch_size=4, crop=32, aug=aug,
                                 turned=True)[0]
    assert imgs.shape == (4, 3, 32, 32) and len(targets) == 4
    for i in (0, 1):
        assert torch.equal(imgs[2 + i], torch.rot90(imgs[i], 1, (1, 2)))
        fg, fg_turned = (targets[i]["lab_k"] >= 0).view(32, 32), \
            (targets[2 + i]["lab_k"] >= 0).view(32, 32)
        assert torch.equal(fg_turned, torch.rot90(fg, 1, (0, 1)))

    data = _tiny_emps(tmp_path / "emps")
    opts = dict(epochs=10, crop=32, batch_size=2, val_every=1000, progress=False,
                device="cpu", model_config=TINY, pretrained=False, threads=None,
                export_at_end=False)
    turn = {**opts, "turn_consistency": (0.03, 0.1)}
    train(data, tmp_path / "a", max_steps=2, **turn)
    train(data, tmp_path / "a", resume=True, max_steps=3, **turn)
    train(data, tmp_path / "b", max_steps=3, **turn)
    train(data, tmp_path / "plain", max_steps=3, **opts)
    a, b, plain = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=False)
                   for n in ("a", "b", "plain"))
    assert a["recipe"]["turn_consistency"] == {"w_offset": 0.03, "w_sigma": 0.1}
    assert "turn_consistency" not in plain["recipe"]
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    head = "head.weight"
    assert not torch.allclose(a["model"][head], plain["model"][head])
    assert "turn" in (tmp_path / "a" / "train.log").read_text()
    export(tmp_path / "a", inference={"mc_samples": 2})
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert "x offsets and x sigma learn the turned y ones (weights 0.03 per px and 0.1" in card
    with pytest.raises(ImageExtractError, match="batch size must be even"):
        train(data, tmp_path / "c", max_steps=1, **{**turn, "batch_size": 3})
    with pytest.raises(ImageExtractError, match="must be >= 0"):
        train(data, tmp_path / "c", max_steps=1, **{**turn, "turn_consistency": (-1, 0)})
    assert not (tmp_path / "c" / "checkpoint.pt").exists()


def test_batches_do_not_depend_on_worker_processes(tmp_path):
    """Batch ``i`` comes from ``(seed, i)`` alone: a run with two loader
    processes takes the same batches as one without (to float rounding of
    the thread count), so its weights match closely."""
    from imageextract.segment.bpartis.train import train

    data = _tiny_emps(tmp_path / "emps")
    opts = dict(epochs=10, crop=32, batch_size=2, val_every=1000, progress=False,
                device="cpu", model_config=TINY, pretrained=False, threads=1,
                export_at_end=False, max_steps=3)
    train(data, tmp_path / "w0", **opts)
    train(data, tmp_path / "w2", workers=2, **opts)
    a = torch.load(tmp_path / "w0" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "w2" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 3
    for k, v in a["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5)


def test_finish_fits_size_model_tunes_and_exports(tmp_path):
    from imageextract.segment.bpartis.train import export, finish, fit_size, train

    data = _tiny_emps(tmp_path / "emps")
    train(data, tmp_path / "m", max_steps=2, epochs=10, crop=32, batch_size=2, val_every=1000,
          progress=False, device="cpu", model_config=TINY, pretrained=False, threads=None,
          export_at_end=False)
    res = finish(data, tmp_path / "m", progress=False)
    assert res["size_model"]["train_samples"] > 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    # the rescorer is fitted, or skipped with the reason when the proposals cannot train it
    assert ("rescore" in cfg["inference"]) != ("skipped" in res["rescore"])
    # the outline refiner is installed only when it raises the val score
    assert ("outline" in cfg["inference"]) == (res["outline"].get("gain", 0.0) > 0)
    assert "gain" in res["outline"] or "skipped" in res["outline"]
    assert cfg["inference"]["mc_samples"] == res["tuned"]["mc_samples"]
    assert cfg["size_model"]["alpha"] == res["size_model"]["alpha"]
    assert cfg["size_model"]["probes"] == [1.0]
    # the card says where the training time was spent
    (machine,) = cfg["training"]["train_hours_by_device"]
    assert machine.startswith("CPU (")
    assert f"h on {machine}" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    tune = json.loads((tmp_path / "m" / "tune.json").read_text())
    assert {r["mc_samples"] for r in tune["table"]} == {1, 4, 8, 16}
    assert {r["mc_maps"] for r in tune["table"] if r["mc_samples"] > 1} == {"mean", "point"}
    assert {r["uncertainty"] for r in tune["table"]
            if r["mc_samples"] > 1} == {"mi", "consistency"}
    assert cfg["inference"]["uncertainty"] == res["tuned"]["uncertainty"]
    # shipped with its uncertainty on: T = 1 is measured but not chosen
    assert cfg["inference"]["mc_samples"] >= 2
    assert cfg["inference"]["mc_maps"] == res["tuned"]["mc_maps"]
    # the scale search and foreground threshold chosen on val are what the backend runs
    searched = {(r["max_passes"], r["max_halvings"]) for r in tune["search"]}
    assert (cfg["inference"]["max_passes"], cfg["inference"]["max_halvings"]) in searched
    # a search other than the first (the default) only when it wins on resampled images
    chosen = [r for r in tune["search"]
              if (r["max_passes"], r["max_halvings"]) == (cfg["inference"]["max_passes"],
                                                          cfg["inference"]["max_halvings"])][0]
    assert chosen is tune["search"][0] or chosen["win_rate"] >= 0.9
    assert all(0 <= r["win_rate"] <= 1 for r in tune["search"][1:])
    assert len(tune["search"][0]["per_image_score"]) >= 1
    assert cfg["inference"]["cluster"]["fg_threshold"] in {r["fg_threshold"]
                                                          for r in tune["foreground"]}
    # a search whose passes depend on the filters: the candidates are measured in the loop
    from imageextract.segment.bpartis.train import tune

    res2 = tune(data, tmp_path / "m", samples=(1,), searches=((0, 1),), fg_thresholds=(),
                refilter_top=2, progress=False, write=False)
    in_loop = [r for r in res2["filters"] if r.get("in_loop")]
    assert 1 <= len(in_loop) <= 3
    assert {"min_score": 0.8, "min_rel_area": 0.2}.items() <= in_loop[0].items()
    chosen = (res2["best"]["min_score"], res2["best"]["min_rel_area"])
    assert chosen in {(r["min_score"], r["min_rel_area"]) for r in in_loop}
    backend = BPartIS(model=str(tmp_path / "m"))
    assert backend.size_model is not None  # stored inside weights.pt, under its sha256
    assert backend.size_model.probes == (1.0,)
    # a size model that reads two views: the card says so and the backend uses both
    fit_size(data, tmp_path / "m", probes=(0.5, 1.0), progress=False)
    export(tmp_path / "m")
    assert "read at 0.5, 1 x the probe scale" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert BPartIS(model=str(tmp_path / "m")).size_model.probes == (0.5, 1.0)
    seg = backend.predict(np.full((48, 56), 200, np.uint8))
    assert seg.labels.shape == (48, 56)


def test_held_out_stems_stay_out_of_the_fitted_parts(tmp_path, monkeypatch):
    """Stems a run leaves out (``exclude``) are left out of everything fitted
    on its network as well: the size model, the rescorer and the outline
    refiner (what ``finish`` fits), so that they can judge the model."""
    from imageextract.datasets import split_stems
    from imageextract.segment.bpartis import outline_fit, rescore_fit, size
    from imageextract.segment.bpartis.train import (export, fit_size, load_split, train,
                                                    training_exclude)

    data = _tiny_emps(tmp_path / "emps")
    fit = split_stems(data, "train-fit")
    held = fit[0]
    assert [s for s, _, _ in load_split(data, "train-fit", exclude=[held])] == fit[1:]
    run = tmp_path / "run"
    train(data, run, max_steps=1, epochs=10, crop=32, batch_size=2, val_every=1000,
          progress=False, device="cpu", model_config=TINY, pretrained=False, threads=None,
          export_at_end=False, exclude=[held])
    seen = {}

    def spy(name, real):
        def wrapped(first, items, *args, **kw):
            seen.setdefault(name, [[s for s, _, _ in items]])  # the first call: the fit
            return real(first, items, *args, **kw)
        return wrapped

    monkeypatch.setattr(size, "fit_size_model", spy("size", size.fit_size_model))
    monkeypatch.setattr(rescore_fit, "collect_proposals",
                        spy("rescore", rescore_fit.collect_proposals))
    monkeypatch.setattr(outline_fit, "segment_items", spy("outline", outline_fit.segment_items))
    fit_size(data, run, progress=False)
    export(run)
    assert training_exclude(run) == [held] and training_exclude(tmp_path) == []
    rescore_fit.fit_for_model(run, data, progress=False, check_split=None, write=False)
    outline_fit.fit_for_model(run, data, progress=False, every=1, write=False)
    assert seen["size"] == seen["rescore"] == seen["outline"] == [fit[1:]]
    # asked for, the excluded stems come back
    seen.clear()
    rescore_fit.fit_for_model(run, data, progress=False, check_split=None, write=False,
                              exclude=())
    assert seen["rescore"] == [fit]


def test_finish_with_another_models_settings_and_the_last_weights(tmp_path, capsys):
    """A specialist is finished like its base: the base's inference settings
    (not its network-fitted rescorer and outline refiner) instead of tuning
    on val, and the last weights of the schedule instead of ``best.pt``."""
    from imageextract.segment.bpartis.train import export, finish, train

    data = _tiny_emps(tmp_path / "emps")
    run = tmp_path / "run"
    train(data, run, max_steps=2, epochs=10, crop=32, batch_size=2, val_every=1000,
          progress=False, device="cpu", model_config=TINY, pretrained=False, threads=None,
          export_at_end=False)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    # a best-on-val file that differs from the last weights, as a long run leaves one
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()},
               run / "best.pt")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"inference": {
        "mc_samples": 3, "scale_factors": [0.9, 1.0, 1.1], "target_diameter": 40.0,
        "rescore": {"kind": "logistic"}, "outline": {"kind": "mlp"}}}))
    res = finish(data, run, progress=False, rescore=False, outline=False,
                 inference_from=base, final_weights=True)
    assert res["inference_from"] == str(base) and "tuned" not in res
    assert not (run / "tune.json").exists()  # val was not spent on tuning
    cfg = json.loads((run / "config.json").read_text())
    inf = cfg["inference"]
    assert (inf["mc_samples"], inf["scale_factors"], inf["target_diameter"]) == (
        3, [0.9, 1.0, 1.1], 40.0)
    assert "rescore" not in inf and "outline" not in inf  # fitted to the base's network
    assert cfg["training"]["weights"] == "final"
    card = (run / "MODEL_CARD.md").read_text()
    assert f"the last of the schedule (the checkpoint's) (step {ckpt['step']})" in card

    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    w = torch.load(run / "weights.pt", weights_only=True)
    assert torch.allclose(w[key].float(), ckpt["model"][key].float(), atol=1e-2)
    # a later export without the option keeps the choice recorded in config.json ...
    export(run)
    w = torch.load(run / "weights.pt", weights_only=True)
    assert torch.allclose(w[key].float(), ckpt["model"][key].float(), atol=1e-2)
    # ... and asked for the best-on-val weights, it ships best.pt and says so
    export(run, final_weights=False)
    w = torch.load(run / "weights.pt", weights_only=True)
    assert torch.allclose(w[key].float(), ckpt["model"][key].float() + 1, atol=1e-2)
    assert json.loads((run / "config.json").read_text())["training"]["weights"] == "best"
    assert "the best on the trainer's val check" in (run / "MODEL_CARD.md").read_text()
    # a base that is not an exported model is a message naming the file
    with pytest.raises(ImageExtractError, match="config.json"):
        finish(data, run, progress=False, inference_from=tmp_path / "nowhere")
    from imageextract.cli import main

    assert main(["train", "bpartis", "--data", str(data), "--out", str(run),
                 "--final-weights"]) == 2
    # the trainer's own command line: the same errors, as messages
    from imageextract.segment.bpartis.train import _main

    capsys.readouterr()
    errs = []
    for extra in (["--finish", "--inference-from", str(tmp_path / "nowhere")],
                  ["--final-weights"]):
        with pytest.raises(SystemExit) as exc:
            _main(["--data", str(data), "--out", str(run), *extra])
        assert exc.value.code == 2
        errs.append(capsys.readouterr().err)
    assert all("error:" in e and "Traceback" not in e for e in errs)
    assert "nowhere" in errs[0] and "config.json" in errs[0]
    assert "go with --finish" in errs[1]


def test_point_maps_cluster_the_deterministic_pass_and_keep_the_mc_uncertainty():
    from imageextract.segment.bpartis.inference import network_maps

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(7).integers(0, 255, (40, 70, 3), dtype=np.uint8)
    det = network_maps(b.net, rgb, samples=1, tile=64, overlap=16)
    torch.manual_seed(3)
    mean = network_maps(b.net, rgb, samples=6, tile=64, overlap=16, mc_maps="mean")
    torch.manual_seed(3)
    point = network_maps(b.net, rgb, samples=6, tile=64, overlap=16, mc_maps="point")
    for k in ("offsets", "log_s", "seed"):
        np.testing.assert_allclose(point[k], det[k], atol=1e-6)
    # the same dropout draws: the uncertainty is the MC samples' either way
    np.testing.assert_allclose(point["mi"], mean["mi"], atol=1e-6)
    assert point["mi"].max() > 0
    assert np.abs(mean["seed"] - det["seed"]).max() > 1e-6  # the mean is not the point
    with pytest.raises(ValueError, match="mc_maps"):
        network_maps(b.net, rgb, samples=2, mc_maps="median")
    # the backend reads it from the config
    b2 = BPartIS.from_config({"model": TINY, "inference": {"tile_px": 64, "overlap_px": 16,
                                                           "mc_maps": "point"}}, mc_samples=3)
    assert b2.mc_maps == "point"
    with pytest.raises(ValueError, match="mc_maps"):
        BPartIS.from_config({"model": TINY, "inference": {"mc_maps": "median"}})
    assert b2.predict(rgb).uncertainty.shape == b2.predict(rgb).scores.shape


def test_instance_consistency_over_samples():
    from imageextract.segment.bpartis.cluster import instance_consistency

    lab = np.zeros((10, 20), np.int32)
    lab[2:8, 2:8] = 1
    lab[2:8, 10:18] = 2
    split = lab.copy()
    split[2:8, 14:18] = 3  # instance 2 cut in half by a sample
    merged = np.where(lab > 0, 1, 0)  # a sample that merges both
    gone = np.where(lab == 2, 0, lab)  # a sample that drops instance 2
    c = instance_consistency(lab, 2, [lab, split])
    np.testing.assert_allclose(c, [1.0, 0.75])
    c = instance_consistency(lab, 2, [merged])
    np.testing.assert_allclose(c, [36 / 84, 48 / 84])
    np.testing.assert_allclose(instance_consistency(lab, 2, [gone]), [1.0, 0.0])
    assert instance_consistency(lab, 0, [lab]).shape == (0,)
    with pytest.raises(ValueError, match="do not match"):
        instance_consistency(lab, 2, [lab[:5]])


def test_consistency_uncertainty_from_the_mc_samples():
    """``uncertainty="consistency"``: the samples' maps are kept (stitched
    like the mean maps) and each is clustered; a particle that a sample
    loses gets uncertainty > 0, one that every sample reproduces 0."""
    from imageextract.segment.bpartis.inference import network_maps, segment_maps

    off, ls, seed, truth = _disc_maps((60, 80), [(20, 20, 10), (35, 55, 12)])
    stack = np.concatenate([off, ls, seed[None]], 0).astype(np.float16)
    lost = stack.copy()
    lost[4][truth == 2] = 0.0  # this sample sees no particle 2
    maps = {"offsets": off, "log_s": ls, "seed": seed, "mi": np.zeros_like(seed),
            "samples": np.stack([stack, stack, lost, stack])}
    opts = dict(coord_scale=SCALE, min_size=5)
    lab, sc, un = segment_maps(maps, uncertainty="consistency", **opts)
    assert lab.max() == 2
    k2 = int(np.bincount(lab[truth == 2]).argmax())
    assert un[k2 - 1] == pytest.approx(0.25, abs=0.02) and un[2 - k2] == pytest.approx(0, abs=1e-3)
    lab, sc, un = segment_maps(maps, uncertainty="consistency", uncertainty_threshold=0.1,
                               **opts)
    assert lab.max() == 1 and np.all(lab[truth == 2] == 0)
    with pytest.raises(ValueError, match="uncertainty must be"):
        segment_maps(maps, uncertainty="entropy", **opts)
    # the network keeps every sample's maps, tiled and stitched
    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(7).integers(0, 255, (40, 70, 3), dtype=np.uint8)
    m = network_maps(b.net, rgb, samples=3, tile=64, overlap=16, mc_maps="point",
                     keep_samples=True)
    assert m["samples"].shape == (3, 5, 40, 70) and m["samples"].dtype == np.float16
    assert "samples" not in network_maps(b.net, rgb, samples=1, keep_samples=True)
    with pytest.raises(ValueError, match="flips"):
        network_maps(b.net, rgb, samples=2, keep_samples=True, flips=True)
    # the backend: from the config, or overridden; a bad kind is refused when it is built
    b2 = BPartIS.from_config({"model": TINY, "inference": {"tile_px": 64, "overlap_px": 16,
                                                           "uncertainty": "consistency"}},
                             mc_samples=3)
    assert b2.uncertainty_kind == "consistency"
    seg = b2.predict(rgb)
    assert seg.uncertainty.shape == seg.scores.shape
    assert np.all((seg.uncertainty >= 0) & (seg.uncertainty <= 1))
    with pytest.raises(ValueError, match="inference.uncertainty"):
        BPartIS.from_config({"model": TINY, "inference": {"uncertainty": "entropy"}})
    with pytest.raises(ValueError, match="uncertainty must be"):
        BPartIS.from_config({"model": TINY}, uncertainty="entropy")


def test_samples_clustered_on_threads_give_the_same_uncertainty(monkeypatch):
    # with the compiled clustering the samples are clustered two at a time
    # on threads: the same consistency as one after the other, for an odd T
    import threading

    from imageextract.segment.bpartis import inference

    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    off, ls, seed, truth = _disc_maps((60, 80), [(20, 20, 10), (35, 55, 12), (45, 18, 7)])
    stack = np.concatenate([off, ls, seed[None]], 0)
    samples = []
    for i in range(5):
        s = stack + rng.normal(0, 0.01, stack.shape)
        s[4][truth == 1 + i % 3] *= 0.3 if i in (1, 4) else 1.0  # some samples lose one
        samples.append(s.astype(np.float16))
    maps = {"offsets": off, "log_s": ls, "seed": seed, "mi": np.zeros_like(seed),
            "samples": np.stack(samples)}
    lab, sc, _ = inference.segment_maps(maps, coord_scale=SCALE, min_size=5)
    k = int(lab.max())
    assert inference.compiled_clustering()
    clustered = []
    real = inference.cluster

    def spy(*a, **kw):
        clustered.append(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(inference, "cluster", spy)
    main = threading.current_thread().name
    threaded = inference.sample_consistency(maps, lab, k, coord_scale=SCALE, min_size=5)
    assert len(clustered) == 5 and main not in clustered  # on the pool's threads
    clustered.clear()
    monkeypatch.setattr(inference, "THREADED_CLUSTERING_MAX_PX", lab.size - 1)  # too large
    large = inference.sample_consistency(maps, lab, k, coord_scale=SCALE, min_size=5)
    assert clustered == [main] * 5  # one after the other, here
    monkeypatch.setattr(inference, "compiled_clustering", lambda: False)
    one_by_one = inference.sample_consistency(maps, lab, k, coord_scale=SCALE, min_size=5)
    np.testing.assert_array_equal(threaded, one_by_one)
    np.testing.assert_array_equal(large, one_by_one)
    assert k == 3 and 0 < threaded.min() < threaded.max() == 1.0


def test_kept_samples_are_stitched_where_the_maps_are():
    """The samples go into the image-sized array tile by tile: on an image
    of several tiles, the mean of the kept samples is the mean map (float16
    rounding aside), pixel by pixel."""
    from imageextract.segment.bpartis.inference import network_maps

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(3).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    rgb[30:60, 40:90] //= 4  # structure, so that the maps vary across the image
    m = network_maps(b.net, rgb, samples=6, tile=64, overlap=16, mc_maps="mean",
                     keep_samples=True, mc_seed=1)
    assert m["samples"].shape == (6, 5, 100, 150)
    mean = m["samples"].astype(np.float64).mean(0)
    want = np.concatenate([m["offsets"], m["log_s"], m["seed"][None]], 0)
    np.testing.assert_allclose(mean, want, rtol=2e-3, atol=1e-3)  # float16: 11-bit mantissa
    err = np.abs(mean - want).max()
    # the check can tell: the same samples a few pixels off do not fit
    assert np.abs(np.roll(mean, 5, axis=2) - want).max() > 10 * err


def test_instance_consistency_with_many_particles_matches_the_pairwise_ious():
    from imageextract.segment.bpartis.cluster import instance_consistency

    rng = np.random.default_rng(0)
    lab = rng.integers(0, 300, (120, 160)).astype(np.int32)
    lab[lab == 7] = 0  # a label with no pixels
    samples = [rng.integers(0, 500, lab.shape).astype(np.int32),
               np.where(lab > 150, lab, 0).astype(np.int32), np.zeros_like(lab)]
    k = int(lab.max())
    want = np.zeros(k)
    for o in samples:
        for i in range(1, k + 1):
            a = lab == i
            best = 0.0
            for j in np.unique(o[a]):
                if j:
                    b = o == j
                    best = max(best, (a & b).sum() / (a | b).sum())
            want[i - 1] += best / len(samples)
    got = instance_consistency(lab, k, iter(samples))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[6] == 0 and got[200] > 1 / 3 > got[100]


def test_folding_batchnorm_keeps_the_outputs():
    """The backend folds each BatchNorm into the convolution before it: the
    folded network gives the unfolded one's outputs (float rounding aside)
    and has no BatchNorm left.  Random BN statistics and affine terms, so
    that a BN dropped instead of folded would show."""
    import copy

    from torch import nn

    from imageextract.segment.bpartis.model import BPartISNet, ModelConfig, fold_batchnorm

    torch.manual_seed(0)
    net = BPartISNet(ModelConfig.from_dict(TINY))
    n_bn = 0
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n_bn += 1
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(net.train())
    net.eval()
    folded = copy.deepcopy(net)
    assert fold_batchnorm(folded) == n_bn > 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        a, b = net(x), folded(x)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)
        # the check can tell: BatchNorms dropped instead of folded change the outputs
        dropped = copy.deepcopy(net)
        for m in dropped.modules():
            for name, child in m.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    setattr(m, name, nn.Identity())
        c = dropped(x)
        assert max(float((c[k] - a[k]).abs().max()) for k in a) > 1e-2
    # the backend's network is folded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in tiny_backend().net.modules())


def test_head_samples_are_channel_dropout_of_the_head():
    b = tiny_backend(mc_samples=1)
    net = b.net.eval()
    y = torch.randn(2, net.head.in_channels, 5, 7)
    p = net.config.dropout
    torch.manual_seed(11)
    got = list(net.head_samples(y, 3, chunk=2))
    torch.manual_seed(11)
    masks = torch.cat([torch.rand(2, 2, 1, y.shape[1]), torch.rand(1, 2, 1, y.shape[1])]) >= p
    assert 0 < masks.float().mean() < 1
    for t, out in enumerate(got):
        want = net._activate(net.head(y * masks[t, :, 0, :, None, None] / (1 - p)))
        for k in ("offsets", "log_s", "seed"):
            torch.testing.assert_close(out[k], want[k], rtol=1e-5, atol=1e-6)
    # sample_mc at inference takes this path: T outputs of the right shape
    outs = list(net.sample_mc(torch.rand(1, 3, 32, 32), 5, layers=("head",), point=True))
    assert len(outs) == 6 and outs[1]["seed"].shape == (1, 1, 32, 32)


@pytest.mark.parametrize("fold", [False, True])
def test_fused_inference_features_equal_the_decoder(fold):
    # features() moves the 1x1 convolutions of the blocks at strides 4, 2
    # and 1 before the upsampling; it must give the decoder's features,
    # with the BatchNorms folded (the backend) or not (validation in training)
    from torch import nn

    from imageextract.segment.bpartis.model import BPartISNet, ModelConfig, fold_batchnorm

    torch.manual_seed(2)
    net = BPartISNet(ModelConfig.from_dict(TINY))
    for m in net.modules():  # BatchNorms that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    if fold:
        assert fold_batchnorm(net) > 0
    x = torch.rand(2, 3, 40, 72)
    with torch.inference_mode():
        want = net.trunk(*net.shared(x)[:2])
        got = net.features(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net(x)["seed"], net.heads(want)["seed"], rtol=1e-4,
                                   atol=1e-5)
        conv = net._activate(net.head(want))  # the head as the 1x1 convolution it is
        for k, v in net.point_head(want).items():  # the head as one matrix product
            torch.testing.assert_close(v, conv[k], rtol=1e-5, atol=1e-6)
    net.train()
    with pytest.raises(RuntimeError, match="inference"):
        net.features(x)


def test_head_scratch_is_reused_only_while_small(monkeypatch):
    from imageextract.segment.bpartis import model as M

    net = tiny_backend(mc_samples=1).net.eval()
    y = torch.randn(1, net.head.in_channels, 16, 16)
    with torch.inference_mode():
        a = next(net.head_sample_chunks(y, 4, reuse=True))
        b = next(net.head_sample_chunks(y, 4, reuse=True))
        assert a.data_ptr() == b.data_ptr()  # the same memory, call after call
        c = next(net.head_sample_chunks(y, 4))  # without reuse: a tensor of its own
        assert c.data_ptr() != a.data_ptr()
        # another thread gets its own scratch
        from concurrent.futures import ThreadPoolExecutor

        def other():
            with torch.inference_mode():
                return next(net.head_sample_chunks(y, 4, reuse=True)).data_ptr()

        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(other).result() != a.data_ptr()
        monkeypatch.setattr(M, "SCRATCH_BYTES", 100)
        M._SCRATCH.buf = None
        d = next(net.head_sample_chunks(y, 4, reuse=True))
        e = next(net.head_sample_chunks(y, 4, reuse=True))
        assert d.data_ptr() != e.data_ptr() and M._SCRATCH.buf is None  # too large to keep
    # with gradients on (training) there is no scratch: autograd needs its own tensors
    assert next(net.head_sample_chunks(y, 2, reuse=True)).requires_grad


@pytest.mark.parametrize("layers", [("head",), ("dec1", "head")])
def test_sample_chunks_are_the_samples_stacked(layers):
    # network_maps reads the MC samples in chunks (n, B, 5, H, W): they must
    # be sample_mc's outputs, in order, from the same random draws
    net = tiny_backend(mc_samples=1).net.eval()
    x = torch.rand(1, 3, 32, 32)
    torch.manual_seed(4)
    want = list(net.sample_mc(x, 11, layers=layers, point=True))
    torch.manual_seed(4)
    with torch.inference_mode():  # as network_maps runs it: the head's scratch is reused
        first, chunks = net.sample_mc_chunks(x, 11, layers=layers, point=True, reuse=True)
        chunks = [c.clone() for c in chunks]  # a chunk is valid until the next is drawn
    got = torch.cat(chunks, 0)
    assert got.shape == (11, 1, 5, 32, 32)
    assert len(chunks) == (2 if layers == ("head",) else 11)  # 8 + 3 when only the head
    for k in ("offsets", "log_s", "seed"):
        torch.testing.assert_close(first[k], want[0][k], rtol=0, atol=0)
    for t, o in enumerate(want[1:]):
        torch.testing.assert_close(got[t], torch.cat([o["offsets"], o["log_s"], o["seed"]], 1),
                                   rtol=0, atol=0)
    assert not torch.equal(got[0], got[1])  # the samples differ


def test_mirror_averaging_is_mirror_equivariant():
    from imageextract.segment.bpartis.inference import network_maps

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(5).integers(0, 255, (40, 70, 3), dtype=np.uint8)
    a = network_maps(b.net, rgb, flips=True, tile=64, overlap=16)
    m = network_maps(b.net, rgb[:, ::-1], flips=True, tile=64, overlap=16)
    np.testing.assert_allclose(m["seed"][:, ::-1], a["seed"], atol=1e-5)
    np.testing.assert_allclose(m["offsets"][0][:, ::-1], a["offsets"][0], atol=1e-5)
    np.testing.assert_allclose(-m["offsets"][1][:, ::-1], a["offsets"][1], atol=1e-5)


def test_mc_samples_share_dropout_masks_across_tiles():
    """Sample k is one network over the whole image: two tiles that see the
    same pixels at the same place inside the tile get the same sample
    values; the caller's random state is left as it was."""
    import torch

    from imageextract.segment.bpartis.inference import network_maps

    b = tiny_backend(mc_samples=1)
    # tiles start at x = 0 and 48; the pattern repeats every 48 px, so both
    # tiles see the same pixels
    rgb = np.tile(np.random.default_rng(5).integers(0, 255, (64, 48, 3), dtype=np.uint8),
                  (1, 3, 1))[:, :112]
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    m = network_maps(b.net, rgb, samples=4, tile=64, overlap=16, mc_maps="point",
                     keep_samples=True)
    assert torch.rand(1) != before  # the caller's stream moved on by one draw, not reset
    s = m["samples"].astype(np.float32)
    # pixel (32, 32) of each tile: x = 32 lies in the first tile's core, x = 80 in the second's
    np.testing.assert_array_equal(s[:, :, 32, 32], s[:, :, 32, 80])
    assert np.ptp(s, axis=0).max() > 1e-3  # the samples differ
    # the mean maps agree too
    m = network_maps(b.net, rgb, samples=4, tile=64, overlap=16, mc_maps="mean")
    np.testing.assert_array_equal(m["seed"][16:48, 32], m["seed"][16:48, 80])


def test_an_image_in_one_tile_keeps_its_tiles_maps():
    """An image that fits one tile gets that tile's maps as they are (no
    stitching copy): the same values as the tile's own pass, each map its
    own writeable float32 plane, the kept samples float16 (T, 5, M, N)."""
    from imageextract.segment.bpartis.inference import (
        _entropy, _seeded, _tile_maps, network_maps)

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(2).integers(0, 255, (40, 70, 3), dtype=np.uint8)
    m = network_maps(b.net, rgb, samples=3, tile=128, mc_maps="point", keep_samples=True,
                     mc_seed=5, canvas=64)
    t = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)[None]
    kept = []
    with torch.inference_mode(), _seeded(5, t.device):
        off, ls, seed, mi = _tile_maps(b.net, t, 3, ("head",), "point", keep=kept, canvas=64)
    np.testing.assert_array_equal(m["offsets"], off.numpy())
    np.testing.assert_array_equal(m["log_s"], ls.numpy())
    np.testing.assert_array_equal(m["seed"], seed[0].numpy())
    np.testing.assert_array_equal(m["mi"], mi[0].numpy())
    np.testing.assert_array_equal(m["samples"], torch.cat(kept, 0).numpy())
    assert m["samples"].shape == (3, 5, 40, 70) and m["samples"].dtype == np.float16
    assert all(m[k].dtype == np.float32 and m[k].flags.writeable for k in ("seed", "mi"))
    assert m["mi"].max() > 0
    # the entropy of the MI, written with fewer temporaries, is the textbook formula
    p = torch.rand(4, 1, 33, 17)
    p.view(-1)[:4] = torch.tensor([0.0, 1.0, 0.5, 1e-9])
    q = p.clamp(1e-7, 1 - 1e-7)
    assert torch.equal(_entropy(p), -(q * torch.log(q) + (1 - q) * torch.log1p(-q)))


def test_backend_mc_samples_are_reproducible():
    """The dropout masks come from the backend's seed, not from whatever ran
    before: the same image gives the same uncertainty every time."""
    b = tiny_backend(mc_samples=3)
    img = (np.random.default_rng(3).random((64, 64)) * 255).astype(np.uint8)
    first = b.predict(img)
    torch.manual_seed(123)
    torch.rand(7)
    again = b.predict(img)
    np.testing.assert_array_equal(first.pixel_uncertainty, again.pixel_uncertainty)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.pixel_uncertainty.max() > 0
    # another seed draws other masks
    b.mc_seed = 1
    assert not np.array_equal(b.predict(img).pixel_uncertainty, first.pixel_uncertainty)


def test_small_tiles_run_on_a_flat_canvas_of_their_mean_grey(monkeypatch):
    from imageextract.segment.bpartis.inference import CANVAS_PX, _pad32, network_maps

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((1, 3, 70, 300), dtype=np.float32))
    out, h, w = _pad32(x, canvas=128)
    assert (h, w) == (70, 300) and out.shape == (1, 3, 128, 320)
    torch.testing.assert_close(out[..., :70, :300], x)
    grey = x.mean((-2, -1))[0]
    for c in range(3):  # the rest is each channel's mean, not a mirror image
        assert torch.allclose(out[0, c, 70:], grey[c])
        assert torch.allclose(out[0, c, :, 300:], grey[c])
    # tiles at least as large as the canvas keep the mirrored 32-px padding
    big = torch.from_numpy(rng.random((1, 3, 130, 140), dtype=np.float32))
    a, _, _ = _pad32(big, canvas=128)
    b, _, _ = _pad32(big)
    assert a.shape == (1, 3, 160, 160)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0, :, 130:, :140], big[0].flip(1)[:, 1:31])  # reflected rows

    b = tiny_backend(mc_samples=1)
    assert b.canvas_px == CANVAS_PX > 0
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    flat = network_maps(b.net, rgb, canvas=128)
    mirror = network_maps(b.net, rgb, canvas=0)
    assert flat["seed"].shape == mirror["seed"].shape == (40, 50)
    assert np.abs(flat["seed"] - mirror["seed"]).max() > 1e-4
    # the backend takes it from the config (0: the old mirrored borders)
    b0 = BPartIS.from_config({"model": TINY, "inference": {"canvas_px": 0}}, mc_samples=1,
                             scale=1.0)
    from imageextract.segment.bpartis import inference

    seen = []

    def spy(*args, **kw):
        seen.append(kw["canvas"])
        return network_maps(*args, **kw)

    monkeypatch.setattr(inference, "network_maps", spy)
    assert b0.segment_rgb(rgb)["labels"].shape == (40, 50)
    assert b.segment_rgb(rgb)["labels"].shape == (40, 50)
    assert seen == [0, CANVAS_PX]
    for bad in (-1, 12.5, "256", True, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="canvas_px"):
            BPartIS.from_config({"model": TINY, "inference": {"canvas_px": bad}})


def test_scale_confidence_is_the_mean_certain_score():
    from imageextract.segment.bpartis.inference import scale_confidence

    res = {"scores": np.array([0.9, 0.5]), "uncertainty": np.array([0.0, 0.2])}
    assert scale_confidence(res) == pytest.approx((0.9 + 0.5 * 0.8) / 2)
    assert scale_confidence({"scores": np.zeros(0), "uncertainty": np.zeros(0)}) == -1.0


def test_scale_factors_keep_the_most_confident_scale(monkeypatch):
    from imageextract.segment.bpartis import inference

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(5).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    kw = dict(target_diameter=48.0, max_passes=0, max_halvings=0)
    plain = b.segment_rgb(rgb, **kw)
    assert "scale_confidence" not in plain and plain["passes"] == 1
    s = plain["scale"]
    # the most confident result wins, whichever factor gave it
    monkeypatch.setattr(inference, "scale_confidence", lambda r: -abs(r["scale"] - 1.25 * s))
    res = b.segment_rgb(rgb, scale_factors=(0.8, 1.0, 1.25), **kw)
    assert res["scale"] == pytest.approx(1.25 * s) and res["passes"] == 3
    assert sorted(res["scale_confidence"]) == [0.8, 1.0, 1.25]
    np.testing.assert_array_equal(res["labels"], b.segment_rgb(rgb, scale=1.25 * s)["labels"])
    # ties keep the scale that was found
    monkeypatch.setattr(inference, "scale_confidence", lambda r: 0.5)
    res = b.segment_rgb(rgb, scale_factors=(0.8, 1.0, 1.25), **kw)
    assert res["scale"] == s
    np.testing.assert_array_equal(res["labels"], plain["labels"])
    # a scale the caller fixed is not second-guessed
    res = b.segment_rgb(rgb, scale=0.5, scale_factors=(0.8, 1.25))
    assert res["scale"] == 0.5 and res["passes"] == 1
    with pytest.raises(ValueError, match="scale_factors"):
        b.segment_rgb(rgb, scale_factors=(0.0, 1.0))
    # the backend reads them from its config
    assert b.scale_factors == (1.0,)
    b2 = BPartIS.from_config({"model": TINY, "inference": {"scale_factors": [0.8, 1, 1.25]}})
    assert b2.scale_factors == (0.8, 1.0, 1.25)
    with pytest.raises(ValueError, match="scale_factors"):
        BPartIS.from_config({"model": TINY, "inference": {"scale_factors": [-1]}})


def test_sparse_factors_only_where_few_particles_are_found(monkeypatch):
    from imageextract.segment.bpartis import inference

    def three_particles(maps, **kw):  # whatever the network says: 3 squares
        h, w = maps["seed"].shape
        lab = np.zeros((h, w), np.int32)
        for i in range(3):
            lab[2:8, 2 + 10 * i:8 + 10 * i] = i + 1
        return lab, np.full(3, 0.9), np.zeros(3)

    monkeypatch.setattr(inference, "segment_maps", three_particles)
    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(5).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    kw = dict(target_diameter=48.0, max_passes=0, max_halvings=0)
    s = b.segment_rgb(rgb, **kw)["scale"]
    # 3 particles at the scale found: at most 3 -> the sparse factor is tried too
    res = b.segment_rgb(rgb, sparse_factors={"factors": (0.64,), "max_particles": 3},
                        scale_factors=(0.8, 1.0), **kw)
    assert res["passes"] == 3 and sorted(res["scale_confidence"]) == [0.64, 0.8, 1.0]
    monkeypatch.setattr(inference, "scale_confidence", lambda r: -abs(r["scale"] - 0.64 * s))
    res = b.segment_rgb(rgb, sparse_factors={"factors": (0.64,), "max_particles": 3}, **kw)
    assert res["scale"] == pytest.approx(0.64 * s) and res["passes"] == 2
    # more than max_particles: not tried
    res = b.segment_rgb(rgb, sparse_factors={"factors": (0.64,), "max_particles": 2},
                        scale_factors=(0.8, 1.0), **kw)
    assert res["passes"] == 2 and sorted(res["scale_confidence"]) == [0.8, 1.0]
    # nor when the caller fixed the scale
    res = b.segment_rgb(rgb, scale=0.5, sparse_factors={"factors": (0.64,), "max_particles": 9})
    assert res["scale"] == 0.5 and res["passes"] == 1
    with pytest.raises(ValueError, match="sparse_factors"):
        b.segment_rgb(rgb, sparse_factors={"factors": (-1.0,), "max_particles": 3}, **kw)
    with pytest.raises(ValueError, match="sparse_factors"):
        b.segment_rgb(rgb, sparse_factors=[{"factors": (2.0,), "max_particles": 3,
                                            "max_scale": -1}], **kw)
    # a closer look: larger factors only where the image at the scale found is
    # short enough, and never beyond max_scale (the scale found here is s)
    monkeypatch.setattr(inference, "scale_confidence", lambda r: r["scale"])
    side = max(rgb.shape[:2]) * s
    close = {"factors": (2.0, 3.2), "max_particles": 3, "max_side_px": side + 1,
             "max_scale": 2.5 * s}
    res = b.segment_rgb(rgb, sparse_factors=[{"factors": (0.64,), "max_particles": 3}, close],
                        scale_factors=(1.0,), **kw)
    assert sorted(res["scale_confidence"]) == [0.64, 1.0, 2.0]  # 3.2 s is beyond max_scale
    assert res["scale"] == pytest.approx(2.0 * s) and res["passes"] == 3
    res = b.segment_rgb(rgb, sparse_factors=[dict(close, max_side_px=side - 1)], **kw)
    assert res["passes"] == 1 and res["scale"] == pytest.approx(s)
    res = b.segment_rgb(rgb, sparse_factors=[dict(close, max_particles=2)], **kw)
    assert res["passes"] == 1
    # the backend reads them from its config, and refuses a malformed entry
    assert b.sparse_factors is None
    b2 = BPartIS.from_config({"model": TINY, "inference": {
        "sparse_scale_factors": {"factors": [0.64], "max_particles": 20}}})
    assert b2.sparse_factors == ({"factors": (0.64,), "max_particles": 20},)
    rules = [{"factors": [0.64], "max_particles": 20},
             {"factors": [2, 3.2], "max_particles": 5, "max_side_px": 256, "max_scale": 1.0}]
    b3 = BPartIS.from_config({"model": TINY, "inference": {"sparse_scale_factors": rules}})
    assert b3.sparse_factors == ({"factors": (0.64,), "max_particles": 20},
                                 {"factors": (2.0, 3.2), "max_particles": 5,
                                  "max_side_px": 256, "max_scale": 1.0})
    for bad in ({"factors": [], "max_particles": 2}, {"factors": [0], "max_particles": 2},
                {"factors": [0.64], "max_particles": -1}, {"factors": [0.64]},
                {"factors": [0.64], "max_particles": 2.5},
                {"factors": [0.64], "max_particles": True},
                {"factors": [0.64], "max_particles": 2, "min_particles": 1}, [0.64], [],
                [{"factors": [2], "max_particles": 5, "max_side_px": -1}],
                [{"factors": [2], "max_particles": 5, "max_scale": 0}],
                [{"factors": [2], "max_particles": 5, "max_scale": "1"}]):
        with pytest.raises(ValueError, match="sparse_scale_factors"):
            BPartIS.from_config({"model": TINY, "inference": {"sparse_scale_factors": bad}})


def test_sure_confidence_skips_the_other_scale_factors_but_not_the_sparse_rules(monkeypatch):
    from imageextract.segment.bpartis import inference

    def two_particles(maps, **kw):
        lab = np.zeros(maps["seed"].shape, np.int32)
        lab[2:8, 2:8], lab[2:8, 12:18] = 1, 2
        return lab, np.full(2, 0.9), np.zeros(2)

    monkeypatch.setattr(inference, "segment_maps", two_particles)
    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(7).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    kw = dict(target_diameter=48.0, max_passes=0, max_halvings=0, scale_factors=(0.8, 1.0, 1.25))
    assert b.segment_rgb(rgb, **kw)["passes"] == 3
    # confidence 0.9 >= 0.85: the scale found alone ...
    res = b.segment_rgb(rgb, sure_confidence=0.85, **kw)
    assert res["passes"] == 1 and "scale_confidence" not in res
    assert b.segment_rgb(rgb, sure_confidence=0.95, **kw)["passes"] == 3  # 0.9 < 0.95
    # ... but a sparse rule still looks at its factors
    res = b.segment_rgb(rgb, sure_confidence=0.85, sparse_factors={"factors": (0.64,),
                                                                   "max_particles": 5}, **kw)
    assert res["passes"] == 2 and sorted(res["scale_confidence"]) == [0.64, 1.0]
    # a fixed scale runs once anyway
    assert b.segment_rgb(rgb, scale=0.5, sure_confidence=0.0)["passes"] == 1
    # the backend reads it from its config
    assert b.sure_confidence is None
    b2 = BPartIS.from_config({"model": TINY, "inference": {"sure_confidence": 0.97}})
    assert b2.sure_confidence == 0.97
    # all_scales turns it off: every scale factor on every image
    b3 = BPartIS.from_config({"model": TINY, "inference": {"sure_confidence": 0.5}},
                             all_scales=True)
    assert b3.sure_confidence is None
    assert b3.segment_rgb(rgb, **kw)["passes"] == 3
    b3.sure_confidence = 0.5  # as the config alone would have it
    assert b3.segment_rgb(rgb, **kw)["passes"] == 1
    for bad in ("high", True, float("nan")):
        with pytest.raises(ValueError, match="sure_confidence"):
            BPartIS.from_config({"model": TINY, "inference": {"sure_confidence": bad}})


def test_scale_coverage_prefers_the_scale_whose_particles_cover_the_foreground(monkeypatch):
    from imageextract.segment.bpartis import inference

    real_maps = inference.network_maps

    def all_foreground(*a, **kw):
        maps = real_maps(*a, **kw)
        maps["seed"] = np.full_like(maps["seed"], 0.9)
        return maps

    def by_scale(maps, **kw):
        # small working scales: one very sure particle on a corner of the
        # image; larger ones: the whole image as four less sure particles
        h, w = maps["seed"].shape
        lab = np.zeros((h, w), np.int32)
        if w < 45:
            lab[:4, :4] = 1
            return lab, np.array([0.95]), np.zeros(1)
        lab[: h // 2, : w // 2], lab[: h // 2, w // 2:] = 1, 2
        lab[h // 2:, : w // 2], lab[h // 2:, w // 2:] = 3, 4
        return lab, np.full(4, 0.85), np.zeros(4)

    monkeypatch.setattr(inference, "network_maps", all_foreground)
    monkeypatch.setattr(inference, "segment_maps", by_scale)
    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    s = 0.8  # fixed factors around a scale found at 0.8 x native: 0.64, 0.8, 1.0
    monkeypatch.setattr(inference, "find_scale",
                        lambda run, shape, **kw: (s, run(s), 1))
    kw = dict(target_diameter=48.0, scale_factors=(0.8, 1.0, 1.25))
    res = b.segment_rgb(rgb, **kw)
    assert res["scale"] == pytest.approx(0.64) and res["scores"].size == 1
    assert "scale_score" not in res
    res = b.segment_rgb(rgb, scale_coverage=0.3, **kw)
    assert res["scale"] == pytest.approx(0.8) and res["scores"].size == 4  # ties: scale found
    assert res["scale_score"][1.0] == pytest.approx(0.85 + 0.3)
    assert res["scale_confidence"][0.8] == pytest.approx(0.95)  # confidence still reported
    # gated on rods: the square quarters found at the scale found are not elongated
    res = b.segment_rgb(rgb, scale_coverage=0.3, coverage_min_elongation=2.0, **kw)
    assert res["scale"] == pytest.approx(0.64) and "scale_score" not in res
    res = b.segment_rgb(rgb, scale_coverage=0.3, coverage_min_elongation=0.5, **kw)
    assert res["scale"] == pytest.approx(0.8)
    # too small a weight keeps the surer corner
    assert b.segment_rgb(rgb, scale_coverage=0.05, **kw)["scale"] == pytest.approx(0.64)
    for bad in (-0.1, None, "0.3"):
        with pytest.raises(ValueError, match="scale_coverage"):
            b.segment_rgb(rgb, scale_coverage=bad, **kw)
    with pytest.raises(ValueError, match="coverage_min_elongation"):
        b.segment_rgb(rgb, scale_coverage=0.3, coverage_min_elongation=float("nan"), **kw)
    # the backend reads it from its config, and refuses a malformed entry
    assert b.scale_coverage == 0.0
    b2 = BPartIS.from_config({"model": TINY, "inference": {
        "scale_coverage": 0.3, "scale_coverage_min_elongation": 2}})
    assert (b2.scale_coverage, b2.coverage_min_elongation) == (0.3, 2.0)
    assert b.coverage_min_elongation is None
    with pytest.raises(ValueError, match="scale_coverage_min_elongation"):
        BPartIS.from_config({"model": TINY, "inference": {"scale_coverage_min_elongation": "2"}})
    for bad in ("high", True, -1, float("nan"), None):
        with pytest.raises(ValueError, match="scale_coverage"):
            BPartIS.from_config({"model": TINY, "inference": {"scale_coverage": bad}})


def test_growth_rule_keeps_the_scale_where_a_blob_breaks_into_many_particles(monkeypatch):
    from imageextract.segment.bpartis import inference

    def count_grows(maps, **kw):  # one blob at small scales, a grid of dots when zoomed
        h, w = maps["seed"].shape
        lab = np.zeros((h, w), np.int32)
        if w < 120:
            lab[2:h - 2, 2:w - 2] = 1
            return lab, np.full(1, 0.99), np.zeros(1)
        k = 0
        for y in range(4, h - 8, 12):
            for x in range(4, w - 8, 12):
                k += 1
                lab[y:y + 6, x:x + 6] = k
        return lab, np.full(k, 0.9), np.zeros(k)

    monkeypatch.setattr(inference, "segment_maps", count_grows)
    s = 0.2  # the scale "found" (as if the size model read the dots as one blob)
    monkeypatch.setattr(inference, "find_scale", lambda run, *a, **k: (s, run(s), 1))
    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(6).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    kw = dict(target_diameter=48.0, max_passes=0, max_halvings=0, scale_factors=(1.0,),
              refine=False)  # blocky labels: the random network's seed map would drop them
    assert b.segment_rgb(rgb, **kw)["scale"] == s
    assert 240 * 2 * s < 120 <= 240 * 3.2 * s  # one blob up to 2 x, dots at 3.2 x
    rule = {"factors": (2.0, 3.2), "max_particles": 5, "max_side_px": 1000, "max_scale": 5}
    # by confidence the blob (0.99) wins
    res = b.segment_rgb(rgb, sparse_factors=[rule], **kw)
    assert res["scale"] == pytest.approx(s) and res["scores"].size == 1 and "grown" not in res
    # with a growth limit the scale whose particles multiply wins
    grow = dict(rule, growth={"min_particles": 6, "min_ratio": 4})
    res = b.segment_rgb(rgb, sparse_factors=[grow], **kw)
    assert res["grown"] == 3.2 and res["scale"] == pytest.approx(3.2 * s)
    assert res["scores"].size >= 6 and np.unique(res["labels"]).size == res["scores"].size + 1
    # not when the count stays below min_particles
    res = b.segment_rgb(rgb, sparse_factors=[dict(rule, growth={"min_particles": 10**6,
                                                                 "min_ratio": 1})], **kw)
    assert "grown" not in res and res["scores"].size == 1
    with pytest.raises(ValueError, match="sparse_factors"):
        b.segment_rgb(rgb, sparse_factors=[dict(rule, growth={"min_particles": 6})], **kw)
    b2 = BPartIS.from_config({"model": TINY, "inference": {"sparse_scale_factors": [
        dict(grow, factors=[2, 3.2])]}})
    assert b2.sparse_factors[0]["growth"] == {"min_particles": 6, "min_ratio": 4}
    for bad in ({"min_particles": 0, "min_ratio": 4}, {"min_particles": 6, "min_ratio": 0},
                {"min_particles": 6, "min_ratio": 4, "x": 1}, {"min_particles": 2.5,
                                                                "min_ratio": 4}):
        with pytest.raises(ValueError, match="sparse_scale_factors"):
            BPartIS.from_config({"model": TINY, "inference": {"sparse_scale_factors": [
                dict(rule, factors=[2], growth=bad)]}})


def test_merge_scales_adds_only_particles_the_chosen_scale_missed():
    from imageextract.segment.bpartis.inference import merge_scales

    base = np.zeros((20, 40), np.int32)
    base[2:8, 2:8] = 1  # A
    chosen = {"labels": base, "scores": np.array([0.97]), "uncertainty": np.array([0.01]),
              "seed_scores": np.array([0.8])}
    o1 = np.zeros_like(base)
    o1[3:9, 3:9] = 1  # A again, shifted: mostly claimed
    o1[12:18, 2:8] = 2  # B: free, confident
    o1[12:18, 20:26] = 3  # C: free, not confident enough
    o1[2:12, 8:18] = 4  # D: 0 of its pixels claimed by A -> added
    other1 = {"labels": o1, "scores": np.array([0.99, 0.95, 0.5, 0.91]),
              "uncertainty": np.array([0.0, 0.05, 0.3, 0.02]),
              "seed_scores": np.array([0.9, 0.85, 0.6, 0.7])}
    o2 = np.zeros_like(base)
    o2[12:18, 3:9] = 1  # B seen at another scale, less sure: B already claims it
    o2[2:10, 30:38] = 2  # E: free, confident
    o2[7:12, 5:9] = 3  # F: 3 of its 20 pixels lie in A (15 % > 5 %) -> skipped
    other2 = {"labels": o2, "scores": np.array([0.92, 0.93, 0.96]),
              "uncertainty": np.array([0.1, 0.04, 0.0])}
    before = [o1.copy(), o2.copy(), base.copy()]
    res = merge_scales(chosen, [other1, other2], min_score=0.9, max_overlap=0.05)
    # inputs untouched
    for a, b in zip(before, (o1, o2, base)):
        np.testing.assert_array_equal(a, b)
    lab = res["labels"]
    assert res["merged"] == 3
    # added in order of decreasing score: B (0.95), E (0.93), D (0.91)
    np.testing.assert_allclose(res["scores"], [0.97, 0.95, 0.93, 0.91])
    np.testing.assert_allclose(res["uncertainty"], [0.01, 0.05, 0.04, 0.02])
    np.testing.assert_allclose(res["seed_scores"][:2], [0.8, 0.85])
    assert np.isnan(res["seed_scores"][2])  # E's scale had no seed scores
    assert (lab[2:8, 2:8] == 1).all()  # the chosen particle keeps all its pixels
    assert (lab[12:18, 2:8] == 2).all() and (lab[12:18, 8] == 0).all()
    assert (lab[2:10, 30:38] == 3).all()
    assert (lab[2:12, 8:18] == 4).all()
    assert not (lab[12:18, 20:26]).any()  # C: below min_score
    assert (lab[8:12, 5:8] == 0).all()  # F skipped
    # a looser overlap lets F in first (0.96) with the 17 pixels A does not
    # have; D then overlaps F by 5 of its 100 pixels and gets the other 95
    loose = merge_scales(chosen, [other1, other2], min_score=0.9, max_overlap=0.25)
    assert loose["merged"] == 4
    np.testing.assert_allclose(loose["scores"], [0.97, 0.96, 0.95, 0.93, 0.91])
    assert (loose["labels"] == 2).sum() == 17 and (loose["labels"] == 5).sum() == 95
    # nothing to add: the result is the chosen one
    same = merge_scales(chosen, [other1], min_score=1.0)
    np.testing.assert_array_equal(same["labels"], base)
    assert same["merged"] == 0 and same["scores"].tolist() == [0.97]
    with pytest.raises(ValueError, match="max_overlap"):
        merge_scales(chosen, [other1], max_overlap=1.0)
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_scales(chosen, [{**other1, "labels": o1[:10]}])


def test_scale_merge_in_the_backend(monkeypatch):
    from imageextract.segment.bpartis import inference

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(5).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    kw = dict(target_diameter=48.0, max_passes=0, max_halvings=0,
              cluster_options={"seed_threshold": 0.0, "fg_threshold": 0.0, "min_size": 1})
    s = b.segment_rgb(rgb, **kw)["scale"]
    monkeypatch.setattr(inference, "scale_confidence", lambda r: -abs(r["scale"] - 1.25 * s))
    merge = {"min_score": 0.0, "max_overlap": 0.5}
    res = b.segment_rgb(rgb, scale_factors=(0.8, 1.0, 1.25), merge=merge, **kw)
    at = {f: b.segment_rgb(rgb, scale=f * s, **kw) for f in (1.0, 0.8, 1.25)}
    want = inference.merge_scales(at[1.25], [at[1.0], at[0.8]], **merge)
    assert want["merged"] > 0  # the other scales do add particles here
    assert res["scale"] == pytest.approx(1.25 * s) and res["merged"] == want["merged"]
    np.testing.assert_array_equal(res["labels"], want["labels"])
    np.testing.assert_allclose(res["scores"], want["scores"])
    # without merge nothing is added
    assert "merged" not in b.segment_rgb(rgb, scale_factors=(0.8, 1.0, 1.25), **kw)
    # the backend reads it from its config and checks it
    assert b.scale_merge is None
    cfg = {"model": TINY, "inference": {"scale_factors": [0.8, 1, 1.25],
                                        "scale_merge": {"min_score": 0.9}}}
    assert BPartIS.from_config(cfg).scale_merge == {"min_score": 0.9, "max_overlap": 0.05}
    for bad in ({"min_score": "high"}, {"max_overlap": 1.5}, {"min_scor": 0.9}, [0.9]):
        cfg["inference"]["scale_merge"] = bad
        with pytest.raises(ValueError, match="scale_merge"):
            BPartIS.from_config(cfg)


def test_coarse_particles_keeps_the_large_sure_ones():
    from imageextract.segment.bpartis.inference import coarse_particles

    lab = np.zeros((20, 40), np.int32)
    lab[1:4, 1:4] = 1  # 9 px
    lab[1:4, 6:10] = 2  # 12 px: the median area is 10.5
    big = np.zeros((20, 40), np.int32)
    big[5:15, 5:15] = 1  # 100 px, sure: kept
    big[5:15, 20:30] = 2  # 100 px, not sure enough
    big[16:19, 30:36] = 3  # 18 px, sure but < 2 x 10.5
    big[0:6, 30:36] = 4  # 36 px, sure
    coarse = {"labels": big, "scores": np.array([0.995, 0.98, 0.999, 0.99]),
              "uncertainty": np.array([0.1, 0.2, 0.3, 0.4]),
              "seed_scores": np.array([0.9, 0.8, 0.7, 0.6]), "scale": 0.2}
    res = {"labels": lab, "scores": np.array([0.9, 0.9])}
    c = coarse_particles(res, coarse, min_score=0.99, min_rel_area=2.0)
    assert c["scores"].tolist() == [0.995, 0.99] and c["uncertainty"].tolist() == [0.1, 0.4]
    assert c["seed_scores"].tolist() == [0.9, 0.6] and c["scale"] == 0.2
    assert np.array_equal(c["labels"] == 1, big == 1) and np.array_equal(c["labels"] == 2, big == 4)
    assert int(c["labels"].max()) == 2
    # a stricter floor keeps only the 100-px particle; an empty result any size
    assert coarse_particles(res, coarse, min_rel_area=5.0)["scores"].tolist() == [0.995]
    empty = {"labels": np.zeros_like(lab), "scores": np.zeros(0)}
    assert coarse_particles(empty, coarse)["scores"].tolist() == [0.995, 0.999, 0.99]
    assert big.max() == 4  # the input is left alone
    for bad in (-1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="min_rel_area"):
            coarse_particles(res, coarse, min_rel_area=bad)


def test_coarse_pass_adds_a_particle_too_large_for_the_scale_used(monkeypatch):
    from imageextract.segment.bpartis import inference

    def small(maps, **kw):  # three small squares, wherever
        h, w = maps["seed"].shape
        lab = np.zeros((h, w), np.int32)
        for i in range(3):
            lab[2:6, 2 + 6 * i:6 + 6 * i] = i + 1
        return lab, np.full(3, 0.9), np.zeros(3)

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(5).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    # refine=False: labels enlarged as they are, not traced on the random seed map
    kw = dict(target_diameter=48.0, max_passes=0, max_halvings=0, refine=False)
    monkeypatch.setattr(inference, "segment_maps", small)
    s = b.segment_rgb(rgb, **kw)["scale"]
    top = round(80 * s)

    def by_size(maps, **kw):  # at the scale found the squares, below it one large particle
        h, w = maps["seed"].shape
        if h >= 0.7 * top:
            return small(maps)
        lab = np.zeros((h, w), np.int32)
        lab[1:h - 1, w // 2:w - 1] = 1
        return lab, np.array([0.995]), np.array([0.05])

    monkeypatch.setattr(inference, "segment_maps", by_size)
    plain = b.segment_rgb(rgb, **kw)
    assert "coarse_added" not in plain and plain["scores"].size == 3
    look = {"factor": 0.4, "min_score": 0.99, "min_rel_area": 2.0, "max_overlap": 0.05}
    res = b.segment_rgb(rgb, coarse_pass=look, **kw)
    # a first look, then the same scale again with every step
    assert res["coarse_added"] == 1 and res["passes"] == plain["passes"] + 2
    assert res["scores"].tolist() == [0.9, 0.9, 0.9, 0.995]
    assert res["uncertainty"][3] == pytest.approx(0.05)
    np.testing.assert_array_equal(np.where(res["labels"] <= 3, res["labels"], 0), plain["labels"])
    new = res["labels"] == 4
    assert new.sum() > 10 * (plain["labels"] == 1).sum() and new[:, : 96 // 3].sum() == 0
    # not sure enough, or not large enough: nothing added, the pass still run
    for opts in (dict(look, min_score=0.999), dict(look, min_rel_area=1e6)):
        res = b.segment_rgb(rgb, coarse_pass=opts, **kw)
        assert res["coarse_added"] == 0 and res["scores"].size == 3
        np.testing.assert_array_equal(res["labels"], plain["labels"])
    # the first look is taken without the outline refiner; only where a particle
    # comes in is that scale segmented again with its outlines refined
    class Refiner:
        calls = []

        def refine(self, rgb, labels, seed, *, scale):
            self.calls.append(scale)
            return labels

    res = b.segment_rgb(rgb, coarse_pass=look, outline=Refiner(), **kw)
    assert res["coarse_added"] == 1 and res["passes"] == plain["passes"] + 2
    assert Refiner.calls == [pytest.approx(s), pytest.approx(0.4 * s)]
    Refiner.calls.clear()
    res = b.segment_rgb(rgb, coarse_pass=dict(look, min_score=0.999), outline=Refiner(), **kw)
    assert res["coarse_added"] == 0 and res["passes"] == plain["passes"] + 1
    assert Refiner.calls == [pytest.approx(s)]
    # a working scale the caller fixed is left alone
    fixed = b.segment_rgb(rgb, scale=s, coarse_pass=look, refine=False)
    assert "coarse_added" not in fixed and fixed["scores"].size == 3
    # the backend reads it from its config, with defaults, and checks it
    assert b.coarse_pass is None
    cfg = {"model": TINY, "inference": {"coarse_pass": {"factor": 0.5}}}
    assert BPartIS.from_config(cfg).coarse_pass == {"factor": 0.5, "min_score": 0.99,
                                                    "min_rel_area": 2.0, "max_overlap": 0.05}
    for bad in ({"factor": 1.0}, {"factor": 0}, {"min_rel_area": -1}, {"max_overlap": 1},
                {"factr": 0.4}, {"min_score": "high"}, {"factor": True}, [0.4]):
        cfg["inference"]["coarse_pass"] = bad
        with pytest.raises(ValueError, match="coarse_pass"):
            BPartIS.from_config(cfg)


_VIEW_OF = {"flip_lr": lambda a: a[:, ::-1], "flip_tb": lambda a: a[::-1],
            "transpose": lambda a: a.transpose(1, 0, 2)}


@pytest.mark.parametrize("name", ["flip_lr", "flip_tb", "transpose"])
def test_tta_view_is_equivariant(name):
    """Averaging the plain view with view V gives, for the image seen in V,
    the same maps seen in V: offsets and sigmas follow the view (a mirror
    negates one offset axis, a transpose swaps y and x)."""
    from imageextract.segment.bpartis.inference import network_maps

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(7).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    a = network_maps(b.net, rgb, tta=(name,), tile=128, canvas=0)
    m = network_maps(b.net, np.ascontiguousarray(_VIEW_OF[name](rgb)), tta=(name,), tile=128,
                     canvas=0)
    plain = network_maps(b.net, rgb, tile=128, canvas=0)
    assert not np.allclose(a["offsets"], plain["offsets"], atol=1e-4)  # the view adds something
    if name == "transpose":
        back = {k: np.swapaxes(m[k], -1, -2) for k in ("seed", "offsets", "log_s")}
        back["offsets"], back["log_s"] = back["offsets"][[1, 0]], back["log_s"][[1, 0]]
    else:
        axis = -1 if name == "flip_lr" else -2
        back = {k: np.flip(m[k], axis) for k in ("seed", "offsets", "log_s")}
        back["offsets"] = back["offsets"].copy()
        back["offsets"][1 if name == "flip_lr" else 0] *= -1
    for k in ("seed", "offsets", "log_s"):
        np.testing.assert_allclose(back[k], a[k], atol=1e-5, err_msg=k)


def test_tta_keeps_the_plain_views_samples_and_mi():
    """With MC samples kept (per-particle consistency), the extra views only
    add point maps: the samples and the MI are the plain view's."""
    from imageextract.segment.bpartis.inference import network_maps

    b = tiny_backend(mc_samples=1)
    rgb = np.random.default_rng(8).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    kw = dict(samples=3, mc_maps="point", keep_samples=True, mc_seed=4, tile=128)
    plain = network_maps(b.net, rgb, **kw)
    both = network_maps(b.net, rgb, tta=("transpose", "flip_lr"), **kw)
    np.testing.assert_array_equal(both["samples"], plain["samples"])
    np.testing.assert_array_equal(both["mi"], plain["mi"])
    assert not np.allclose(both["seed"], plain["seed"], atol=1e-5)


def test_tta_refuses_unknown_views():
    from imageextract.segment.bpartis.inference import network_maps

    b = tiny_backend(mc_samples=1)
    with pytest.raises(ValueError, match="rot45"):
        network_maps(b.net, np.zeros((32, 32, 3), np.uint8), tta=("rot45",))


@pytest.mark.parametrize("spec", [{"views": []}, {"views": ["spin"]}, {"views": "flip_lr"},
                                  {"views": ["flip_lr", "flip_lr"]},
                                  {"views": ["transpose"], "max_px": 0},
                                  {"views": ["transpose"], "max_px": True},
                                  {"views": ["transpose"], "extra": 1}, {"max_px": 5}, [1]])
def test_config_tta_is_validated(spec):
    with pytest.raises(ValueError, match="inference.tta"):
        BPartIS.from_config({"model": TINY, "inference": {"tta": spec}})


def test_tta_runs_only_at_scales_under_its_pixel_limit(monkeypatch):
    """``max_px`` bounds the cost: the views run only where the working
    image has at most that many pixels."""
    from imageextract.segment.bpartis import inference

    seen = []
    real = inference.network_maps

    def spy(net, rgb, **kw):
        seen.append((rgb.shape[:2], kw["tta"]))
        return real(net, rgb, **kw)

    monkeypatch.setattr(inference, "network_maps", spy)
    rgb = np.random.default_rng(9).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    cfg = {"model": TINY, "inference": {"tile_px": 64, "overlap_px": 16,
                                        "tta": {"views": ["transpose"], "max_px": 1100}}}
    torch.manual_seed(0)
    b = BPartIS.from_config(cfg, mc_samples=1)
    b.segment_rgb(rgb, scale=0.5)  # 32 x 32 (the least) = 1024 px: with the view
    b.segment_rgb(rgb, scale=1.0)  # 2000 px: without
    assert seen == [((32, 32), ("transpose",)), ((40, 50), ())]
    cfg["inference"]["tta"]["max_px"] = None
    torch.manual_seed(0)
    BPartIS.from_config(cfg, mc_samples=1).segment_rgb(rgb, scale=1.0)
    assert seen[-1] == ((40, 50), ("transpose",))


def _rods(shape, *, along_x: bool) -> np.ndarray:
    """Labels of three 4 x 30 px rods lying along x (or along y)."""
    lab = np.zeros(shape, np.int32)
    for k, y in enumerate((6, 20, 34), start=1):
        lab[y:y + 4, 8:38] = k
    return lab if along_x else np.ascontiguousarray(lab.T)


def test_particle_axes_follow_the_particles():
    from imageextract.segment.bpartis.inference import particle_axes

    flat = _rods((48, 48), along_x=True)
    frac, elong = particle_axes(flat)
    assert frac == 1.0 and elong == pytest.approx(np.sqrt((30 ** 2 - 1) / (4 ** 2 - 1)))
    assert particle_axes(flat.T) == (0.0, pytest.approx(elong))
    assert particle_axes(np.rot90(flat))[0] == 0.0
    disc = (np.hypot(*np.mgrid[-20:21, -20:21]) < 15).astype(np.int32)
    assert particle_axes(disc)[1] == pytest.approx(1.0, abs=0.01)
    assert all(np.isnan(particle_axes(np.zeros((5, 5), np.int32))))


def test_turn_rods_segments_rods_lying_along_x_upright(monkeypatch):
    """With ``inference.turn_rods``, an image whose particles lie along x is
    segmented again turned a quarter turn, and that result, turned back, is
    kept; an image of upright rods or without the option runs once."""
    from scipy import ndimage

    from imageextract.segment.bpartis import inference

    calls = []

    def fake(net, rgb, **kw):  # finds the rods drawn in the image's red channel
        calls.append(rgb.shape[:2])
        lab = ndimage.label(rgb[..., 0] > 0)[0]
        k = int(lab.max())
        return {"labels": lab.astype(np.int32), "scores": np.full(k, 0.9),
                "uncertainty": np.zeros(k), "mi": rgb[..., 1].astype(np.float32),
                "seed": rgb[..., 2].astype(np.float32), "scale": 1.0, "passes": 2}

    monkeypatch.setattr(inference, "segment_image", fake)
    truth = _rods((48, 60), along_x=True)
    rgb = np.zeros((48, 60, 3), np.uint8)
    rgb[..., 0] = (truth > 0) * 200
    rgb[..., 1] = np.arange(60)[None, :]  # maps that show which way they were turned
    rgb[..., 2] = np.arange(48)[:, None]
    cfg = {"model": TINY, "inference": {"turn_rods": {"min_along_x": 0.6,
                                                      "min_elongation": 1.3}}}
    b = BPartIS.from_config(cfg, mc_samples=1)
    res = b.segment_rgb(rgb)
    assert calls == [(48, 60), (60, 48)]
    assert res["turned"] and res["passes"] == 4
    assert res["labels"].shape == (48, 60) and np.array_equal(res["labels"] > 0, truth > 0)
    assert np.array_equal(res["mi"], rgb[..., 1]) and np.array_equal(res["seed"], rgb[..., 2])
    calls.clear()
    upright = np.ascontiguousarray(rgb.transpose(1, 0, 2))
    assert "turned" not in b.segment_rgb(upright) and calls == [(60, 48)]
    calls.clear()
    assert "turned" not in b.segment_rgb(rgb, turn_rods=None) and calls == [(48, 60)]


@pytest.mark.parametrize("spec", [{"min_along_x": 1.5, "min_elongation": 2},
                                  {"min_along_x": 0.6, "min_elongation": 0.5},
                                  {"min_along_x": 0.6}, {"min_along_x": 0.6, "min_elongation": 2,
                                                         "extra": 1}, [0.6, 2], "yes"])
def test_config_turn_rods_is_validated(spec):
    with pytest.raises(ValueError, match="inference.turn_rods"):
        BPartIS.from_config({"model": TINY, "inference": {"turn_rods": spec}})


def _tiny_model_dir(folder, inference=None):
    """A model folder (config.json with its sha256, weights.pt) of random tiny weights."""
    from imageextract.segment.bpartis.model import BPartISNet, ModelConfig
    from imageextract.weights import sha256_file

    folder.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(BPartISNet(ModelConfig.from_dict(TINY)).state_dict(), folder / "weights.pt")
    cfg = {"backend": "bpartis", "version": "tiny", "weights": "weights.pt",
           "sha256": sha256_file(folder / "weights.pt"), "model": TINY,
           "inference": inference or {}}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_specialist_segments_sparse_images_again_and_keeps_the_surer_result(
        monkeypatch, tmp_path):
    """With ``inference.specialist``, an image on which the main network keeps
    at most ``max_particles`` particles (or elongated ones) is segmented by the
    specialist too; its result is kept only when its particles are surer, and
    it carries the specialist's weights tag; dense images run once."""
    from imageextract.segment.bpartis import inference

    calls = []
    sure = {}

    def fake(net, rgb, **kw):  # as many particles as bright pixels in row 0; own scores
        calls.append(id(net))
        lab = np.zeros(rgb.shape[:2], np.int32)
        k = int((rgb[0, :, 0] > 0).sum())
        for i in range(k):
            lab[8 * i:8 * i + 6, :6] = i + 1
        s = sure.get(id(net), 0.5)
        return {"labels": lab, "scores": np.full(k, s), "uncertainty": np.zeros(k),
                "mi": np.zeros(rgb.shape[:2], np.float32), "scale": 1.0, "passes": 2}

    monkeypatch.setattr(inference, "segment_image", fake)
    folder = _tiny_model_dir(tmp_path / "rods", {"mc_samples": 1})
    cfg = {"model": TINY, "inference": {"specialist": {"model": str(folder),
                                                       "max_particles": 2}}}
    b = BPartIS.from_config(cfg, mc_samples=1, tag="main")
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[0, :2] = 200  # two particles: sparse
    res = b.segment_rgb(rgb)  # the specialist is built on first use
    other = b._specialist_backend[1]
    assert calls == [id(b.net), id(other.net)] and res["passes"] == 4
    assert "weights" not in res  # equally sure: the main result stays
    assert res["specialist_confidence"] == {"main": 0.5, "specialist": 0.5}
    sure[id(other.net)] = 0.9
    seg = b.predict(rgb[..., 0])
    assert seg.weights == other.weights != "main" and seg.scores.tolist() == [0.9, 0.9]
    sure[id(other.net)] = 0.2
    assert b.predict(rgb[..., 0]).weights == "main"
    calls.clear()
    rgb[0, :5] = 200  # five compact particles: the main network's alone
    assert "specialist_confidence" not in b.segment_rgb(rgb) and calls == [id(b.net)]
    calls.clear()
    rgb[0, 1:] = 0
    assert "specialist_confidence" not in b.segment_rgb(rgb, specialist=None)
    assert "specialist_confidence" not in b.segment_rgb(rgb, scale=0.5)  # the user's scale
    assert calls == [id(b.net)] * 2


def test_specialist_called_for_elongated_particles():
    from imageextract.segment.bpartis import _calls_specialist

    spec = {"model": "m", "max_particles": 0, "min_elongation": 2.0}
    rods = _rods((48, 60), along_x=True)
    k = int(rods.max())
    assert _calls_specialist({"labels": rods, "scores": np.ones(k)}, spec)
    disc = (np.hypot(*np.mgrid[-20:21, -20:21]) < 15).astype(np.int32)
    assert not _calls_specialist({"labels": disc, "scores": np.ones(1)}, spec)
    assert _calls_specialist({"labels": disc, "scores": np.ones(1)},
                             dict(spec, max_particles=1))
    assert _calls_specialist({"labels": disc * 0, "scores": np.ones(0)}, spec)
    # with max_confidence, only where the main network is less sure than that
    gate = dict(spec, max_confidence=0.95)
    sure = {"labels": rods, "scores": np.full(k, 0.99), "uncertainty": np.zeros(k)}
    assert not _calls_specialist(sure, gate) and _calls_specialist(sure, spec)
    assert _calls_specialist(dict(sure, scores=np.full(k, 0.9)), gate)
    assert _calls_specialist({"labels": disc * 0, "scores": np.ones(0),
                              "uncertainty": np.zeros(0)}, gate)  # none found: -1


@pytest.mark.parametrize("spec", [{"max_particles": 3}, {"model": "", "max_particles": 3},
                                  {"model": "m", "max_particles": -1},
                                  {"model": "m", "max_particles": 2.5},
                                  {"model": "m", "max_particles": True},
                                  {"model": "m", "min_elongation": 0.5},
                                  {"model": "m", "extra": 1}, ["m", 3], "m",
                                  {"model": "m", "max_confidence": "sure"},
                                  {"model": "m", "max_confidence": float("nan")}])
def test_config_specialist_is_validated(spec):
    with pytest.raises(ValueError, match="inference.specialist"):
        BPartIS.from_config({"model": TINY, "inference": {"specialist": spec}})


def test_config_specialist_must_be_installed(tmp_path):
    cfg = {"model": TINY, "inference": {"specialist": {"model": str(tmp_path / "none"),
                                                       "max_particles": 50}}}
    b = BPartIS.from_config(cfg, mc_samples=1)
    with pytest.raises(WeightsError, match="not installed"):
        b.segment_rgb(np.zeros((40, 40, 3), np.uint8))


def _on_a_bar():
    """A noisy micrograph with a bar drawn on it and the result of a backend
    that took the bar for a particle: particle 2 is the bar, 1 and 3 are
    particles (3 an imaged dark rod along x, which the bar finder also sees)."""
    rng = np.random.default_rng(0)
    g = rng.normal(0.6, 0.03, (120, 200))
    g[30:36, 20:120] = rng.normal(0.12, 0.03, (6, 100))  # the rod
    g[100:106, 60:180] = 0.0  # the drawn bar
    rgb = np.repeat((g.clip(0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    lab = np.zeros(g.shape, np.int32)
    lab[60:80, 20:40] = 1
    lab[97:109, 50:175] = 2  # the bar, outlined loosely
    lab[29:37, 19:121] = 3
    res = {"labels": lab, "scores": np.array([0.9, 0.8, 0.7]),
           "uncertainty": np.array([0.1, 0.2, 0.3]), "seed_scores": np.array([0.5, 0.6, 0.7]),
           "scale": 1.0, "passes": 1, "mi": np.zeros(g.shape, np.float32)}
    return rgb, res


def test_a_particle_on_a_drawn_scale_bar_is_dropped():
    from imageextract.figures.scalebar import find_scale_bars
    from imageextract.segment.bpartis import off_scale_bars

    rgb, res = _on_a_bar()
    assert len(find_scale_bars(rgb, ocr="none")) == 2  # the rod looks like a bar too
    out = off_scale_bars(rgb, res)
    assert out["scale_bars"] == [(60.0, 100.0, 180.0, 106.0)]
    assert np.unique(out["labels"]).tolist() == [0, 1, 2]
    assert (out["labels"] == 2).sum() == (res["labels"] == 3).sum()  # the rod stays
    assert out["scores"].tolist() == [0.9, 0.7] and out["uncertainty"].tolist() == [0.1, 0.3]
    assert out["seed_scores"].tolist() == [0.5, 0.7]
    assert res["scores"].size == 3  # the input is not changed
    # 1170 of the bar particle's 1500 pixels lie in the bar's box grown by 2 px
    assert off_scale_bars(rgb, res, min_inside=0.75)["scores"].size == 2
    assert off_scale_bars(rgb, res, min_inside=0.8)["scores"].size == 3
    # no drawn bar: the result itself comes back
    plain = rgb.copy()
    plain[100:106, 60:180] = plain[60:66, 60:180]
    assert off_scale_bars(plain, res) is res


def test_the_backend_drops_scale_bars_when_its_config_says_so(monkeypatch):
    from imageextract.segment.bpartis import inference

    rgb, res = _on_a_bar()
    monkeypatch.setattr(inference, "segment_image", lambda net, rgb, **kw: dict(res))
    off = BPartIS.from_config({"model": TINY})
    assert off.drop_scale_bars is None and off.segment_rgb(rgb)["scores"].size == 3
    on = BPartIS.from_config({"model": TINY, "inference": {"drop_scale_bars": {}}})
    assert on.drop_scale_bars == {"min_flat": 0.5, "min_inside": 0.5}
    assert on.segment_rgb(rgb)["scores"].size == 2
    assert on.segment_rgb(rgb, drop_scale_bars=None)["scores"].size == 3
    assert on.predict(rgb).labels.max() == 2
    for bad in ({"min_flat": 2}, {"min_inside": 0}, {"min_flat": True}, {"bar": 1}, [0.5]):
        with pytest.raises(ValueError, match="drop_scale_bars"):
            BPartIS.from_config({"model": TINY, "inference": {"drop_scale_bars": bad}})
