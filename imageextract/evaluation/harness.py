"""Score a backend, or label maps on disk, on an EMPS-layout data set.

:func:`run_evaluation` is what ``imageextract evaluate`` calls.  Its result
is the ``evaluate --json`` contract of ``docs/DESIGN.md``::

    {"backend": str, "split": str, "n_images": int,
     "seconds_per_image": float,
     "mean": {"ap", "ap50", "ap75", "mean_iou", "aji_plus", "coco_ap", "pq", ...},
     "per_image": [{"stem", "ap", "ap50", "ap75", "mean_iou", "aji_plus",
                    "n_true", "n_pred", "seconds", ...}, ...]}

Extra keys (``median_seconds_per_image``, ``cpu_seconds_per_image``,
``weights``, per-image ``coco_ap``, ``pq``, ``tp50``/``fp50``/``fn50`` and
``cpu_seconds``) may be added; the listed ones are never renamed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import split_stems
from ..errors import ImageExtractError
from .metrics import all_metrics

logger = logging.getLogger(__name__)

#: Keys averaged into ``result["mean"]`` (the first seven are the contract).
MEAN_KEYS = (
    "ap", "ap50", "ap75", "mean_iou", "aji_plus", "coco_ap", "pq",
    "n_true", "n_pred", "tp50", "fp50", "fn50",
)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label map saved as an (8- or 16-bit) greyscale PNG.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    (M, N) ndarray of int32
        Instance labels, 0 is background (first channel of a colour file).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ImageExtractError(f"label map {path} not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except OSError as err:
        raise ImageExtractError(f"cannot read label map {path}: {err}") from err
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int32)


def write_label_png(labels: np.ndarray, path: str | Path) -> None:
    """Save ``(M, N)`` instance labels as a 16-bit greyscale PNG.

    Labels must lie in 0..65535.
    """
    from PIL import Image

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ImageExtractError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ImageExtractError(
            f"labels must lie in 0..65535 for a 16-bit PNG, got {labels.min()}..{labels.max()}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint16)).save(path)


def _truth(data_dir: Path, stem: str) -> np.ndarray:
    path = data_dir / "segmaps" / f"{stem}.png"
    if not path.is_file():
        raise ImageExtractError(f"ground truth {path} not found")
    return read_label_png(path)


def _image(data_dir: Path, stem: str) -> np.ndarray:
    from PIL import Image

    path = data_dir / "images" / f"{stem}.png"
    if not path.is_file():
        raise ImageExtractError(f"image {path} not found")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def run_evaluation(
    data_dir: str | Path,
    *,
    split: str = "test",
    backend: str | None = None,
    predictions: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    backend_options: dict[str, Any] | None = None,
    save_predictions: str | Path | None = None,
    stems: list[str] | None = None,
) -> dict[str, Any]:
    """Segmentation metrics of a backend, or of saved label maps, on one split.

    Parameters
    ----------
    data_dir : str or Path
        EMPS-layout folder (``images/``, ``segmaps/``, ``train.csv``,
        ``test.csv``).
    split : {"test", "train", "val", "train-fit"}
        Which images to score (see :mod:`imageextract.datasets`).
    backend : str or None
        Registry name of a segmentation backend.  It is built once (loading
        is not timed); each ``predict`` call is timed with
        :func:`time.perf_counter` (wall clock) and :func:`time.process_time`
        (CPU seconds of every thread of this process).
    predictions : str or Path or None
        Folder of 16-bit PNG label maps ``<stem>.png`` to score instead;
        their seconds are 0.  Exactly one of ``backend`` and ``predictions``.
    limit : int or None
        Score only the first ``limit`` images of the split.
    progress : bool
        Show a progress bar.
    backend_options : dict or None
        Keyword arguments of the backend's constructor.
    save_predictions : str or Path or None
        With ``backend``: also save each predicted label map there as
        ``<stem>.png`` (16-bit), ready for ``predictions=``.
    stems : list of str or None
        Score these stems instead of the whole split (``limit`` still applies).

    Returns
    -------
    dict
        ``backend`` (the name, or ``"predictions:<folder name>"``), ``split``,
        ``n_images``, ``seconds_per_image`` (mean), ``mean`` (per-image
        metrics averaged) and ``per_image`` (one dict per image); see the
        module docstring.

    Raises
    ------
    ImageExtractError
        Both or neither of ``backend``/``predictions``, an unknown split, a
        missing image, ground truth or prediction file, or a prediction whose
        shape differs from its ground truth.
    """
    from tqdm import tqdm

    if (backend is None) == (predictions is None):
        raise ImageExtractError(
            "give exactly one of backend=NAME (segment the images) or "
            "predictions=DIR (score saved label maps)"
        )
    if limit is not None and int(limit) < 1:
        raise ImageExtractError(f"limit must be a positive number of images, got {limit}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ImageExtractError(f"data folder {data_dir} not found")
    stems = list(stems) if stems is not None else split_stems(data_dir, split)
    if limit is not None:
        stems = stems[: int(limit)]
    if not stems:
        raise ImageExtractError(f"split {split!r} of {data_dir} has no images")

    segmenter = None
    weights = "none"
    if predictions is not None:
        pred_dir = Path(predictions)
        if not pred_dir.is_dir():
            raise ImageExtractError(f"predictions folder {pred_dir} not found")
        name = f"predictions:{pred_dir.resolve().name}"
    else:
        from ..segment import get_segmenter

        segmenter = get_segmenter(backend, **(backend_options or {}))
        name = str(backend)
        weights = str(getattr(segmenter, "weights", "none"))
        logger.info("evaluating backend %s (weights %s) on %d images", name, weights, len(stems))
    save_dir = Path(save_predictions) if save_predictions is not None else None

    per_image: list[dict[str, Any]] = []
    for stem in tqdm(stems, desc=f"evaluate {name}", unit="image", disable=not progress):
        gt = _truth(data_dir, stem)
        scores = None
        seconds = cpu_seconds = 0.0
        if segmenter is None:
            path = pred_dir / f"{stem}.png"
            if not path.is_file():
                raise ImageExtractError(
                    f"prediction {path} is missing: the predictions folder needs one "
                    f"16-bit PNG label map per image of split {split!r}"
                )
            pred = read_label_png(path)
        else:
            image = _image(data_dir, stem)
            c0, t0 = time.process_time(), time.perf_counter()
            seg = segmenter.predict(image)
            seconds = time.perf_counter() - t0
            cpu_seconds = time.process_time() - c0
            pred = np.asarray(seg.labels)
            scores = getattr(seg, "scores", None)
            if scores is not None and np.asarray(scores).size != np.count_nonzero(np.unique(pred)):
                scores = None  # labels not 1..K: rank by area instead
            if save_dir is not None:
                write_label_png(pred, save_dir / f"{stem}.png")
        if pred.shape != gt.shape:
            raise ImageExtractError(
                f"prediction for {stem!r} has shape {pred.shape}, its ground truth {gt.shape}"
            )
        m = all_metrics(gt, pred, scores)
        row: dict[str, Any] = {"stem": stem}
        row.update({k: (int(v) if isinstance(v, (int, np.integer)) else float(v)) for k, v in m.items()})
        row["seconds"] = float(seconds)
        row["cpu_seconds"] = float(cpu_seconds)
        per_image.append(row)
        logger.debug("%s: %s", stem, row)

    secs = [r["seconds"] for r in per_image]
    result: dict[str, Any] = {
        "backend": name,
        "split": split,
        "n_images": len(per_image),
        "seconds_per_image": _mean(secs),
        "median_seconds_per_image": float(np.median(secs)),
        "cpu_seconds_per_image": _mean([r["cpu_seconds"] for r in per_image]),
        "weights": weights,
        "mean": {k: _mean([r[k] for r in per_image]) for k in MEAN_KEYS},
        "per_image": per_image,
    }
    return result


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write an evaluation result as indented JSON; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def format_summary(result: dict[str, Any]) -> str:
    """A short text table of the means of an evaluation result.

    Examples
    --------
    >>> r = {"backend": "classical", "split": "test", "n_images": 2,
    ...      "seconds_per_image": 0.5,
    ...      "mean": dict(ap=0.5, ap50=0.9, ap75=0.8, mean_iou=0.7,
    ...                   aji_plus=0.6, coco_ap=0.4, pq=0.65)}
    >>> print(format_summary(r))
    backend classical  split test  images 2  seconds/image 0.500
       AP   AP50   AP75   mIoU   AJI+   COCO     PQ
    0.500  0.900  0.800  0.700  0.600  0.400  0.650
    """
    m = result["mean"]
    head = (
        f"backend {result['backend']}  split {result['split']}  "
        f"images {result['n_images']}  seconds/image {result['seconds_per_image']:.3f}"
    )
    cols = [("AP", "ap"), ("AP50", "ap50"), ("AP75", "ap75"), ("mIoU", "mean_iou"),
            ("AJI+", "aji_plus"), ("COCO", "coco_ap"), ("PQ", "pq")]
    names = "  ".join(f"{c:>5}" for c, _ in cols)
    values = "  ".join(f"{m[k]:.3f}" for _, k in cols)
    return "\n".join([head, names, values])


__all__ = ["format_summary", "read_label_png", "run_evaluation", "write_json", "write_label_png"]
