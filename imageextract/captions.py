"""Caption understanding: which figures (and panels) are electron micrographs,
with which technique, and of which material.

* :func:`classify_caption` — EM techniques named (SEM, FE-SEM, TEM, HRTEM,
  cryo-TEM, STEM, HAADF-STEM, "transmission electron micrograph", …) against
  other content (XRD, UV-vis, spectra, histograms, schemes, photographs, …).
  A caption naming any EM technique is a micrograph figure; a non-empty
  caption naming none is not; an empty caption is undecided (None) and left
  to the panel classifier.
* :func:`panel_captions` / :func:`classify_panel` — the part of the caption
  about one panel ("(a) TEM image …; (b) XRD pattern …"), so that the XRD
  panel of a mixed figure is skipped.
* :func:`extract_materials` — the material(s) named: formulas checked
  against the periodic table ("TiO2", "Fe3O4@SiO2", "CdSe/ZnS",
  "NaYF4:Yb,Er"), single elements next to a particle noun ("Au NPs"), and
  common names ("gold nanoparticles" → "Au", "silica" → "SiO2").  When
  ``$IMAGEEXTRACT_CHEMDATAEXTRACTOR=1`` and ChemDataExtractor is installed
  and loads its models, its chemical-entity recogniser adds names; the
  default path needs nothing beyond the standard library.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache

logger = logging.getLogger(__name__)

__all__ = ["CaptionInfo", "classify_caption", "classify_panel", "extract_materials",
           "normalize_text", "panel_captions"]

ELEMENTS = frozenset("""
H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br
Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho
Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es
Fm Md No Lr""".split())

#: Elements commonly made into nanoparticles; alone they count only next to a particle noun.
PARTICLE_ELEMENTS = frozenset(
    "Au Ag Pt Pd Cu Ni Co Fe Rh Ru Ir Os Zn Si Se Te Bi Sn Pb Ti Al Mg Mo Ge Ga In Cd Mn Cr W "
    "Re Ta Nb Zr Ce La Gd Eu Yb Er C S".split())

_NP_NOUN = (r"(?:nano[- ]?(?:particle|crystal|rod|wire|cube|sphere|plate|prism|star|sheet|cluster|"
            r"octahedr(?:on|a)|shell|cage|flower|belt|tube|dot|bipyramid|disk|disc|ring|frame)s?|"
            r"NPs?|NCs?|QDs?|NRs?|NWs?|quantum[- ]dots?|particles?|clusters?|colloids?|seeds?|"
            r"nanostructures?|spheres?|microspheres?|crystallites?|core[-– ]shell)")

_ELEMENT_NAMES = {
    "gold": "Au", "silver": "Ag", "platinum": "Pt", "palladium": "Pd", "copper": "Cu",
    "nickel": "Ni", "cobalt": "Co", "iron": "Fe", "rhodium": "Rh", "ruthenium": "Ru",
    "iridium": "Ir", "zinc": "Zn", "silicon": "Si", "bismuth": "Bi", "tin": "Sn", "lead": "Pb",
    "titanium": "Ti", "aluminium": "Al", "aluminum": "Al", "magnesium": "Mg", "selenium": "Se",
    "germanium": "Ge", "cadmium": "Cd", "molybdenum": "Mo", "tungsten": "W", "carbon": "C",
}
_COMPOUND_NAMES = {
    "silica": "SiO2", "titania": "TiO2", "magnetite": "Fe3O4", "maghemite": "Fe2O3",
    "hematite": "Fe2O3", "haematite": "Fe2O3", "ceria": "CeO2", "zirconia": "ZrO2",
    "alumina": "Al2O3", "zinc oxide": "ZnO", "titanium dioxide": "TiO2", "titanium oxide": "TiO2",
    "silicon dioxide": "SiO2", "cerium oxide": "CeO2", "iron oxide": "FeOx", "copper oxide": "CuO",
    "cuprous oxide": "Cu2O", "nickel oxide": "NiO", "cobalt oxide": "Co3O4", "tin oxide": "SnO2",
    "zirconium oxide": "ZrO2", "manganese oxide": "MnOx", "tungsten oxide": "WO3",
    "hydroxyapatite": "Ca10(PO4)6(OH)2", "calcium carbonate": "CaCO3",
    "barium titanate": "BaTiO3", "cadmium selenide": "CdSe", "zinc sulfide": "ZnS",
    "cadmium sulfide": "CdS", "lead sulfide": "PbS", "molybdenum disulfide": "MoS2",
}
#: Small molecules (gases, solvents, reagents) that are not the imaged material.
_NOT_MATERIALS = frozenset({"H2", "N2", "O2", "O3", "CO", "CO2", "NO", "NO2", "H2O", "D2O", "H2O2",
                            "NH3", "CH4", "HCl", "HNO3", "H2SO4", "NaOH", "KOH", "SO2", "H2S",
                            "Ar", "He", "Ne", "Kr", "Xe", "CH3OH", "C2H5OH", "NaBH4"})
#: Formulas made only of one-letter symbols, without digits, that are real materials.
_SHORT_FORMULAS = frozenset({"BN", "CdS"})

# -- EM techniques and other content ------------------------------------------
# (regex, modality); acronyms are case-sensitive, phrases are not.
_EM_PATTERNS: list[tuple[re.Pattern, str, str]] = [
    (re.compile(r"(?<![A-Za-z])(?:HAADF|ADF|ABF|BF|DF)[- ]?STEM(?![A-Za-z])"), "STEM", "HAADF-STEM"),
    (re.compile(r"(?<![A-Za-z])HAADF(?![A-Za-z])"), "STEM", "HAADF"),
    (re.compile(r"(?<![A-Za-z])STEM(?![A-Za-z])"), "STEM", "STEM"),
    (re.compile(r"scanning transmission electron", re.I), "STEM", "STEM"),
    (re.compile(r"(?<![A-Za-z])HR-?TEM(?![A-Za-z])"), "TEM", "HRTEM"),
    (re.compile(r"(?<![A-Za-z])(?:cryo|Cryo|LV|in[- ]situ)?[- ]?TEM(?![A-Za-z])"), "TEM", "TEM"),
    (re.compile(r"(?<![A-Za-z])cryo-?EM(?![A-Za-z])", re.I), "TEM", "cryo-EM"),
    (re.compile(r"transmission electron (?:micro(?:scop[ey]|graphs?|scope)|images?)", re.I), "TEM", "TEM"),
    (re.compile(r"(?<![A-Za-z])(?:FE|HR|ESEM|E)?-?SEM(?![A-Za-z])"), "SEM", "SEM"),
    (re.compile(r"(?<![A-Za-z])FESEM(?![A-Za-z])"), "SEM", "FESEM"),
    (re.compile(r"scanning electron (?:micro(?:scop[ey]|graphs?|scope)|images?)", re.I), "SEM", "SEM"),
    (re.compile(r"electron micro(?:graphs?|scopy)", re.I), "unknown", "EM"),
]
_NON_EM_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"(?<![A-Za-z])(?:P|GI)?XRD(?![A-Za-z])"), "XRD"),
    (re.compile(r"x-ray diffract", re.I), "XRD"),
    (re.compile(r"(?<![A-Za-z])SAXS|WAXS(?![A-Za-z])"), "SAXS"),
    (re.compile(r"(?<![A-Za-z])SAED(?![A-Za-z])|(?:electron )?diffraction patterns?", re.I), "diffraction"),
    (re.compile(r"(?<![A-Za-z])FFT(?![A-Za-z])"), "FFT"),
    (re.compile(r"UV[-–‐ ]?(?:vis|visible)|absorbance|absorption spectr|extinction spectr", re.I), "UV-vis"),
    (re.compile(r"spectr(?:a|um|oscopy)", re.I), "spectra"),
    (re.compile(r"(?<![A-Za-z])(?:FT-?IR|ATR-IR|XPS|NMR|XANES|EXAFS|TGA|DSC|DLS|BET|PL|EELS)(?![A-Za-z])"),
     "spectroscopy/analysis"),
    (re.compile(r"raman|photoluminescen|zeta potential|isotherm|hysteresis|magnetization|"
                r"voltammogra|nyquist|impedance|chromatogra|thermogravimetr", re.I), "measurement"),
    (re.compile(r"size distributions?|histograms?|statistic", re.I), "histogram"),
    (re.compile(r"schem(?:e|atic)|illustration|mechanism|workflow|flowchart|diagram", re.I), "scheme"),
    (re.compile(r"photograph|digital (?:image|camera)|optical (?:image|micro)|(?<![A-Za-z])AFM(?![A-Za-z])|"
                r"atomic force", re.I), "photo/optical/AFM"),
    (re.compile(r"(?<![A-Za-z])(?:EDS|EDX|EDXS)(?![A-Za-z])|elemental (?:mapping|maps?)|line[- ]scan", re.I),
     "EDS"),
    (re.compile(r"\bplots?\b|\bcurves?\b|\bkinetics\b|\bprofiles?\b|\bcalibration\b|\bisotherms?\b", re.I),
     "plot"),
]

_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_DASHES = str.maketrans({"−": "-", "‐": "-", "‑": "-", "‒": "-", "—": "–", "\u200b": "", "\u00a0": " "})


def normalize_text(text: str) -> str:
    """Subscript digits → digits, unusual dashes and spaces → plain ones.

    >>> normalize_text("Fe₃O₄@SiO₂ − core")
    'Fe3O4@SiO2 - core'
    """
    return (text or "").translate(_SUBSCRIPTS).translate(_DASHES)


@dataclass(frozen=True)
class CaptionInfo:
    """What a caption (or the part of it about one panel) says.

    Attributes
    ----------
    is_micrograph : bool or None
        True: names an EM technique; False: names none (or only other
        content); None: nothing to go on (empty caption).
    modality : {"TEM", "SEM", "STEM", "unknown"}
    techniques : tuple of str
        EM techniques named, in order.
    other : tuple of str
        Non-EM content named (XRD, UV-vis, histogram, …).
    materials : tuple of str
        Materials named, those next to a particle noun first.
    """

    is_micrograph: bool | None
    modality: str = "unknown"
    techniques: tuple[str, ...] = ()
    other: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()

    @property
    def material(self) -> str | None:
        """The main material (first of :attr:`materials`), or None."""
        return self.materials[0] if self.materials else None


def _techniques(text: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    em: list[tuple[int, str, str]] = []
    spans: list[tuple[int, int]] = []
    for pat, modality, name in _EM_PATTERNS:
        for m in pat.finditer(text):
            if any(a <= m.start() < b for a, b in spans):
                continue
            spans.append((m.start(), m.end()))
            em.append((m.start(), modality, name))
    other = []
    for pat, name in _NON_EM_PATTERNS:
        for m in pat.finditer(text):
            other.append((m.start(), name))
    return sorted(em), sorted(other)


def classify_caption(caption: str, *, materials: bool = True) -> CaptionInfo:
    """Is this an electron-micrograph figure, which technique, which material?

    Parameters
    ----------
    caption : str
    materials : bool
        Also extract materials (skip for speed when not needed).

    Examples
    --------
    >>> info = classify_caption("Fig. 2. TEM images of Au nanoparticles (a) and their size histogram (b).")
    >>> info.is_micrograph, info.modality, info.material
    (True, 'TEM', 'Au')
    >>> classify_caption("XRD patterns of TiO2 calcined at 500 °C.").is_micrograph
    False
    >>> classify_caption("").is_micrograph is None
    True
    """
    text = normalize_text(caption)
    if not text.strip():
        return CaptionInfo(is_micrograph=None)
    em, other = _techniques(text)
    mats = tuple(extract_materials(text)) if materials else ()
    modality = "unknown"
    if em:
        mods = [m for _, m, _ in em if m != "unknown"]
        modality = mods[0] if mods else "unknown"
    return CaptionInfo(
        is_micrograph=bool(em), modality=modality,
        techniques=tuple(dict.fromkeys(n for _, _, n in em)),
        other=tuple(dict.fromkeys(n for _, n in other)), materials=mats)


# -- panels --------------------------------------------------------------------
_PANEL_GROUP = re.compile(
    r"\(\s*([A-Za-z](?:\s*(?:,|–|-|and|&)\s*[A-Za-z])*)\s*\)"      # (a) (a,b) (a–c) (A and B)
    r"|(?:(?<=^)|(?<=[\s;,.:]))([a-z])\)(?=\s)")                    # a) b)


def _expand(group: str) -> list[str]:
    letters = re.findall(r"[A-Za-z]", re.sub(r"\b(?:and)\b", ",", group))
    out: list[str] = []
    if re.search(r"[A-Za-z]\s*[–-]\s*[A-Za-z]", group) and len(letters) == 2:
        a, b = letters[0].lower(), letters[1].lower()
        if a <= b:
            return [chr(c) for c in range(ord(a), ord(b) + 1)]
    for ch in letters:
        out.append(ch.lower())
    return out


def panel_captions(caption: str) -> tuple[str, dict[str, str]]:
    """Split a caption into its shared part and the text about each panel.

    Labels may lead their text ("(a) TEM image; (b) XRD") or follow it
    ("TEM image (a) and XRD pattern (b)": when nothing but punctuation follows
    the last label).  Later mentions of an earlier panel ("the inset of (a)")
    do not start a new part: labels must advance through the alphabet.

    Returns
    -------
    prefix : str
        Text before the first panel label.
    parts : dict
        ``{"a": "TEM image of …", "b": "…"}`` (lower-case labels).

    Examples
    --------
    >>> prefix, parts = panel_captions("Au NPs: (a, b) TEM images; (c) XRD pattern of (a).")
    >>> prefix, parts["b"], parts["c"]
    ('Au NPs:', 'TEM images;', 'XRD pattern of (a).')
    """
    text = normalize_text(caption)
    matches = []
    last = ""
    for m in _PANEL_GROUP.finditer(text):
        letters = _expand(m.group(1) or m.group(2))
        if not letters or letters[0] <= last:
            continue
        last = letters[-1]
        matches.append((m.start(), m.end(), letters))
    if not matches:
        return text.strip(), {}
    parts: dict[str, str] = {}
    tail = text[matches[-1][1]:].strip(" .;,:")
    head = text[: matches[0][0]]
    after_first = text[matches[0][1]:].lstrip()
    em, other = _techniques(head)
    if len(tail) < 3 or ((em or other) and re.match(r"(?:and\b|,|;|&)", after_first)):
        # labels follow their text: "TEM image (a) and size histogram (b) of Ag NPs."
        prev = 0
        for start, end, letters in matches:
            for ch in letters:
                parts.setdefault(ch, re.sub(r"^(?:and\b|&)\s*", "", text[prev:start].strip(" ,;")))
            prev = end
        return (tail if len(tail) >= 3 else ""), parts
    prefix = text[: matches[0][0]].strip()
    for i, (_, end, letters) in enumerate(matches):
        stop = matches[i + 1][0] if i + 1 < len(matches) else len(text)
        for ch in letters:
            parts.setdefault(ch, text[end:stop].strip())
    return prefix, parts


def _panel_key(label: str) -> str:
    m = re.search(r"[A-Za-z]", label or "")
    return m.group(0).lower() if m and len(re.sub(r"[^A-Za-z]", "", label)) == 1 else ""


def classify_panel(caption: str, label: str) -> CaptionInfo:
    """:func:`classify_caption` for panel ``label`` ("a", "(b)") of a figure.

    The panel's own part of the caption decides when it names a technique;
    otherwise the shared part before the panel labels, otherwise the whole
    caption.  Materials come from the panel's part when it names one.

    >>> cap = "(a) TEM image of Au NPs. (b) XRD pattern. (c) SEM image of Ag nanocubes."
    >>> [classify_panel(cap, x).is_micrograph for x in "abc"]
    [True, False, True]
    >>> classify_panel(cap, "c").material
    'Ag'
    """
    whole = classify_caption(caption)
    key = _panel_key(label)
    if not key:
        return whole
    prefix, parts = panel_captions(caption)
    if key not in parts:
        return whole
    own = classify_caption(parts[key])
    mats = own.materials or classify_caption(prefix).materials or whole.materials
    if own.techniques:
        return CaptionInfo(True, own.modality, own.techniques, own.other, mats)
    if own.other:
        return CaptionInfo(False, "unknown", (), own.other, mats)
    shared = classify_caption(prefix) if prefix else CaptionInfo(None)
    base = shared if shared.is_micrograph is not None else whole
    return CaptionInfo(base.is_micrograph, base.modality, base.techniques, base.other, mats)


# -- materials -----------------------------------------------------------------
_EL = r"[A-Z][a-z]?"
_COMP = rf"(?:{_EL}(?:\d+(?:\.\d+)?|[xyzδ])?|\((?:{_EL}\d*)+\)\d*)+"
_SEP = rf"(?:@|/|[-–](?={_EL}))"
_DOPANT = rf"(?::{_EL}\d*(?:\.\d+)?%?(?:,{_EL}\d*(?:\.\d+)?%?)*)?"
_FORMULA = re.compile(rf"(?<![\w@/\-]){_COMP}(?:{_SEP}{_COMP})*{_DOPANT}(?![a-z\d])")
_NP_AFTER = re.compile(rf"^[\s\-–]*(?:\w+[\s\-–]+)?{_NP_NOUN}", re.I)
_NAMES = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, list(_COMPOUND_NAMES) + list(_ELEMENT_NAMES)),
                             key=len, reverse=True)) + r")\b", re.I)


def _symbols(comp: str) -> list[str]:
    return re.findall(_EL, comp)


def _valid_comp(comp: str) -> bool:
    syms = _symbols(comp)
    return bool(syms) and all(s in ELEMENTS for s in syms)


def _np_follows(text: str, end: int) -> bool:
    return bool(_NP_AFTER.match(text[end:end + 40]))


def _formula_ok(formula: str, text: str, end: int) -> bool:
    core = formula.split(":", 1)[0]
    if core in _NOT_MATERIALS:
        return False
    comps = [c for c in re.split(r"@|/|[-–]", core) if c]
    if not comps or not all(_valid_comp(c) for c in comps):
        return False
    rich = any(re.search(r"\d", c) or any(len(s) == 2 for s in _symbols(c)) or c in _SHORT_FORMULAS
               for c in comps)
    if len(comps) == 1:
        syms = _symbols(comps[0])
        if len(syms) == 1 and not re.search(r"\d", comps[0]):  # a lone element: "Au NPs"
            return syms[0] in PARTICLE_ELEMENTS and _np_follows(text, end)
    return rich


def extract_materials(text: str, *, chemdataextractor: bool | None = None) -> list[str]:
    """Materials named in ``text``, those next to a particle noun first.

    Parameters
    ----------
    text : str
    chemdataextractor : bool, optional
        Also run ChemDataExtractor's recogniser (default: when
        ``$IMAGEEXTRACT_CHEMDATAEXTRACTOR=1``); ignored, with one warning,
        when it is not installed or cannot load its models.

    Examples
    --------
    >>> extract_materials("SEM of Fe3O4@SiO2 core–shell particles on a Si wafer")
    ['Fe3O4@SiO2']
    >>> extract_materials("TEM images of gold nanoparticles and TiO2 supports")
    ['Au', 'TiO2']
    >>> extract_materials("In the CV curves, NPs of PVP-capped ... (scale bar 50 nm)")
    []
    """
    text = normalize_text(text)
    found: list[tuple[bool, int, str]] = []
    taken: list[tuple[int, int]] = []
    for m in _NAMES.finditer(text):
        name = m.group(1).lower()
        if name in _COMPOUND_NAMES:
            found.append((_np_follows(text, m.end()), m.start(), _COMPOUND_NAMES[name]))
            taken.append(m.span())
        elif _np_follows(text, m.end()):
            found.append((True, m.start(), _ELEMENT_NAMES[name]))
            taken.append(m.span())
    for m in _FORMULA.finditer(text):
        if any(a <= m.start() < b for a, b in taken):
            continue
        formula = m.group(0)
        if _formula_ok(formula, text, m.end()):
            found.append((_np_follows(text, m.end()), m.start(), formula))
    use_cde = (os.environ.get("IMAGEEXTRACT_CHEMDATAEXTRACTOR", "").lower() in ("1", "true", "yes")
               if chemdataextractor is None else chemdataextractor)
    if use_cde:
        for pos, name in _cde_entities(text):
            found.append((_np_follows(text, pos + len(name)), pos, name))
    found.sort(key=lambda t: (not t[0], t[1]))
    return list(dict.fromkeys(name for _, _, name in found))


@lru_cache(maxsize=1)
def _cde_available() -> bool:
    try:
        import chemdataextractor  # noqa: F401  (importing may download its models)
        from chemdataextractor.doc import Paragraph

        Paragraph("TiO2 nanoparticles").cems  # noqa: B018  loads the models once
    except Exception as err:  # not installed, no models, no network: stay on the light path
        logger.warning("ChemDataExtractor unavailable (%s: %s); using the built-in formula matcher",
                       type(err).__name__, err)
        return False
    return True


def _cde_entities(text: str) -> list[tuple[int, str]]:
    if not _cde_available():
        return []
    from chemdataextractor.doc import Paragraph

    try:
        return [(span.start, span.text) for span in Paragraph(text).cems]
    except Exception as err:  # pragma: no cover - depends on the optional package
        logger.debug("ChemDataExtractor failed on a caption: %s", err)
        return []
