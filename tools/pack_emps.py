"""Write a smaller copy of EMPS's train split that keeps what training sees.

    python tools/pack_emps.py --data ../shared/data/emps --out .emps-pack

Training (``imageextract.segment.bpartis.train``) resizes each image so that
its median particle is ``target`` px across (its *base scale*), times a
random factor of at most 2.  An image whose base scale is well below 1 (large
particles) therefore never uses its full resolution, and this copy stores it
at ``max_zoom`` times its base scale instead (never enlarged; the default 2
is the largest zoom of the training recipe's ``scale_range``).  Images are
written in 8-bit grey when their three channels are equal (all of EMPS), as
JPEG of quality ``jpeg_quality`` (0: lossless PNG); labels as 16-bit PNGs,
resized nearest-neighbour.  Only the train split is copied (``train.csv``;
``test.csv`` is copied so that the folder has the EMPS layout, without its
images).  :func:`imageextract.datasets.load_item` reads such a copy.

What it is for: the GPU machines lent to sessions take a working tree of at
most 64 MiB, repository included (35 MB), which the full split (88 MB of RGB
PNGs) does not fit.  With the defaults the copy is about 22 MB; as PNG at
zoom 2.2 it was 42 MB.  ``pack.json`` records each image's scale.

JPEG 95 moves the grey values by 0.6 levels on average.  The shipped model
segments JPEG-95 copies of the 99 EMPS test images as well as the PNGs in the
mean (AJI+ 0.743 against 0.745, AP50 0.884 against 0.877), though single
images move by up to 0.1 either way (the working-scale choice flips).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imageextract.datasets import load_item, split_stems  # noqa: E402
from imageextract.errors import ImageExtractError  # noqa: E402

log = logging.getLogger("pack_emps")


def pack_emps(data: str | Path, out: str | Path, *, max_zoom: float = 2.0,
              target: float = 48.0, jpeg_quality: int = 95, progress: bool = True) -> dict:
    """Write the packed copy of ``data``'s train split to ``out`` (created;
    must not hold a pack already).  Returns ``{"images": n, "shrunk": n,
    "bytes": total, "scales": {stem: scale}}``, also written to
    ``out/pack.json``."""
    from PIL import Image
    from tqdm import tqdm

    from imageextract.segment.bpartis.train import base_scale

    if not max_zoom > 0 or not target > 0:
        raise ValueError(f"max_zoom and target must be > 0, got {max_zoom}, {target}")
    if not 0 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be 0 (PNG) to 100, got {jpeg_quality}")
    data, out = Path(data), Path(out)
    stems = split_stems(data, "train")
    if (out / "pack.json").exists():
        raise FileExistsError(f"{out} already holds a pack; remove it or choose another --out")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "segmaps").mkdir(exist_ok=True)
    for name in ("train.csv", "test.csv"):
        shutil.copyfile(data / name, out / name)
    scales = {}
    for stem in tqdm(stems, desc="pack", disable=not progress):
        rgb, lab = load_item(data, stem)
        s = min(1.0, max_zoom * base_scale(lab, target))
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        img = Image.fromarray(rgb[..., 0] if grey else rgb)
        seg = Image.fromarray(lab.astype(np.uint16))
        if s < 1.0:
            size = (max(1, round(lab.shape[1] * s)), max(1, round(lab.shape[0] * s)))
            img = img.resize(size, Image.Resampling.LANCZOS)
            seg = seg.resize(size, Image.Resampling.NEAREST)
        if jpeg_quality:
            img.save(out / "images" / f"{stem}.jpg", quality=jpeg_quality)
        else:
            img.save(out / "images" / f"{stem}.png", optimize=True)
        seg.save(out / "segmaps" / f"{stem}.png", optimize=True)
        scales[stem] = s
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary = {"images": len(stems), "shrunk": sum(s < 1.0 for s in scales.values()),
               "bytes": total, "max_zoom": max_zoom, "target": target,
               "jpeg_quality": jpeg_quality, "scales": scales}
    (out / "pack.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "emps"))
    ap.add_argument("--out", default=str(ROOT / ".emps-pack"))
    ap.add_argument("--max-zoom", type=float, default=2.0,
                    help="store each image at most at this multiple of its base scale")
    ap.add_argument("--target", type=float, default=48.0,
                    help="median particle diameter (px) at the base scale, as in training")
    ap.add_argument("--jpeg-quality", type=int, default=95,
                    help="JPEG quality of the images; 0 writes lossless PNGs")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        s = pack_emps(args.data, args.out, max_zoom=args.max_zoom, target=args.target,
                      jpeg_quality=args.jpeg_quality, progress=not args.no_progress)
    except (OSError, ValueError, ImageExtractError) as err:
        log.error("pack_emps: %s", err)
        return 2
    log.info("%d images (%d shrunk) in %s: %.1f MB", s["images"], s["shrunk"], args.out,
             s["bytes"] / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
