"""Reading micrographs from disk.

PNG, JPEG, TIFF (8/16-bit, greyscale, RGB, RGBA; multi-page files give their
first page) and BMP.  Every failure — missing, empty, truncated, not an
image, too many pixels — raises :class:`~imageextract.errors.ImageLoadError`
with a message that names the file.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import ImageLoadError

logger = logging.getLogger(__name__)

#: Largest image accepted, in pixels (guards against decompression bombs).
#: Override with ``$IMAGEEXTRACT_MAX_PIXELS`` or ``max_pixels=``.
DEFAULT_MAX_PIXELS = 200_000_000

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _max_pixels(max_pixels: int | None) -> int:
    if max_pixels is not None:
        return int(max_pixels)
    env = os.environ.get("IMAGEEXTRACT_MAX_PIXELS")
    return int(env) if env else DEFAULT_MAX_PIXELS


def _read_tiff(path: Path, limit: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise ImageLoadError(f"{path}: TIFF file has no pages")
        page = tif.pages[0]
        shape = page.shape
        n_px = int(np.prod(shape[:2])) if len(shape) >= 2 else 0
        if n_px > limit:
            raise ImageLoadError(
                f"{path}: {shape[1]}x{shape[0]} = {n_px} pixels exceeds the limit of "
                f"{limit} (set IMAGEEXTRACT_MAX_PIXELS to raise it)"
            )
        arr = page.asarray()
    # Planar (C, H, W) layouts → (H, W, C)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _read_pil(path: Path, limit: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    old_limit = Image.MAX_IMAGE_PIXELS
    # Image.open reads only the header; the size is checked below, before decoding.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise ImageLoadError(
                        f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {limit} "
                        "(set IMAGEEXTRACT_MAX_PIXELS to raise it)"
                    )
                im.seek(0)
                mode = im.mode
                if mode in ("I;16", "I;16B", "I;16L"):
                    arr = np.asarray(im).astype(np.uint16)
                elif mode == "I":
                    arr = np.asarray(im)
                    arr = arr.astype(np.uint16) if arr.max(initial=0) < 65536 and arr.min(initial=0) >= 0 else arr.astype(np.float32)
                elif mode == "F":
                    arr = np.asarray(im).astype(np.float32)
                elif mode in ("L", "RGB"):
                    arr = np.asarray(im)
                elif mode == "LA":
                    arr = np.asarray(im.convert("L"))
                elif mode == "1":
                    arr = np.asarray(im.convert("L"))
                else:  # P, RGBA, CMYK, YCbCr, ...
                    arr = np.asarray(im.convert("RGB"))
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{path}: image too large ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{path}: not a readable image (unrecognised format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{path}: cannot decode image ({err}); the file may be truncated") from err
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return arr


def load_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Read a micrograph file into an array.

    Parameters
    ----------
    path : str or path-like
        PNG, JPEG, TIFF or BMP file.
    max_pixels : int, optional
        Reject images with more pixels than this (default
        :data:`DEFAULT_MAX_PIXELS` or ``$IMAGEEXTRACT_MAX_PIXELS``).

    Returns
    -------
    image : (M, N) or (M, N, 3) ndarray
        uint8 or uint16 (float32 for floating-point TIFFs); alpha is dropped.
        An RGB image whose channels are equal is returned as greyscale.

    Raises
    ------
    ImageLoadError
        The file is missing, empty, truncated, not an image or too large.
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{p}: no such file")
    if p.is_dir():
        raise ImageLoadError(f"{p}: is a folder, expected an image file")
    if p.stat().st_size == 0:
        raise ImageLoadError(f"{p}: file is empty (0 bytes)")
    limit = _max_pixels(max_pixels)
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            arr = _read_tiff(p, limit)
        except ImageLoadError:
            raise
        except Exception as err:
            raise ImageLoadError(f"{p}: cannot decode TIFF ({err}); the file may be truncated") from err
    else:
        arr = _read_pil(p, limit)
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        elif arr.shape[2] == 2:  # grey + alpha
            arr = arr[..., 0]
        elif arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] != 3:
            raise ImageLoadError(f"{p}: unsupported channel count {arr.shape[2]}")
        if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
    if arr.ndim != 2 and arr.ndim != 3:
        raise ImageLoadError(f"{p}: unsupported image shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ImageLoadError(f"{p}: image is {arr.shape[1]}x{arr.shape[0]} pixels; at least 8x8 needed")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype not in (np.uint8, np.uint16, np.float32):
        if np.issubdtype(arr.dtype, np.integer) and arr.min(initial=0) >= 0 and arr.max(initial=0) < 65536:
            arr = arr.astype(np.uint16)
        else:
            arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def find_images(paths, *, recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of files.

    Folders contribute files whose suffix is in :data:`IMAGE_SUFFIXES`; files
    given explicitly are kept whatever their suffix (so a bad file is reported
    as a failure instead of silently skipped).
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            items = sorted(f for f in it if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            items = [p]
        for f in items:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out
