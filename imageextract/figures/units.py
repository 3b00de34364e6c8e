"""Parse scale-bar labels such as ``"100 nm"``, ``"0.5 µm"`` or ``"50 Å"``.

OCR engines confuse characters in predictable ways: the micro sign comes back
as ``u``, ``y``, ``p`` or ``j``; ``Å`` as ``A`` or ``Ä``; ``0`` as ``O``; ``1`` as
``l`` or ``I``; ``5`` as ``S``.  :func:`parse_scale_text` undoes those
confusions, accepts decimal points and commas, and rejects anything that is
not one number followed by one length unit.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Nanometres per unit, for the canonical unit names used in outputs.
NM_PER_UNIT = {"nm": 1.0, "um": 1000.0, "mm": 1.0e6, "A": 0.1}

# Unit spellings (after NFKC normalisation and lower-casing) → canonical unit.
# Order matters: longer spellings first.
_UNIT_SPELLINGS: tuple[tuple[str, str, float], ...] = (
    # (regex, unit, confidence factor: 1 exact, < 1 an OCR confusion)
    (r"nanomet(?:er|re)s?", "nm", 1.0),
    (r"micromet(?:er|re)s?|microns?", "um", 1.0),
    (r"millimet(?:er|re)s?", "mm", 1.0),
    (r"(?:a|å)ngstr(?:o|ö)ms?", "A", 1.0),
    (r"μ+\s?m", "um", 1.0),
    (r"[uμ]{1,2}\s?m", "um", 0.97),
    (r"[yjp]\s?m", "um", 0.85),   # OCR reading of µ
    (r"n\s?m|nrn|rn\s?m", "nm", 1.0),
    (r"m\s?m", "mm", 1.0),
    (r"å", "A", 1.0),
    (r"[aäàáâã]", "A", 0.9),
)
_UNIT_RE = "|".join(f"(?:{p})" for p, _, _ in _UNIT_SPELLINGS)
# Characters OCR returns for digits.
_DIGITISH = "0-9oOlIi|!SsBZzD"
_NUM_RE = rf"[{_DIGITISH}]+(?:[.,·]\s?[{_DIGITISH}]+)*|[.,][0-9]+"
_TOKEN_RE = re.compile(rf"(?P<num>{_NUM_RE})\s*(?P<unit>{_UNIT_RE})(?![a-zäöüåàáâãμ])",
                       re.IGNORECASE)
_DIGIT_FIX = str.maketrans({"o": "0", "O": "0", "D": "0", "l": "1", "I": "1", "i": "1",
                            "|": "1", "!": "1", "S": "5", "s": "5", "B": "8", "Z": "2", "z": "2",
                            "·": "."})
_LENGTH_RANGE_NM = (0.01, 1.0e7)  # 0.1 Å .. 10 mm


@dataclass(frozen=True)
class ScaleText:
    """A parsed scale-bar label.

    Parameters
    ----------
    value : float
        The number as printed (``0.5`` for ``"0.5 µm"``).
    unit : {"nm", "um", "mm", "A"}
        Canonical unit; ``"A"`` is the ångström.
    confidence : float
        0..1; below 1 when OCR confusions had to be undone.
    text : str
        The text the value was parsed from.
    """

    value: float
    unit: str
    confidence: float
    text: str

    @property
    def length_nm(self) -> float:
        """The labelled length in nanometres."""
        return self.value * NM_PER_UNIT[self.unit]


def normalize_text(text: str) -> str:
    """NFKC-normalise OCR output and fold the micro and ångström look-alikes.

    >>> normalize_text("0.5 µm")
    '0.5 μm'
    >>> normalize_text("50 \\u212b")
    '50 Å'
    """
    t = unicodedata.normalize("NFKC", text)
    t = t.replace("µ", "μ").replace("\u00b5", "μ").replace("Μ", "μ")
    t = t.replace("\u212b", "Å")
    t = re.sub(r"\s+", " ", t).strip()
    return t


def _to_number(raw: str) -> tuple[float, float] | None:
    """``raw`` numeric token → (value, confidence) or None."""
    s = re.sub(r"\s+", "", raw)
    fixed = s.translate(_DIGIT_FIX)
    n_fixed = sum(a != b for a, b in zip(s, fixed))
    if not any(c.isdigit() for c in s) and len(s) > 1:
        return None  # "Sl nm" is too little evidence
    s = fixed
    if s.count(".") + s.count(",") > 1:
        # "1,000.5" style thousands separators: drop commas before a final point
        if s.count(".") == 1 and re.fullmatch(r"\d{1,3}(,\d{3})+\.\d+", s):
            s = s.replace(",", "")
        else:
            return None
    if "," in s:
        head, tail = s.split(",")
        if len(tail) == 3 and head not in ("", "0"):
            s = head + tail            # 1,000 nm
        else:
            s = head + "." + tail      # 0,5 µm
    if s.startswith("."):
        s = "0" + s
    if not re.fullmatch(r"\d+(\.\d+)?", s):
        return None
    conf = 0.9 ** n_fixed
    if len(s) > 1 and s[0] == "0" and s[1] != ".":
        if "." in s:
            return None
        s = "0." + s[1:]  # "05 μm": OCR lost the decimal point of "0.5 μm"
        conf *= 0.8
    value = float(s)
    if not math.isfinite(value) or value <= 0:
        return None
    return value, conf


def _unit_of(raw: str) -> tuple[str, float] | None:
    u = raw.lower().replace(" ", "")
    for pattern, unit, conf in _UNIT_SPELLINGS:
        if re.fullmatch(pattern, u, flags=re.IGNORECASE):
            if unit == "A" and raw.strip() == "a":
                conf = min(conf, 0.7)  # lower-case a is more often a panel letter
            return unit, conf
    return None


def _nice(value: float) -> bool:
    """True for the round numbers scale bars use (1, 2, 2.5, 5, 10, 20, 50, ...)."""
    if value <= 0:
        return False
    exp = math.floor(math.log10(value))
    mant = round(value / 10 ** exp, 6)
    return mant in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 7.5, 8)


def find_scale_texts(text: str) -> list[ScaleText]:
    """Every ``number unit`` pair in ``text``, best first.

    Parameters
    ----------
    text : str
        OCR output, possibly with other words around the label.

    Returns
    -------
    list of ScaleText
        Empty when nothing parses.  Values preceded by ``=`` or ``:`` (such as
        ``WD = 7.5 mm`` in an instrument data strip) are ranked last.

    Examples
    --------
    >>> [s.value for s in find_scale_texts("WD = 7.5 mm   2 μm")]
    [2.0, 7.5]
    """
    t = normalize_text(text)
    out: list[tuple[float, ScaleText]] = []
    for m in _TOKEN_RE.finditer(t):
        num = _to_number(m.group("num"))
        unit = _unit_of(m.group("unit"))
        if num is None or unit is None:
            continue
        value, c_num = num
        unit_name, c_unit = unit
        if unit_name == "mm" and value > 10:
            # "50 mm" on a micrograph is OCR's reading of "50 nm"
            unit_name, c_unit = "nm", c_unit * 0.7
        nm = value * NM_PER_UNIT[unit_name]
        if not (_LENGTH_RANGE_NM[0] <= nm <= _LENGTH_RANGE_NM[1]):
            continue
        before = t[: m.start()].rstrip()
        rank = 0.0
        if before.endswith(("=", ":")) or re.search(r"(wd|hv|eht|spot)\s*[=:]?$", before, re.I):
            rank -= 1.0
        if m.start() > 0 and (t[m.start() - 1].isalnum() and not t[m.start() - 1].isdigit()):
            rank -= 0.5  # glued to a word
        conf = c_num * c_unit * (1.0 if _nice(value) else 0.85)
        extra = len(re.sub(r"[\s()\[\]|_.,-]", "", t)) - len(re.sub(r"\s", "", m.group(0)))
        if extra > 0:
            conf *= max(0.6, 1.0 - 0.04 * extra)
        out.append((rank + conf, ScaleText(value=value, unit=unit_name,
                                           confidence=round(conf, 4), text=t)))
    out.sort(key=lambda x: -x[0])
    return [s for _, s in out]


def parse_scale_text(text: str) -> ScaleText | None:
    """Value and unit of a scale-bar label, or None when ``text`` is not one.

    Parameters
    ----------
    text : str
        Label as read by OCR (``"100 nm"``, ``"0.5 um"``, ``"2 pm"``, ``"50 Å"``).

    Returns
    -------
    ScaleText or None

    Examples
    --------
    >>> parse_scale_text("0.5 µm")
    ScaleText(value=0.5, unit='um', confidence=1.0, text='0.5 μm')
    >>> parse_scale_text("1OO nm").value
    100.0
    >>> parse_scale_text("Fig. 3") is None
    True
    """
    if not isinstance(text, str):
        return None
    found = find_scale_texts(text)
    return found[0] if found else None
