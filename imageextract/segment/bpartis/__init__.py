"""``bpartis``: Bayesian particle instance segmentation.

A re-implementation of BPartIS (Yildirim & Cole, J. Chem. Inf. Model. 2021):
a proposal-free instance segmenter that predicts, for every pixel, an offset
to its particle's centre, an elliptical bandwidth and a seed score; pixels are
clustered around the strongest seeds.  Monte-Carlo dropout in the decoder's
last stages gives ``T`` samples of the maps from one encoder pass; the mutual
information of the seed map is the per-pixel uncertainty.  A particle's
uncertainty is the mean of that inside it (``mi``, as in the paper) or how
steadily the samples reproduce it (``consistency``), as the model's
``config.json`` says, and particles above a threshold (tuned on validation
data, stored there too) are dropped.

torch is imported here only, when the backend is used.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ...errors import WeightsError
from ...types import Segmentation
from ..base import to_rgb_uint8

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "bpartis-emps"

#: What each kind of per-particle uncertainty means (model card, report).
UNCERTAINTY_TEXT = {
    "mi": "mean mutual information of the seed map (nats)",
    "consistency": "1 - mean best IoU with the particles of each MC sample clustered alone",
}


class BPartIS:
    """BPartIS segmentation backend.

    Parameters
    ----------
    model : str
        Name of a folder under ``models/`` (or a path to one) holding
        ``config.json``, the weights and ``MODEL_CARD.md``.
    weights : str or path, optional
        Use this weights file instead of the one named in ``config.json``
        (its sha256 is then not checked against the card).
    mc_samples : int, optional
        MC-dropout samples ``T``; default from ``config.json``.  ``1`` turns
        uncertainty off (no dropout; ``uncertainty`` is all zeros).
    uncertainty_threshold : float, optional
        Drop instances whose uncertainty is above it; default from
        ``config.json``; ``float("inf")`` keeps all.  The uncertainty is
        ``inference.uncertainty`` of ``config.json``: ``"mi"`` (default, the
        paper's), the mean mutual information (nats) of the seed inside the
        particle, or ``"consistency"``, one minus the particle's mean best
        IoU with the particles of each MC sample clustered on its own.
    uncertainty : {"mi", "consistency"}, optional
        Overrides ``inference.uncertainty`` of ``config.json``.
    rescore : bool
        Use the learned particle rescorer of ``config.json``
        (``inference.rescore``, :mod:`.rescore`) when there is one: each
        particle's ``score`` is then its probability of being a real,
        well-outlined particle, and particles below the rescorer's threshold
        are dropped.  False: ``score`` is the particle's mean seed.
    outline : bool
        Refine the particles' outlines with the learned outline refiner of
        ``config.json`` (``inference.outline``, :mod:`.outline`) when there
        is one.
    all_scales : bool
        Try every scale factor of ``config.json`` (``inference.scale_factors``)
        on every image, also where the particles at the scale found are
        already sure enough to skip them (``inference.sure_confidence``;
        0.9 for the shipped model, which skips them on about four images in
        five): about 40 % more time per image (EMPS test, 2026-12-04: 1.05
        against 0.72 s median) for results that differ on some images either
        way (AJI+ 0.789 against 0.787 there; level on val and train-fit).
    scale : float, optional
        Working scale (network px per image px).  Default (None): found per
        image so that the median particle has the diameter the network was
        trained at (``inference.target_diameter`` in ``config.json``); the
        image is tiled at that scale, never squeezed into a fixed size.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    threads : int, optional
        torch intra-op threads (left alone when None).

    Notes
    -----
    A model's ``config.json`` may name a specialist (``inference.specialist``,
    see :func:`_specialist`): a second model folder, such as the shipped
    ``bpartis-emps-rods``, that segments the images on which this network
    finds few particles (at most ``max_particles``) or finds rods, and whose
    result is kept when its particles are surer.  ``segment_rgb(rgb, specialist=None)`` turns it
    off for one call; a fixed ``scale`` never asks it.  The result's
    ``Segmentation.weights`` names the network whose particles were kept.

    Examples
    --------
    >>> seg = BPartIS.from_config({"model": {"width": 0.25, "depth": 0.34,
    ...     "dec_channels": [16, 16, 8, 8, 8]}}).predict(np.zeros((64, 64), np.uint8))
    >>> seg.labels.shape, seg.labels.dtype
    ((64, 64), dtype('int32'))
    """

    name = "bpartis"

    def __init__(self, *, model: str = DEFAULT_MODEL, weights: str | None = None,
                 mc_samples: int | None = None, uncertainty_threshold: float | None = None,
                 scale: float | None = None, device: str = "cpu",
                 threads: int | None = None, uncertainty: str | None = None,
                 rescore: bool = True, outline: bool = True, all_scales: bool = False) -> None:
        from ...weights import load_spec, models_dir

        try:
            spec = load_spec(model)
        except WeightsError as err:
            raise WeightsError(
                f"bpartis model {model!r} is not installed ({err}). Train it with "
                f"`imageextract train bpartis --data DIR --out {models_dir() / DEFAULT_MODEL}` "
                "or pick another backend (e.g. --backend classical)."
            ) from err
        if spec.backend != self.name:
            raise WeightsError(f"model {model!r} is for backend {spec.backend!r}, not 'bpartis'")
        if weights is None:
            path = spec.verify()
            tag = spec.tag
        else:
            from pathlib import Path

            path = Path(weights)
            if not path.is_file():
                raise WeightsError(f"weights file {path} does not exist")
            from ...weights import sha256_file

            tag = f"bpartis:{spec.version}-custom@sha256:{sha256_file(path)[:12]}"
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        self._setup(spec.config, state, tag=tag, mc_samples=mc_samples,
                    uncertainty_threshold=uncertainty_threshold, scale=scale, device=device,
                    threads=threads, uncertainty=uncertainty, rescore=rescore,
                    outline=outline, all_scales=all_scales)

    # -- construction -------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any], state_dict: dict | None = None, *,
                    mc_samples: int | None = None, uncertainty_threshold: float | None = None,
                    scale: float | None = None, device: str = "cpu", threads: int | None = None,
                    tag: str = "none", uncertainty: str | None = None,
                    rescore: bool = True, outline: bool = True,
                    all_scales: bool = False) -> "BPartIS":
        """Build from a config dict (as in ``config.json``) and optional
        weights; random weights when ``state_dict`` is None (for tests)."""
        self = cls.__new__(cls)
        self._setup(config, state_dict, tag=tag, mc_samples=mc_samples,
                    uncertainty_threshold=uncertainty_threshold, scale=scale, device=device,
                    threads=threads, uncertainty=uncertainty, rescore=rescore,
                    outline=outline, all_scales=all_scales)
        return self

    def _setup(self, config: dict[str, Any], state: dict | None, *, tag: str,
               mc_samples: int | None, uncertainty_threshold: float | None,
               scale: float | None, device: str, threads: int | None,
               uncertainty: str | None = None, rescore: bool = True,
               outline: bool = True, all_scales: bool = False) -> None:
        import torch

        from .inference import CANVAS_PX, MC_MAPS, UNCERTAINTY_KINDS
        from .model import BPartISNet, ModelConfig, fold_batchnorm

        if threads is not None:
            torch.set_num_threads(int(threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.config = dict(config)
        self.model_config = ModelConfig.from_dict(config.get("model"))
        net = BPartISNet(self.model_config)
        self.size_model = None
        if state is not None:
            from .size import pop_from_state

            state = {k: v.float() for k, v in state.items()}
            self.size_model = pop_from_state(state)
            net.load_state_dict(state)
        # BatchNorm folded into the convolutions (~18 % faster on CPU);
        # channels-last: the depthwise and 1x1 convolutions run ~15 % faster
        # on CPU (network_maps feeds tiles in the same layout)
        fold_batchnorm(net.eval())
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        inf = config.get("inference", {})
        self.mc_samples = int(mc_samples if mc_samples is not None else inf.get("mc_samples", 1))
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if uncertainty_threshold is None:
            uncertainty_threshold = inf.get("uncertainty_threshold")
        self.uncertainty_threshold = (None if uncertainty_threshold is None
                                      else float(uncertainty_threshold))
        self.tile_px = int(inf.get("tile_px", 512))
        self.overlap_px = int(inf.get("overlap_px", 128))
        canvas = inf.get("canvas_px", CANVAS_PX)
        if isinstance(canvas, bool) or not isinstance(canvas, (int, float)) or canvas < 0 \
                or not float(canvas).is_integer():
            raise ValueError("config inference.canvas_px must be a whole number of pixels >= 0 "
                             f"(0: mirrored borders), got {canvas!r}")
        self.canvas_px = int(canvas)
        factors = inf.get("scale_factors", (1.0,))
        try:
            self.scale_factors = tuple(float(f) for f in factors)
        except (TypeError, ValueError):
            self.scale_factors = ()
        if not self.scale_factors or any(not f > 0 for f in self.scale_factors):
            raise ValueError("config inference.scale_factors must be a list of positive "
                             f"numbers, got {factors!r}")
        self.scale_merge = _scale_merge(inf.get("scale_merge"))
        self.sparse_factors = _sparse_factors(inf.get("sparse_scale_factors"))
        sure = inf.get("sure_confidence")
        if sure is not None and (isinstance(sure, bool) or not isinstance(sure, (int, float))
                                 or not np.isfinite(sure)):
            raise ValueError("config inference.sure_confidence must be null or a number "
                             f"(the confidence above which scale_factors are skipped), "
                             f"got {sure!r}")
        self.sure_confidence = None if sure is None or all_scales else float(sure)
        cover = inf.get("scale_coverage", 0.0)
        if isinstance(cover, bool) or not isinstance(cover, (int, float)) \
                or not (np.isfinite(cover) and cover >= 0):
            raise ValueError("config inference.scale_coverage must be a number >= 0 (the "
                             "weight of the foreground covered when choosing among scale "
                             f"factors; 0: confidence alone), got {cover!r}")
        self.scale_coverage = float(cover)
        cover_el = inf.get("scale_coverage_min_elongation")
        if cover_el is not None and (isinstance(cover_el, bool)
                                     or not isinstance(cover_el, (int, float))
                                     or not np.isfinite(cover_el)):
            raise ValueError("config inference.scale_coverage_min_elongation must be null or a "
                             "number (the median elongation from which scale_coverage counts), "
                             f"got {cover_el!r}")
        self.coverage_min_elongation = None if cover_el is None else float(cover_el)
        self.tta = _tta(inf.get("tta"))
        self.turn_rods = _turn_rods(inf.get("turn_rods"))
        self.join_fragments = step_options("join_fragments", inf.get("join_fragments"))
        self.whole_rods = step_options("whole_rods", inf.get("whole_rods"))
        self.coarse_pass = step_options("coarse_pass", inf.get("coarse_pass"))
        self.drop_scale_bars = step_options("drop_scale_bars", inf.get("drop_scale_bars"))
        self.specialist = _specialist(inf.get("specialist"))
        self._specialist_backend = None
        if scale is not None and not float(scale) > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = None if scale is None else float(scale)
        td = inf.get("target_diameter")
        self.target_diameter = None if td is None else float(td)
        self.scale_limits = tuple(inf.get("scale_limits", (0.05, 2.5)))
        self.max_passes = int(inf.get("max_passes", 2))
        self.max_halvings = int(inf.get("max_halvings", 2))
        self.cluster_options = dict(inf.get("cluster", {}))
        self.mc_layers = tuple(inf.get("mc_layers", ("head",)))
        self.mc_maps = str(inf.get("mc_maps", "mean"))
        if self.mc_maps not in MC_MAPS:
            raise ValueError(f"config inference.mc_maps must be one of {MC_MAPS}, "
                             f"got {self.mc_maps!r}")
        self.uncertainty_kind = str(uncertainty or inf.get("uncertainty", "mi"))
        if self.uncertainty_kind not in UNCERTAINTY_KINDS:
            where = "uncertainty" if uncertainty else "config inference.uncertainty"
            raise ValueError(f"{where} must be one of {UNCERTAINTY_KINDS}, "
                             f"got {self.uncertainty_kind!r}")
        self.rescorer = None
        if inf.get("rescore") and rescore:
            from .rescore import load_rescorer

            try:
                self.rescorer = load_rescorer(inf["rescore"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"config inference.rescore is not a valid rescorer: {err}") \
                    from err
            if self.rescorer.matches(mc_samples=self.mc_samples,
                                     uncertainty=self.uncertainty_kind):
                # propose the way the rescorer's training proposals were made
                self.cluster_options.update(self.rescorer.cluster)
            else:
                logger.info("bpartis: learned rescoring off (fitted with %s, running with "
                            "mc_samples=%d, uncertainty=%s)", self.rescorer.inputs,
                            self.mc_samples, self.uncertainty_kind)
                self.rescorer = None
        self.outline = None
        if inf.get("outline") and outline:
            from .outline import OutlineRefiner

            try:
                self.outline = OutlineRefiner.from_dict(inf["outline"])
            except ValueError as err:
                raise ValueError(f"config inference.outline is not a valid outline refiner: "
                                 f"{err}") from err
        seed = inf.get("mc_seed", 0)
        self.mc_seed = None if seed is None else int(seed)
        self.weights = tag

    # -- inference ----------------------------------------------------------
    def predict(self, image: np.ndarray) -> Segmentation:
        """Segment one micrograph.

        Parameters
        ----------
        image : (M, N) or (M, N, 3) ndarray, any numeric dtype

        Returns
        -------
        Segmentation
            ``labels`` (M, N) int32, ``scores`` (K,) mean seed, ``uncertainty``
            (K,) as set by ``inference.uncertainty`` (zeros when
            ``mc_samples`` is 1), ``pixel_uncertainty`` (M, N) float32: the
            seed's mutual information in nats.
        """
        rgb = to_rgb_uint8(image)
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ValueError(f"image is empty: shape {np.shape(image)}")
        res = self.segment_rgb(rgb)
        if "weights" in res:
            logger.debug("bpartis: the specialist network %s was surer", res["weights"])
        logger.debug("bpartis: working scale %.3f after %d pass(es), %d particles",
                     res["scale"], res["passes"], res["scores"].size)
        return Segmentation(labels=res["labels"], scores=res["scores"],
                            uncertainty=res["uncertainty"], backend=self.name,
                            weights=res.get("weights", self.weights),
                            pixel_uncertainty=res["mi"])

    def segment_rgb(self, rgb: np.ndarray, **overrides) -> dict:
        """:func:`~.inference.segment_image` of ``rgb`` (M, N, 3) uint8 with
        this backend's settings; keyword ``overrides`` replace single ones
        (e.g. ``uncertainty_threshold=None, rescorer=None`` for the raw
        proposals).  Returns its full result dict."""
        from .inference import particle_axes, segment_image, turned_back

        kw = dict(
            coord_scale=self.model_config.coord_scale,
            samples=self.mc_samples, scale=self.scale, target_diameter=self.target_diameter,
            scale_limits=self.scale_limits, max_passes=self.max_passes,
            max_halvings=self.max_halvings,
            size_model=self.size_model,
            tile=self.tile_px, overlap=self.overlap_px, canvas=self.canvas_px,
            scale_factors=self.scale_factors, merge=self.scale_merge,
            sparse_factors=self.sparse_factors, sure_confidence=self.sure_confidence,
            scale_coverage=self.scale_coverage,
            coverage_min_elongation=self.coverage_min_elongation,
            tta=self.tta["views"] if self.tta else (),
            tta_max_px=self.tta["max_px"] if self.tta else None,
            mc_layers=self.mc_layers, mc_maps=self.mc_maps, device=self.device,
            uncertainty=self.uncertainty_kind,
            uncertainty_threshold=self.uncertainty_threshold if self.mc_samples > 1 else None,
            cluster_options=self.cluster_options, rescorer=self.rescorer, mc_seed=self.mc_seed,
            outline=self.outline)
        turn = overrides.pop("turn_rods", self.turn_rods)
        spec = overrides.pop("specialist", self.specialist)
        join = overrides.pop("join_fragments", self.join_fragments)
        rods = overrides.pop("whole_rods", self.whole_rods)
        bars = overrides.pop("drop_scale_bars", self.drop_scale_bars)
        coarse = overrides.pop("coarse_pass", self.coarse_pass)
        more = dict(overrides, turn_rods=turn, specialist=spec, join_fragments=join,
                    whole_rods=rods, drop_scale_bars=bars)
        kw.update(overrides)
        res = segment_image(self.net, rgb, **kw)
        if turn is not None:
            frac, elong = particle_axes(res["labels"])
            if frac >= turn["min_along_x"] and elong >= turn["min_elongation"]:
                # the network separates particles lying along y better than
                # along x (the model card's x/y asymmetry): turn rods upright
                upright = np.ascontiguousarray(np.rot90(rgb))
                turned = turned_back(segment_image(self.net, upright, **kw))
                turned["passes"] += res["passes"]
                res = turned
        if spec is not None and kw["scale"] is None and _calls_specialist(res, spec):
            # a fixed working scale is the user's: the specialist would find its own
            res = self._ask_specialist(rgb, res, spec)
        if rods is not None:
            from .fragments import whole_rods

            res = whole_rods(res, **rods)
        if join is not None:
            from .fragments import join_fragments

            res = join_fragments(res, **join)
        if bars is not None:
            res = off_scale_bars(rgb, res, **bars)
        if coarse is not None and kw["scale"] is None:
            # a fixed working scale is the user's: no other scale is looked at
            res = self.coarse_look(rgb, res, coarse, **more)
        return res

    def coarse_look(self, rgb: np.ndarray, res: dict, opts: dict, **overrides) -> dict:
        """Segment ``rgb`` once more at ``opts["factor"]`` times the scale
        ``res`` (a :meth:`segment_rgb` result) used, the same way
        (``overrides`` as given to :meth:`segment_rgb`), and add the large,
        sure particles found there where their pixels are free
        (``inference.coarse_pass``, ``opts`` as :func:`step_options` gives
        them: :func:`~.inference.coarse_particles`,
        :func:`~.inference.merge_scales`).  ``coarse_added`` counts them;
        ``passes`` includes the extra passes.

        The outline refiner costs most of such a pass, so the look is first
        taken without it (nor the scale-bar check, which only drops
        particles); only where a particle passes the test is the image
        segmented at that scale again with every step (the same network
        maps: one more pass on a few images in a hundred)."""
        from .inference import coarse_particles, merge_scales

        sc = float(np.clip(res["scale"] * opts["factor"], *self.scale_limits))
        if not round(sc, 4) < round(res["scale"], 4):
            return dict(res, coarse_added=0)
        look = dict(overrides, scale=sc, coarse_pass=None)
        other = self.segment_rgb(rgb, **dict(look, outline=None, drop_scale_bars=None))
        passes = res["passes"] + other["passes"]

        def large(r: dict) -> dict:
            return coarse_particles(res, r, min_score=opts["min_score"],
                                    min_rel_area=opts["min_rel_area"])

        big = large(other)
        if big["scores"].size:
            other = self.segment_rgb(rgb, **look)
            passes += other["passes"]
            big = large(other)
        out = dict(res, coarse_added=0)
        if big["scores"].size:
            out = merge_scales(res, [big], min_score=opts["min_score"],
                               max_overlap=opts["max_overlap"])
            out["coarse_added"] = out.pop("merged")
            if "merged" in res:
                out["merged"] = res["merged"]
        out["passes"] = passes
        return out

    def _ask_specialist(self, rgb: np.ndarray, res: dict, spec: dict) -> dict:
        """Segment ``rgb`` with the specialist network of ``spec`` too and
        keep its result when its particles are surer
        (:func:`~.inference.scale_confidence`)."""
        from .inference import scale_confidence

        if self._specialist_backend is None or self._specialist_backend[0] != spec["model"]:
            other = BPartIS(model=spec["model"], device=str(self.device),
                            mc_samples=self.mc_samples)
            self._specialist_backend = (spec["model"], other)
        other = self._specialist_backend[1]
        alt = other.segment_rgb(rgb, specialist=None)
        passes = res["passes"] + alt["passes"]
        mine, theirs = scale_confidence(res), scale_confidence(alt)
        if theirs > mine:
            res = dict(alt, weights=other.weights)
        res["passes"] = passes
        res["specialist_confidence"] = {"main": mine, "specialist": theirs}
        return res


def _scale_merge(spec) -> dict | None:
    """Validated ``inference.scale_merge`` of a config: None (off) or
    ``{"min_score": float, "max_overlap": float in [0, 1)}``."""
    if spec is None:
        return None
    try:
        opts = {"min_score": float(spec.get("min_score", 0.9)),
                "max_overlap": float(spec.get("max_overlap", 0.05))}
        unknown = set(spec) - set(opts)
    except (AttributeError, TypeError, ValueError):
        opts, unknown = None, set()
    if opts is None or unknown or not 0.0 <= opts["max_overlap"] < 1.0:
        raise ValueError("config inference.scale_merge must be null or an object with "
                         "numbers min_score and max_overlap (0 <= max_overlap < 1), "
                         f"got {spec!r}")
    return opts


#: the defaults of ``inference.coarse_pass`` (see :meth:`BPartIS.coarse_look`)
COARSE_DEFAULTS = {"factor": 0.4, "min_score": 0.99, "min_rel_area": 2.0, "max_overlap": 0.05}


def _coarse_pass(spec) -> dict | None:
    """Validated ``inference.coarse_pass`` of a config: None (off) or an
    object with any of ``factor`` (in (0, 1)), ``min_score``,
    ``min_rel_area`` (>= 0) and ``max_overlap`` (in [0, 1)), the rest
    taken from :data:`COARSE_DEFAULTS`."""
    if spec is None:
        return None
    o = _numbers_over(spec, COARSE_DEFAULTS)
    if o is None or not 0.0 < o["factor"] < 1.0 or o["min_rel_area"] < 0 \
            or not 0.0 <= o["max_overlap"] < 1.0:
        raise ValueError("config inference.coarse_pass must be null or an object with numbers "
                         "factor (0 < factor < 1), min_score, min_rel_area (>= 0) and "
                         f"max_overlap (0 <= max_overlap < 1), got {spec!r}")
    return {key: float(v) for key, v in o.items()}


def _sparse_factors(spec) -> tuple[dict, ...] | None:
    """Validated ``inference.sparse_scale_factors`` of a config: None (off),
    or one rule or a list of rules ``{"factors": (positive floats),
    "max_particles": int >= 0}``, each optionally with ``max_side_px``
    (number >= 0), ``max_scale`` (number > 0) and ``growth``
    (``{"min_particles": int >= 1, "min_ratio": number > 0}``, see
    :func:`~.inference.grown_factor`): the scale factors also tried on
    images whose result at the scale found keeps at most ``max_particles``
    particles (see :func:`~.inference.sparse_scale_factors`).  Returns a
    tuple of rules."""
    from .inference import _sparse_rules

    if spec is None:
        return None
    try:
        return _sparse_rules(spec)
    except ValueError as err:
        raise ValueError(f"config inference.sparse_scale_factors: {err}") from None


def _tta(spec) -> dict | None:
    """Validated ``inference.tta`` of a config: None (off) or ``{"views":
    (names of TTA_VIEWS), "max_px": int > 0 or None}``: the extra test-time
    views, used at working scales where the image has at most ``max_px``
    pixels (None: always)."""
    from .inference import TTA_VIEWS

    if spec is None:
        return None
    try:
        opts = {"views": tuple(spec["views"]), "max_px": spec.get("max_px")}
        unknown = set(spec) - set(opts)
    except (KeyError, TypeError, AttributeError):
        opts, unknown = None, set()
    mp = None if opts is None else opts["max_px"]
    if opts is None or unknown or not opts["views"] \
            or any(v not in TTA_VIEWS for v in opts["views"]) \
            or len(set(opts["views"])) != len(opts["views"]) \
            or (mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp <= 0)):
        raise ValueError("config inference.tta must be null or an object with views (a "
                         f"non-empty list of distinct names among {list(TTA_VIEWS)}) and "
                         f"max_px (a whole number > 0, or null), got {spec!r}")
    return opts


def _turn_rods(spec) -> dict | None:
    """Validated ``inference.turn_rods`` of a config: None (off) or
    ``{"min_along_x": float in [0, 1], "min_elongation": float >= 1}``: when
    that share of the particles found (by area) lie along x and their median
    elongation is at least that, the image is segmented again turned a
    quarter turn, and that result is kept."""
    if spec is None:
        return None
    try:
        opts = {"min_along_x": float(spec["min_along_x"]),
                "min_elongation": float(spec["min_elongation"])}
        unknown = set(spec) - set(opts)
    except (KeyError, TypeError, ValueError, AttributeError):
        opts, unknown = None, set()
    if opts is None or unknown or not 0.0 <= opts["min_along_x"] <= 1.0 \
            or not opts["min_elongation"] >= 1.0:
        raise ValueError("config inference.turn_rods must be null or an object with numbers "
                         "min_along_x (0 to 1) and min_elongation (>= 1), "
                         f"got {spec!r}")
    return opts


def _numbers_over(spec, defaults: dict) -> dict | None:
    """``defaults`` updated with ``spec`` when ``spec`` is an object whose
    keys are among theirs and whose values are finite numbers (not bools),
    else None."""
    if not isinstance(spec, dict) or set(spec) - set(defaults) \
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)
                   for v in spec.values()):
        return None
    return {**defaults, **spec}


def _join_fragments(spec) -> dict | None:
    """Validated ``inference.join_fragments`` of a config: None (off) or an
    object with any of the keys of :data:`~.fragments.DEFAULTS` (numbers;
    ``gap`` a whole number of pixels), the rest taking their defaults: the
    final particles are passed through :func:`~.fragments.join_fragments`,
    which joins the pieces of a long rod cut across."""
    from .fragments import DEFAULTS

    if spec is None:
        return None
    opts = _numbers_over(spec, DEFAULTS)
    if opts is None or opts["min_elongation"] < 1.0 or not 0.0 <= opts["max_angle"] < 90.0 \
            or opts["max_width_ratio"] < 1.0 or opts["min_gain"] < 1.0 \
            or opts["min_union_elongation"] < 1.0 or opts["gap"] < 0 or opts["min_contact"] < 0 \
            or int(opts["gap"]) != opts["gap"]:
        raise ValueError("config inference.join_fragments must be null or an object with "
                         f"numbers among {sorted(DEFAULTS)} (min_elongation, "
                         "max_width_ratio, min_gain and min_union_elongation >= 1, max_angle "
                         "in [0, 90) degrees, min_contact >= 0, gap a whole number of pixels "
                         ">= 0), "
                         f"got {spec!r}")
    opts["gap"] = int(opts["gap"])
    return opts


def _whole_rods(spec) -> dict | None:
    """Validated ``inference.whole_rods`` of a config: None (off) or an
    object with any of the keys of :data:`~.fragments.ROD_DEFAULTS`
    (numbers), the rest taking their defaults: the final particles are
    passed through :func:`~.fragments.whole_rods`, which makes a long rod
    whole from the network's foreground where its pieces were found apart."""
    from .fragments import ROD_DEFAULTS

    if spec is None:
        return None
    o = _numbers_over(spec, ROD_DEFAULTS)
    if o is None or not 0.0 < o["fg_threshold"] < 1.0 or o["min_elongation"] < 1.0 \
            or not 0.0 <= o["max_angle"] < 90.0 or o["max_width_ratio"] < 1.0 \
            or o["max_offset"] < 0.0 or not 0.0 <= o["max_stray"] < o["min_inside"] <= 1.0 \
            or not 0.0 < o["max_cover"] <= 1.0 or not 0.0 <= o["min_waist"] <= 1.0:
        raise ValueError("config inference.whole_rods must be null or an object with numbers "
                         f"among {sorted(ROD_DEFAULTS)} (fg_threshold in (0, 1), "
                         "min_elongation and max_width_ratio >= 1, max_angle in [0, 90) "
                         "degrees, max_offset >= 0, 0 <= max_stray < min_inside <= 1, "
                         f"max_cover in (0, 1], min_waist in [0, 1]), got {spec!r}")
    return {key: float(v) for key, v in o.items()}


#: the defaults of :func:`off_scale_bars`, the keys of ``inference.drop_scale_bars``
BAR_DEFAULTS = {"min_flat": 0.5, "min_inside": 0.5}


def off_scale_bars(rgb: np.ndarray, result: dict, *, min_flat: float = 0.5,
                   min_inside: float = 0.5) -> dict:
    """``result`` (of :func:`~.inference.segment_image`) without the
    particles that are a scale bar drawn on ``rgb``: those with at least
    ``min_inside`` of their pixels in the box (grown by 2 px) of a bar
    :func:`~imageextract.figures.scalebar.drawn_scale_bars` finds, at
    least ``min_flat`` of its pixels flat.  No OCR is run (about 0.05 s
    for a 512-px image).  The rest keep their order, scores
    and uncertainties; the boxes are added as ``scale_bars``; ``result``
    itself is returned when no bar is found.
    """
    from ...figures.scalebar import drawn_scale_bars
    from ..base import instances_in_boxes, keep_instances

    boxes = drawn_scale_bars(rgb, min_flat=min_flat)
    if not boxes:
        return result
    out = dict(result, scale_bars=boxes)
    n = np.size(result["scores"])
    drop = instances_in_boxes(result["labels"], boxes, min_inside=min_inside)[:n]
    if drop.any():
        keep = np.ones(n, bool)
        keep[:drop.size] = ~drop
        out["labels"], out["scores"], out["uncertainty"] = keep_instances(
            result["labels"], result["scores"], result["uncertainty"], keep)
        if "seed_scores" in result and np.size(result["seed_scores"]) == n:
            out["seed_scores"] = np.asarray(result["seed_scores"])[keep]
        logger.debug("bpartis: %d particle(s) on a drawn scale bar dropped", int(drop.sum()))
    return out


def _drop_scale_bars(spec) -> dict | None:
    """Validated ``inference.drop_scale_bars`` of a config: None (off) or an
    object with any of the keys of :data:`BAR_DEFAULTS` (numbers; ``min_flat``
    in [0, 1], ``min_inside`` in (0, 1]), the rest taking their defaults:
    particles lying on a scale bar drawn on the image are dropped
    (:func:`off_scale_bars`)."""
    if spec is None:
        return None
    o = _numbers_over(spec, BAR_DEFAULTS)
    if o is None or not 0.0 <= o["min_flat"] <= 1.0 or not 0.0 < o["min_inside"] <= 1.0:
        raise ValueError("config inference.drop_scale_bars must be null or an object with "
                         f"numbers among {sorted(BAR_DEFAULTS)} (min_flat in [0, 1], "
                         f"min_inside in (0, 1]), got {spec!r}")
    return {key: float(v) for key, v in o.items()}


#: The optional steps run on the final particles, by their key in a model
#: config's ``inference``, and the validator of each key's value.
FINAL_STEPS = {"join_fragments": _join_fragments, "whole_rods": _whole_rods,
               "drop_scale_bars": _drop_scale_bars, "coarse_pass": _coarse_pass}


def step_options(name: str, spec) -> dict | None:
    """The checked options of the final step ``inference.<name>`` of a model
    config (one of :data:`FINAL_STEPS`) from ``spec``, as the config would
    give it: None (the step is off) or an object of some of the step's
    options, the others taking their defaults.  A bad value raises
    ValueError naming the key and what it takes.

    >>> step_options("drop_scale_bars", {"min_flat": 0.8})
    {'min_flat': 0.8, 'min_inside': 0.5}
    >>> step_options("whole_rods", None) is None
    True
    """
    if name not in FINAL_STEPS:
        raise ValueError(f"no final step {name!r}; the steps are {sorted(FINAL_STEPS)}")
    return FINAL_STEPS[name](spec)


def _specialist(spec) -> dict | None:
    """Validated ``inference.specialist`` of a config: None (off) or
    ``{"model": str, "max_particles": int >= 0, "min_elongation": float >= 1
    or None, "max_confidence": float or None}``: on an image whose result
    keeps at most ``max_particles`` particles, or whose particles' median
    elongation is at least ``min_elongation``, and whose particles the main
    network is less sure of than ``max_confidence``
    (:func:`~.inference.scale_confidence`; None: whatever its confidence),
    the model named there (a folder under ``models/``, e.g. a network
    trained with rods drawn more often) segments it too, and the result
    whose particles are surer is kept."""
    if spec is None:
        return None
    try:
        me, mc = spec.get("min_elongation"), spec.get("max_confidence")
        opts = {"model": spec["model"], "max_particles": spec.get("max_particles", 0),
                "min_elongation": None if me is None else float(me),
                "max_confidence": None if mc is None else float(mc)}
        unknown = set(spec) - set(opts)
    except (KeyError, TypeError, ValueError, AttributeError):
        opts, unknown = None, set()
    mp = None if opts is None else opts["max_particles"]
    if opts is None or unknown or not isinstance(opts["model"], str) or not opts["model"] \
            or isinstance(mp, bool) or not isinstance(mp, int) or mp < 0 \
            or (opts["min_elongation"] is not None and not opts["min_elongation"] >= 1.0) \
            or (opts["max_confidence"] is not None and not np.isfinite(opts["max_confidence"])):
        raise ValueError("config inference.specialist must be null or an object with model "
                         "(a model name or folder), max_particles (a whole number >= 0), "
                         "min_elongation (a number >= 1, or null) and optionally "
                         f"max_confidence (a number, or null), got {spec!r}")
    return opts


def asks_specialist(n: int, elongation: float | None, spec: dict,
                    confidence: float | None = None) -> bool:
    """Does a result of ``n`` particles whose median elongation is
    ``elongation`` (None or NaN without particles) and whose
    :func:`~.inference.scale_confidence` is ``confidence`` call for the
    specialist of ``spec`` (:func:`_specialist`)?

    >>> spec = {"max_particles": 1, "min_elongation": 3.0}
    >>> asks_specialist(0, None, spec), asks_specialist(4, 3.5, spec), asks_specialist(4, 2.0, spec)
    (True, True, False)
    >>> sure = dict(spec, max_confidence=0.95)
    >>> asks_specialist(0, None, sure, 0.97), asks_specialist(0, None, sure, 0.9)
    (False, True)
    """
    mc = spec.get("max_confidence")
    if mc is not None and confidence is not None and confidence >= mc:
        return False
    if n <= spec["max_particles"]:
        return True
    me = spec["min_elongation"]
    return me is not None and elongation is not None and elongation >= me


def _calls_specialist(res: dict, spec: dict) -> bool:
    """:func:`asks_specialist` for the result ``res`` of a pass (its
    particles' elongation measured only when the rule needs it)."""
    from .inference import particle_axes, scale_confidence

    n = int(np.asarray(res["scores"]).size)
    elong = (particle_axes(res["labels"])[1]
             if n > spec["max_particles"] and spec["min_elongation"] is not None else None)
    conf = scale_confidence(res) if spec.get("max_confidence") is not None else None
    return asks_specialist(n, elong, spec, conf)


__all__ = ["BPartIS", "FINAL_STEPS", "UNCERTAINTY_TEXT", "asks_specialist", "step_options"]
