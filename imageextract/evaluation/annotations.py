"""Read instance annotations made with common tools into label maps.

So that users can evaluate (and train) on their own data:

- :func:`load_via_json` -- VGG Image Annotator (VIA 1 and 2) projects and
  exports: polygon, polyline, rect, circle and ellipse regions;
- :func:`load_coco` -- COCO instance JSON: polygon, uncompressed RLE and
  compressed RLE segmentations (decoded here, without pycocotools);
- :func:`emps_regions` / :func:`emps_polygons` -- the VIA regions stored in
  EMPS' ``metadata.csv``.

Coordinates are in pixel-edge units, as VIA and COCO use them: pixel
``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, and a pixel is filled when its
centre lies inside the shape.  Instances are numbered 1..K in file order;
where shapes overlap, the later one wins.
"""

from __future__ import annotations

import ast
import csv
import functools
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageExtractError

logger = logging.getLogger(__name__)

Shape = tuple[int, int]


# --------------------------------------------------------------------------
# rasterization


def _fill_polygon(labels: np.ndarray, xs, ys, value: int) -> None:
    from skimage.draw import polygon

    xs = np.asarray(xs, dtype=np.float64) - 0.5
    ys = np.asarray(ys, dtype=np.float64) - 0.5
    if xs.size < 3 or xs.size != ys.size:
        raise ImageExtractError(
            f"a polygon needs at least 3 vertices and as many x as y values, got {xs.size} and {ys.size}"
        )
    rr, cc = polygon(ys, xs, shape=labels.shape)
    labels[rr, cc] = value


def _fill_ellipse(labels: np.ndarray, cx, cy, rx, ry, theta, value: int) -> None:
    """Ellipse with semi-axis ``rx`` along direction ``theta`` (radians, from
    +x towards +y, i.e. clockwise on screen as VIA draws it)."""
    cx, cy, rx, ry, theta = (float(v) for v in (cx, cy, rx, ry, theta))
    if rx <= 0 or ry <= 0:
        return
    r_max = max(rx, ry)
    h, w = labels.shape
    r0, r1 = max(int(np.floor(cy - r_max)) - 1, 0), min(int(np.ceil(cy + r_max)) + 1, h)
    c0, c1 = max(int(np.floor(cx - r_max)) - 1, 0), min(int(np.ceil(cx + r_max)) + 1, w)
    if r0 >= r1 or c0 >= c1:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1]
    dx = xx + 0.5 - cx
    dy = yy + 0.5 - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    labels[r0:r1, c0:c1][inside] = value


def rasterize_via_regions(regions: Iterable[Mapping[str, Any]], shape: Shape) -> np.ndarray:
    """Label map of VIA regions.

    Parameters
    ----------
    regions : iterable of dict
        VIA regions, each with ``shape_attributes`` (``name`` one of
        polygon, polyline, rect, circle, ellipse; points are skipped).
    shape : (M, N)
        Height and width of the image.

    Returns
    -------
    (M, N) ndarray of int32
        Region ``k`` (in order, counting only area shapes) has label ``k``.

    Examples
    --------
    >>> reg = {"shape_attributes": {"name": "rect", "x": 1, "y": 0, "width": 2, "height": 1}}
    >>> rasterize_via_regions([reg], (2, 4)).tolist()
    [[0, 1, 1, 0], [0, 0, 0, 0]]
    """
    h, w = (int(v) for v in shape)
    labels = np.zeros((h, w), dtype=np.int32)
    k = 0
    for region in regions:
        attrs = region.get("shape_attributes", region)
        name = attrs.get("name")
        try:
            if name in ("polygon", "polyline"):
                k += 1
                _fill_polygon(labels, attrs["all_points_x"], attrs["all_points_y"], k)
            elif name == "rect":
                k += 1
                x, y = float(attrs["x"]), float(attrs["y"])
                xs = [x, x + float(attrs["width"]), x + float(attrs["width"]), x]
                ys = [y, y, y + float(attrs["height"]), y + float(attrs["height"])]
                _fill_polygon(labels, xs, ys, k)
            elif name == "circle":
                k += 1
                r = attrs["r"]
                _fill_ellipse(labels, attrs["cx"], attrs["cy"], r, r, 0.0, k)
            elif name == "ellipse":
                k += 1
                _fill_ellipse(labels, attrs["cx"], attrs["cy"], attrs["rx"], attrs["ry"],
                              attrs.get("theta", 0.0), k)
            else:
                logger.warning("skipping VIA region of shape %r (no area)", name)
        except KeyError as err:
            raise ImageExtractError(f"VIA {name} region lacks attribute {err}") from err
    return labels


# --------------------------------------------------------------------------
# VIA


def _image_shape(image_dir: Path, filename: str) -> Shape | None:
    from PIL import Image

    path = image_dir / filename
    if not path.is_file():
        return None
    with Image.open(path) as im:  # reads the header only
        w, h = im.size
    return (h, w)


def _via_entries(data: Any, path: Path) -> list[dict[str, Any]]:
    if not isinstance(data, dict):
        raise ImageExtractError(f"{path} is not a VIA project or export (expected a JSON object)")
    if "_via_img_metadata" in data:  # VIA 2 project
        data = data["_via_img_metadata"]
    elif "file" in data and "metadata" in data:
        raise ImageExtractError(
            f"{path} looks like a VIA 3 project; export it from VIA as 'COCO' or "
            "'VIA 2 JSON' and load that instead"
        )
    entries = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or "filename" not in entry:
            raise ImageExtractError(
                f"{path}: entry {key!r} has no 'filename'; not a VIA 1/2 project or export"
            )
        regions = entry.get("regions", [])
        if isinstance(regions, dict):  # VIA 1: {"0": region, "1": ...}
            regions = [regions[k] for k in sorted(regions, key=lambda s: int(s) if str(s).isdigit() else s)]
        entries.append({"filename": entry["filename"], "regions": regions})
    return entries


def load_via_json(
    path: str | Path,
    images: str | Path | Mapping[str, Shape],
    *,
    missing: str = "error",
) -> dict[str, np.ndarray]:
    """Label maps of every image of a VIA (1 or 2) project or JSON export.

    Parameters
    ----------
    path : str or Path
        The VIA JSON file.
    images : str, Path or mapping
        Folder holding the annotated images (their sizes are read from the
        file headers), or a mapping ``filename -> (height, width)``.
    missing : {"error", "skip"}
        What to do with an entry whose image size is unknown.

    Returns
    -------
    dict of str to (M, N) ndarray of int32
        One label map per ``filename``; regions numbered 1..K in file order.
        An image listed twice (VIA keys are filename + size) keeps its last
        entry.

    Raises
    ------
    ImageExtractError
        Unreadable JSON, an unknown layout, or (``missing="error"``) an image
        whose size is unknown.
    """
    if missing not in ("error", "skip"):
        raise ImageExtractError(f"missing must be 'error' or 'skip', got {missing!r}")
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ImageExtractError(f"cannot read VIA file {path}: {err}") from err
    image_dir = None if isinstance(images, Mapping) else Path(images)
    if image_dir is not None and not image_dir.is_dir():
        raise ImageExtractError(f"image folder {image_dir} not found")
    out: dict[str, np.ndarray] = {}
    for entry in _via_entries(data, path):
        name = entry["filename"]
        if image_dir is None:
            shape = images.get(name)  # type: ignore[union-attr]
        else:
            shape = _image_shape(image_dir, name)
        if shape is None:
            if missing == "skip":
                logger.warning("skipping %s: image size unknown", name)
                continue
            where = "the shape mapping" if image_dir is None else str(image_dir)
            raise ImageExtractError(
                f"size of annotated image {name!r} unknown: not in {where} "
                "(pass missing='skip' to leave such images out)"
            )
        out[name] = rasterize_via_regions(entry["regions"], shape)
    return out


# --------------------------------------------------------------------------
# COCO


def rle_counts_from_string(s: str | bytes) -> list[int]:
    """Decode the run lengths of a compressed COCO RLE string.

    Inverse of :func:`rle_counts_to_string` (pycocotools' ``rleFrString``).

    >>> rle_counts_from_string("T3")
    [100]
    """
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    n = len(s)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ImageExtractError(f"truncated compressed RLE string {s!r}")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts_to_string(counts: Iterable[int]) -> str:
    """Encode run lengths as a compressed COCO RLE string (``rleToString``).

    >>> rle_counts_to_string([5, 2, 3, 1])
    '523O'
    """
    counts = [int(c) for c in counts]
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Binary mask of a COCO RLE (``counts`` a list, or a compressed string).

    Parameters
    ----------
    rle : dict
        ``{"size": [height, width], "counts": [...] or "..."}``; runs
        alternate background/foreground, starting with background, over the
        pixels in column-major (Fortran) order.

    Returns
    -------
    (height, width) ndarray of bool

    Examples
    --------
    >>> rle_decode({"size": [2, 2], "counts": [1, 2, 1]}).astype(int).tolist()
    [[0, 1], [1, 0]]
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise ImageExtractError(f"malformed RLE {rle!r}: needs 'size' [h, w] and 'counts'") from err
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ImageExtractError("RLE has negative run lengths")
    if int(counts.sum()) != h * w:
        raise ImageExtractError(f"RLE run lengths sum to {int(counts.sum())}, expected {h} x {w} = {h * w}")
    flat = np.repeat((np.arange(counts.size) % 2).astype(bool), counts)
    return flat.reshape((w, h)).T


def rle_encode(mask: np.ndarray, *, compressed: bool = True) -> dict[str, Any]:
    """COCO RLE of a binary ``(M, N)`` mask (``counts`` a string if ``compressed``).

    >>> rle_encode(np.array([[0, 1], [1, 0]]), compressed=False)
    {'size': [2, 2], 'counts': [1, 2, 1]}
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ImageExtractError(f"mask must be 2-D, got shape {mask.shape}")
    flat = mask.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    out: dict[str, Any] = {"size": [int(mask.shape[0]), int(mask.shape[1])]}
    out["counts"] = rle_counts_to_string(counts) if compressed else [int(c) for c in counts]
    return out


def _coco_mask(seg: Any, shape: Shape, ann_id: Any) -> np.ndarray:
    if isinstance(seg, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        mask = np.zeros(shape, dtype=np.int32)
        for poly in seg:
            xy = np.asarray(poly, dtype=np.float64).reshape(-1)
            if xy.size < 6 or xy.size % 2:
                raise ImageExtractError(
                    f"annotation {ann_id}: a polygon needs an even number (>= 6) of coordinates"
                )
            _fill_polygon(mask, xy[0::2], xy[1::2], 1)
        return mask.astype(bool)
    if isinstance(seg, dict):
        mask = rle_decode(seg)
        if mask.shape != tuple(shape):
            raise ImageExtractError(
                f"annotation {ann_id}: RLE size {mask.shape} differs from its image {tuple(shape)}"
            )
        return mask
    raise ImageExtractError(f"annotation {ann_id}: unknown segmentation of type {type(seg).__name__}")


def load_coco(path: str | Path, *, include_crowd: bool = False) -> dict[str, np.ndarray]:
    """Label maps of every image of a COCO instance-annotation file.

    Parameters
    ----------
    path : str or Path
        COCO JSON with ``images`` (``id``, ``file_name``, ``height``,
        ``width``) and ``annotations`` (``image_id``, ``segmentation``:
        polygons, uncompressed RLE or compressed RLE).
    include_crowd : bool
        Also rasterize ``iscrowd: 1`` annotations (left out by default: a
        crowd region is not one instance).

    Returns
    -------
    dict of str to (height, width) ndarray of int32
        One label map per ``file_name`` (images without annotations are all
        0); annotations are numbered 1..K per image in file order, categories
        are not kept.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = data["images"]
        annotations = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ImageExtractError(f"cannot read COCO file {path}: {err!r}") from err
    by_id: dict[Any, tuple[str, np.ndarray]] = {}
    for im in images:
        try:
            by_id[im["id"]] = (
                str(im["file_name"]),
                np.zeros((int(im["height"]), int(im["width"])), dtype=np.int32),
            )
        except KeyError as err:
            raise ImageExtractError(f"{path}: image entry {im!r} lacks {err}") from err
    counters = {k: 0 for k in by_id}
    for ann in annotations:
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        img_id = ann.get("image_id")
        if img_id not in by_id:
            raise ImageExtractError(
                f"{path}: annotation {ann.get('id')} refers to unknown image_id {img_id!r}"
            )
        _, labels = by_id[img_id]
        mask = _coco_mask(ann.get("segmentation"), labels.shape, ann.get("id"))
        counters[img_id] += 1
        labels[mask] = counters[img_id]
    out = {}
    for name, labels in by_id.values():
        if name in out:
            raise ImageExtractError(f"{path}: file_name {name!r} appears twice")
        out[name] = labels
    return out


# --------------------------------------------------------------------------
# EMPS metadata.csv


@functools.lru_cache(maxsize=4)
def _emps_metadata(csv_path: str, mtime: float) -> dict[str, str]:
    csv.field_size_limit(1 << 30)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {Path(row["filename"]).stem: row["regions"] for row in csv.DictReader(fh)}


def emps_regions(root: str | Path, stem: str) -> list[dict[str, Any]]:
    """The VIA regions of EMPS image ``stem`` (from ``root/metadata.csv``).

    The ``regions`` column holds a Python-literal list of VIA regions; it is
    parsed with :func:`ast.literal_eval`.  Vertex coordinates are in the
    pixels of the original figure, before EMPS resized it to 512 px height
    (that scale is not recorded), so they do not overlay ``images/<stem>.png``
    without rescaling.
    """
    csv_path = Path(root) / "metadata.csv"
    if not csv_path.is_file():
        raise ImageExtractError(f"{csv_path} not found (EMPS layout expected)")
    table = _emps_metadata(str(csv_path.resolve()), csv_path.stat().st_mtime)
    if stem not in table:
        raise ImageExtractError(f"stem {stem!r} not in {csv_path}")
    try:
        regions = ast.literal_eval(table[stem])
    except (ValueError, SyntaxError) as err:
        raise ImageExtractError(f"{csv_path}: regions of {stem!r} are not a Python literal") from err
    if not isinstance(regions, list):
        raise ImageExtractError(f"{csv_path}: regions of {stem!r} are not a list")
    return regions


def emps_polygons(
    root: str | Path, stem: str, *, scale: float = 1.0, n_vertices: int = 64
) -> list[np.ndarray]:
    """Outline of each annotated particle of EMPS image ``stem``.

    Parameters
    ----------
    root : str or Path
        EMPS folder with ``metadata.csv``.
    stem : str
        Image stem (``metadata.csv`` lists ``<stem>.png``).
    scale : float
        Multiply the coordinates by this (they are in the original figure's
        pixels; see :func:`emps_regions`).
    n_vertices : int
        Vertices of the polygons that approximate circle and ellipse regions.

    Returns
    -------
    list of (K, 2) ndarray of float64
        ``(x, y)`` vertices in pixel-edge units, one array per particle, in
        annotation order.  Use :func:`rasterize_via_regions` with
        :func:`emps_regions` for a label map.
    """
    out = []
    t = np.linspace(0.0, 2.0 * np.pi, int(n_vertices), endpoint=False)
    for region in emps_regions(root, stem):
        a = region.get("shape_attributes", {})
        name = a.get("name")
        if name in ("polygon", "polyline"):
            xy = np.column_stack([a["all_points_x"], a["all_points_y"]]).astype(np.float64)
        elif name in ("circle", "ellipse"):
            rx = float(a.get("rx", a.get("r", 0.0)))
            ry = float(a.get("ry", a.get("r", 0.0)))
            th = float(a.get("theta", 0.0))
            u, v = rx * np.cos(t), ry * np.sin(t)
            xy = np.column_stack([
                float(a["cx"]) + u * np.cos(th) - v * np.sin(th),
                float(a["cy"]) + u * np.sin(th) + v * np.cos(th),
            ])
        elif name == "rect":
            x, y, w, h = (float(a[k]) for k in ("x", "y", "width", "height"))
            xy = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        else:
            logger.warning("%s: skipping region of shape %r", stem, name)
            continue
        out.append(xy * float(scale))
    return out


__all__ = [
    "emps_polygons",
    "emps_regions",
    "load_coco",
    "load_via_json",
    "rasterize_via_regions",
    "rle_counts_from_string",
    "rle_counts_to_string",
    "rle_decode",
    "rle_encode",
]
