import numpy as np
import pytest
import tifffile
from PIL import Image

from imageextract.errors import ImageLoadError
from imageextract.io import find_images, load_image


def _grad(h=40, w=50):
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_load_modes(tmp_path, mode, ext):
    g = _grad()
    if mode == "L":
        im = Image.fromarray(g)
    elif mode == "RGB":
        im = Image.fromarray(np.stack([g, g // 2, g // 3], -1))
    elif mode == "RGBA":
        im = Image.fromarray(np.stack([g, g // 2, g // 3, np.full_like(g, 255)], -1))
    else:
        im = Image.fromarray(g.astype(np.uint16) * 200)
    p = tmp_path / f"x{ext}"
    im.save(p)
    arr = load_image(p)
    assert arr.shape[:2] == (40, 50)
    if mode in ("RGB", "RGBA"):
        assert arr.shape == (40, 50, 3) and arr.dtype == np.uint8
        assert np.array_equal(arr[..., 1], g // 2)
    elif mode == "I;16":
        assert arr.dtype == np.uint16 and int(arr.max()) == int(g.max()) * 200
    else:
        assert arr.ndim == 2 and np.array_equal(arr, g)


def test_grey_rgb_becomes_2d(tmp_path):
    g = _grad()
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "g.jpg", quality=100)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").ndim == 2


def test_multipage_tiff_first_page(tmp_path):
    p = tmp_path / "stack.tif"
    pages = np.stack([np.full((20, 30), v, np.uint16) for v in (7, 9, 11)])
    tifffile.imwrite(p, pages, photometric="minisblack")
    arr = load_image(p)
    assert arr.shape == (20, 30) and int(arr[0, 0]) == 7


def test_16bit_tiff(tmp_path):
    p = tmp_path / "a.tif"
    data = (np.arange(64 * 64).reshape(64, 64) * 13).astype(np.uint16)
    tifffile.imwrite(p, data)
    assert np.array_equal(load_image(p), data)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not a PNG")
    with pytest.raises(ImageLoadError, match="notes.png.*not a readable image"):
        load_image(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(p)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
def test_truncated(tmp_path, ext):
    p = tmp_path / f"full{ext}"
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (200, 200), dtype=np.uint8)
    if ext == ".tif":
        tifffile.imwrite(p, arr)
    else:
        Image.fromarray(arr).save(p)
    data = p.read_bytes()
    q = tmp_path / f"cut{ext}"
    q.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut"):
        load_image(q)


def test_too_many_pixels(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(p)
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(p, max_pixels=100_000)
    monkeypatch.setenv("IMAGEEXTRACT_MAX_PIXELS", "1000")
    with pytest.raises(ImageLoadError, match="IMAGEEXTRACT_MAX_PIXELS"):
        load_image(p)
    t = tmp_path / "big.tif"
    tifffile.imwrite(t, np.zeros((300, 400), np.uint8))
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(t)


def test_missing_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_find_images(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.png", "a/2.TIF", "a/readme.txt", "b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "3.png").write_bytes(b"x")
    found = find_images([tmp_path / "a", tmp_path / "b.jpg", tmp_path / "a" / "1.png"])
    assert [f.name for f in found] == ["1.png", "2.TIF", "b.jpg"]
