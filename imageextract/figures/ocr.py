"""OCR engines behind one small interface.

An engine reads one line of text from a small crop::

    class OCREngine(Protocol):
        name: str
        def read_line(self, image: np.ndarray) -> tuple[str, float]: ...

Two engines ship:

``rapidocr``
    PaddleOCR recognition models run with ONNX Runtime (``pip install rapidocr
    onnxruntime``).  The models are inside the wheel, so nothing is
    downloaded; only the recognition network is used (the crop is already a
    text line).  The default: on our synthetic labels it is the more accurate
    and the faster engine (``benchmarks/bench_figures.py --ocr``).
``tesseract``
    Debian's ``tesseract-ocr`` through ``pytesseract``.  The crop is upscaled
    3× and made dark-on-light first.

:func:`get_engine` returns an engine by name (``"auto"``: the first that is
installed) or None, with a logged warning, when none is installed: callers
then report "no scale bar read" instead of failing.  Importing this module
imports neither engine.
"""

from __future__ import annotations

import logging
import shutil
import threading
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ImageExtractError

logger = logging.getLogger(__name__)

ENGINE_NAMES = ("rapidocr", "tesseract")
DEFAULT_ENGINE = "rapidocr"


class OCRUnavailableError(ImageExtractError):
    """The requested OCR engine is not installed."""


@runtime_checkable
class OCREngine(Protocol):
    """Reads one line of text from a small image."""

    name: str

    def read_line(self, image: np.ndarray) -> tuple[str, float]:
        """Text and confidence (0..1) of a single-line crop.

        Parameters
        ----------
        image : (M, N) ndarray of uint8
            Grey crop holding one line of text, any polarity.
        """
        ...


def _to_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        img = (img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img


def dark_on_light(image: np.ndarray) -> np.ndarray:
    """Invert a grey crop when its text is light on a dark background.

    The background is taken as the median of the crop's border pixels.

    >>> int(dark_on_light(np.zeros((5, 5), np.uint8)).max())
    255
    """
    img = _to_uint8(image)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    if np.median(border) < 128:
        img = 255 - img
    return img


def _pad(img: np.ndarray, px: int) -> np.ndarray:
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    return np.pad(img, px, mode="constant", constant_values=int(np.median(border)))


class RapidOCREngine:
    """PaddleOCR recognition network via ``rapidocr`` + ONNX Runtime (CPU).

    Parameters
    ----------
    threads : int
        ONNX Runtime intra-op threads (1 keeps it polite on shared machines).
    """

    name = "rapidocr"

    def __init__(self, *, threads: int = 1) -> None:
        try:
            from rapidocr import RapidOCR  # noqa: PLC0415
        except ImportError as err:
            raise OCRUnavailableError(
                "rapidocr is not installed; `pip install rapidocr onnxruntime`") from err
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        try:
            self._engine = RapidOCR(params={
                "Global.use_det": False, "Global.use_cls": False,
                "Global.log_level": "error",
                "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            })
        except Exception as err:  # missing onnxruntime, broken model files, ...
            raise OCRUnavailableError(f"rapidocr could not start: {err}") from err
        self._lock = threading.Lock()

    def read_line(self, image: np.ndarray) -> tuple[str, float]:
        img = _to_uint8(image)
        if img.shape[0] < 4 or img.shape[1] < 4:
            return "", 0.0
        img = _pad(img, 2)
        if img.shape[0] < 24:  # small text: the network reads it better upscaled
            from PIL import Image  # noqa: PLC0415

            f = int(min(4, np.ceil(36.0 / img.shape[0])))
            img = np.asarray(Image.fromarray(img).resize((img.shape[1] * f, img.shape[0] * f),
                                                         Image.Resampling.LANCZOS))
        rgb = np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2))
        with self._lock:
            out = self._engine(rgb, use_det=False, use_cls=False, use_rec=True)
        txts = getattr(out, "txts", None) or ()
        scores = getattr(out, "scores", None) or ()
        if not txts:
            return "", 0.0
        return str(txts[0]), float(scores[0]) if scores else 0.0


class TesseractEngine:
    """Tesseract (Debian ``tesseract-ocr``) via ``pytesseract``, single-line mode.

    Parameters
    ----------
    upscale : int
        Integer zoom before recognition (Tesseract wants ~30 px letters).
    """

    name = "tesseract"

    def __init__(self, *, upscale: int = 3) -> None:
        try:
            import pytesseract  # noqa: PLC0415
        except ImportError as err:
            raise OCRUnavailableError("pytesseract is not installed; `pip install pytesseract` "
                                      "and `apt-get install tesseract-ocr`") from err
        if shutil.which("tesseract") is None:
            raise OCRUnavailableError("the tesseract program is not installed; "
                                      "`apt-get install tesseract-ocr`")
        self._tess = pytesseract
        self.upscale = int(upscale)

    def read_line(self, image: np.ndarray) -> tuple[str, float]:
        from PIL import Image  # noqa: PLC0415

        img = dark_on_light(image)
        if img.shape[0] < 4 or img.shape[1] < 4:
            return "", 0.0
        img = _pad(img, 3)
        pil = Image.fromarray(img)
        if self.upscale > 1:
            pil = pil.resize((img.shape[1] * self.upscale, img.shape[0] * self.upscale),
                             Image.Resampling.BICUBIC)
        data = self._tess.image_to_data(pil, config="--psm 7",
                                        output_type=self._tess.Output.DICT)
        words, confs = [], []
        for txt, conf in zip(data.get("text", []), data.get("conf", [])):
            if str(txt).strip():
                words.append(str(txt).strip())
                confs.append(max(float(conf), 0.0) / 100.0)
        if not words:
            return "", 0.0
        return " ".join(words), float(np.mean(confs))


_FACTORIES = {"rapidocr": RapidOCREngine, "tesseract": TesseractEngine}
_cache: dict[str, OCREngine | None] = {}
_cache_lock = threading.Lock()


def available_engines() -> list[str]:
    """Names of the OCR engines that can start on this machine."""
    return [n for n in ENGINE_NAMES if _try(n) is not None]


def _try(name: str) -> OCREngine | None:
    with _cache_lock:
        if name not in _cache:
            try:
                _cache[name] = _FACTORIES[name]()
            except OCRUnavailableError as err:
                logger.debug("OCR engine %s unavailable: %s", name, err)
                _cache[name] = None
        return _cache[name]


_warned = False


def get_engine(name: str | OCREngine | None = None) -> OCREngine | None:
    """An OCR engine by name, or None when no engine is installed.

    Parameters
    ----------
    name : {"auto", "rapidocr", "tesseract"}, OCREngine or None
        None or ``"auto"``: ``$IMAGEEXTRACT_OCR`` if set, else the first
        installed of :data:`ENGINE_NAMES`.  An engine object is returned as is.

    Returns
    -------
    OCREngine or None
        None (and one logged warning) when ``"auto"`` finds no engine.

    Raises
    ------
    OCRUnavailableError
        A named engine is not installed.
    ImageExtractError
        The name is unknown (the message lists the known names).
    """
    global _warned
    import os  # noqa: PLC0415

    if name is not None and not isinstance(name, str):
        return name
    if name in (None, "auto"):
        name = os.environ.get("IMAGEEXTRACT_OCR") or "auto"
    if name == "auto":
        for n in ENGINE_NAMES:
            eng = _try(n)
            if eng is not None:
                return eng
        if not _warned:
            logger.warning("no OCR engine installed (tried %s); scale bars cannot be read. "
                           "Install `rapidocr onnxruntime` or `pytesseract` + tesseract-ocr.",
                           ", ".join(ENGINE_NAMES))
            _warned = True
        return None
    if name not in _FACTORIES:
        raise ImageExtractError(f"unknown OCR engine {name!r}; known engines: "
                                f"{', '.join(ENGINE_NAMES)}")
    eng = _try(name)
    if eng is None:
        _FACTORIES[name]()  # raises OCRUnavailableError with the reason
    return eng
