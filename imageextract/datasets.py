"""Loaders for annotated micrograph collections (EMPS layout).

EMPS layout (``../shared/data/emps``): ``images/<stem>.png`` (RGB),
``segmaps/<stem>.png`` (16-bit instance labels, 0 = background),
``train.csv`` / ``test.csv`` (one stem per line, no header).

Splits: ``"train"`` and ``"test"`` are the official ones.  ``"val"`` is a
fixed 10 % of ``train`` chosen by a hash of the stem (independent of file
order), and ``"train-fit"`` is ``train`` without ``val``: tune on ``val``,
report on ``test``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .errors import ImageExtractError

SPLITS = ("train", "test", "val", "train-fit")
#: File suffixes of an item's image, in the order they are looked for.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _read_stems(csv_path: Path) -> list[str]:
    stems = []
    for line in csv_path.read_text().splitlines():
        s = line.strip().split(",")[0].strip()
        if s and s.lower() not in ("stem", "filename", "name"):
            stems.append(Path(s).stem)
    return stems


def is_val_stem(stem: str, *, fraction: float = 0.1) -> bool:
    """Whether ``stem`` of the train split belongs to the validation split."""
    h = int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16)
    return (h % 1000) < fraction * 1000


def split_stems(root: str | Path, split: str) -> list[str]:
    """Stems of ``split`` in an EMPS-layout folder ``root``.

    >>> len(split_stems("../shared/data/emps", "test"))  # doctest: +SKIP
    99
    """
    root = Path(root)
    if split not in SPLITS:
        raise ImageExtractError(f"unknown split {split!r}; expected one of {SPLITS}")
    base = "test" if split == "test" else "train"
    csv_path = root / f"{base}.csv"
    if not csv_path.is_file():
        raise ImageExtractError(
            f"{csv_path} not found: --data must be a folder with images/, segmaps/, "
            "train.csv and test.csv (EMPS layout)"
        )
    stems = _read_stems(csv_path)
    if split == "val":
        stems = [s for s in stems if is_val_stem(s)]
    elif split == "train-fit":
        stems = [s for s in stems if not is_val_stem(s)]
    return stems


def load_item(root: str | Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(M, N, 3) uint8`` and labels ``(M, N) int32`` of one EMPS stem."""
    from PIL import Image

    root = Path(root)
    # EMPS ships PNGs; a packed copy (tools/pack_emps.py) may hold JPEGs
    img_path = next((p for ext in IMAGE_SUFFIXES
                     if (p := root / "images" / f"{stem}{ext}").is_file()),
                    root / "images" / f"{stem}.png")
    seg_path = root / "segmaps" / f"{stem}.png"
    for path in (img_path, seg_path):
        if not path.is_file():
            raise ImageExtractError(f"{path} not found: item {stem!r} of {root} needs an image "
                                    f"in images/ ({', '.join(IMAGE_SUFFIXES)}) and a label "
                                    "PNG in segmaps/")
    with Image.open(img_path) as im:
        image = np.asarray(im.convert("RGB"))
    with Image.open(seg_path) as sm:
        labels = np.asarray(sm).astype(np.int32)
    if labels.ndim == 3:
        labels = labels[..., 0]
    return image, labels
