"""Fit the learned particle rescorer (:mod:`.rescore`) of an exported
``bpartis`` model on its own proposals, and install it in ``config.json``.

1. The model proposes particles on every image of a training split with
   loose clustering filters (``PROPOSAL_CLUSTER``) and no uncertainty
   threshold; each proposal gets its features and a label (is it the best
   IoU > 0.5 match of a true particle?).
2. The threshold is chosen by grouped K-fold cross-validation over images:
   the rescorer is fitted without the held-out images and the threshold that
   maximises their mean of AP50 and AJI+ (the model-selection score, with
   the model's uncertainty threshold applied as well) is taken.
3. The rescorer is refitted on all images and written to
   ``inference.rescore``; ``MODEL_CARD.md`` gets a "Rescoring" section.

``python -m imageextract.segment.bpartis.rescore_fit --data ../shared/data/emps
--model models/bpartis-emps`` (about 3 minutes on 2 CPU cores for EMPS
train-fit).  ``--kind mlp`` fits a small ensemble of perceptrons
(:class:`~.rescore.MLPRescorer`) instead of the logistic regression; it
scores better in this cross-validation but not end to end
(``benchmarks/bench_rescorer_kind.py``), so the logistic one is the default.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .install import install_section
from .rescore import (FEATURES, KINDS, MLPRescorer, fit_mlp_rescorer, fit_rescorer,
                      instance_features, match_labels, rescorer_class)

logger = logging.getLogger(__name__)

#: Clustering filters of the proposals the rescorer sees (looser than the
#: plain backend's: the rescorer does the filtering).
PROPOSAL_CLUSTER = {"min_score": 0.6, "min_rel_area": 0.05}
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: The kind of rescorer fitted unless told otherwise.
DEFAULT_KIND = "logistic-quadratic"


def fit_options(factors, threshold: float | None) -> tuple[tuple[float, ...], float | None]:
    """``factors`` (as floats) and ``threshold`` of a rescorer fit, checked
    before anything is loaded or collected: the factors positive finite
    numbers, at least one; the threshold None (chosen by cross-validation)
    or between 0 and 1 (ValueError otherwise)."""
    factors = tuple(float(f) for f in factors)
    if not factors or not all(0.0 < f < math.inf for f in factors):
        raise ValueError(f"factors must be positive numbers, got {factors}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    return factors, threshold


def collect_proposals(backend, items, *, cluster: dict | None = None,
                      progress: bool = True, factors=(1.0,)) -> list[dict[str, Any]]:
    """Proposals of ``backend`` (a :class:`~imageextract.segment.bpartis.BPartIS`)
    on ``items`` (``[(stem, rgb, truth), ...]``): per image and factor the
    label map, features, match labels and uncertainty.  Each image is
    proposed at the working scale found times each of ``factors`` (by
    default the scale found alone), one entry each (``factor``), even when
    the backend's config also tries other scales (``scale_factors``):
    without the rescorer that choice would rank the scales by mean seed, and
    the shipped rescorer was fitted on one scale per image.  Nor are they
    outline-refined: the backend rescores its particles before the outline
    refiner runs, so a model that has one would otherwise be refitted on
    outlines its rescorer never sees."""
    factors, _ = fit_options(factors, None)
    opts = dict(backend.cluster_options)
    opts.update(PROPOSAL_CLUSTER if cluster is None else cluster)
    raw = dict(uncertainty_threshold=None, cluster_options=opts, rescorer=None,
               scale_factors=(1.0,), sparse_factors=None, outline=None, specialist=None)
    lo, hi = backend.scale_limits
    out = []
    for stem, rgb, truth in tqdm(items, desc="proposals", disable=not progress, leave=False):
        found = backend.segment_rgb(rgb, **raw)
        for f in factors:
            r = found if f == 1.0 else backend.segment_rgb(
                rgb, scale=float(np.clip(found["scale"] * f, lo, hi)), **raw)
            k = r["scores"].size
            feats = instance_features(rgb, r["labels"], scores=r["scores"],
                                      uncertainty=r["uncertainty"], mi=r["mi"],
                                      scale=r["scale"],
                                      target_diameter=backend.target_diameter or 48.0)
            out.append({"stem": stem, "factor": f, "truth": truth, "labels": r["labels"],
                        "features": feats, "matched": match_labels(truth, r["labels"], k),
                        "uncertainty": r["uncertainty"]})
    return out


def stack_proposals(props: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The proposals of many images (``props``, as :func:`collect_proposals`
    gives them) stacked for fitting: features (P, F), labels (P,) and
    weights (P,), 1/sqrt(the number of proposals in the image), so that a
    crowded image does not outweigh the rest."""
    xs = [p["features"] for p in props if p["features"].shape[0]]
    if not xs:
        return np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0)
    y = np.concatenate([p["matched"] for p in props if p["features"].shape[0]])
    w = np.concatenate([np.full(len(x), 1.0 / np.sqrt(len(x))) for x in xs])
    return np.concatenate(xs), y, w


def score_filtered(props: list[dict], probs: list[np.ndarray], threshold: float, *,
                   uncertainty_threshold: float | None = None) -> dict[str, float]:
    """Mean paper AP/AP50 and AJI+ of the proposals kept at ``threshold``."""
    from ...evaluation.metrics import aji_plus, paper_metrics
    from ..base import keep_instances

    rows = []
    for p, prob in zip(props, probs):
        keep = prob >= threshold
        if uncertainty_threshold is not None:
            keep &= p["uncertainty"] <= uncertainty_threshold
        lab = keep_instances(p["labels"], prob, p["uncertainty"], keep)[0] if keep.size \
            else p["labels"]
        m = paper_metrics(p["truth"], lab)
        rows.append((m["ap"], m["ap50"], aji_plus(p["truth"], lab)))
    ap, ap50, aji = np.mean(rows, axis=0) if rows else (np.nan,) * 3
    return {"ap": float(ap), "ap50": float(ap50), "aji_plus": float(aji),
            "score": float((ap50 + aji) / 2)}


def fit_kind(kind: str, x: np.ndarray, y: np.ndarray, w: np.ndarray, *,
             threshold: float = 0.5, l2: float = 1e-2):
    """A rescorer of ``kind`` (:data:`~.rescore.KINDS`) fitted on features
    ``x``, labels ``y`` and weights ``w``."""
    if rescorer_class(kind) is MLPRescorer:
        return fit_mlp_rescorer(x, y, weights=w, threshold=threshold)
    return fit_rescorer(x, y, weights=w, l2=l2, threshold=threshold)


def cross_validate(props: list[dict], *, folds: int = 5, thresholds=THRESHOLDS,
                   uncertainty_threshold: float | None = None, seed: int = 0,
                   l2: float = 1e-2, kind: str = DEFAULT_KIND
                   ) -> dict[float, dict[str, float]]:
    """Held-out metrics per threshold, folds grouped by image (by ``stem``,
    so that an image's proposals at several factors stay together)."""
    groups: dict = {}
    gid = np.array([groups.setdefault(p.get("stem", i), len(groups))
                    for i, p in enumerate(props)], dtype=np.int64)
    fold = (np.random.default_rng(seed).permutation(len(groups)) % folds)[gid]
    probs: list[np.ndarray] = [np.zeros(0)] * len(props)
    for f in range(folds):
        train = [p for p, q in zip(props, fold) if q != f]
        x, y, w = stack_proposals(train)
        model = fit_kind(kind, x, y, w, l2=l2)
        for i, p in enumerate(props):
            if fold[i] == f and p["features"].shape[0]:
                probs[i] = model.predict_proba(p["features"])
    return {t: score_filtered(props, probs, t, uncertainty_threshold=uncertainty_threshold)
            for t in thresholds}


def fit_for_model(model_dir: str | Path, data_dir: str | Path, *, split: str = "train-fit",
                  check_split: str | None = "val", folds: int = 5, write: bool = True,
                  progress: bool = True, device: str = "cpu",
                  kind: str = DEFAULT_KIND, factors=(1.0,),
                  threshold: float | None = None, exclude=None) -> dict[str, Any]:
    """Fit, cross-validate and (``write``) install the rescorer (of
    ``kind``, :data:`~.rescore.KINDS`) of the model in ``model_dir`` on its
    proposals at ``factors`` times the working scale found
    (:func:`collect_proposals`), with the threshold the cross-validation
    scores best (or ``threshold``, e.g. one chosen end to end by
    ``benchmarks/bench_rescorer_kind.py``); returns the numbers (also
    logged).  Stems in ``exclude`` are left out of ``split`` (None: those
    the network's own training left out, :func:`~.train.training_exclude`,
    so that images held out to judge a model stay out of all its parts)."""
    rescorer_class(kind)  # an unknown kind fails before the model is loaded
    factors, threshold = fit_options(factors, threshold)
    from . import BPartIS
    from .train import load_split, training_exclude

    model_dir = Path(model_dir)
    backend = BPartIS(model=str(model_dir), rescore=False, device=device)
    t_u = backend.uncertainty_threshold if backend.mc_samples > 1 else None
    exclude = training_exclude(model_dir) if exclude is None else exclude
    props = collect_proposals(backend, load_split(data_dir, split, progress=progress,
                                                  exclude=exclude),
                              progress=progress, factors=factors)
    x, y, w = stack_proposals(props)
    n_images = len({p["stem"] for p in props})
    counts = np.bincount(y.astype(int), minlength=2)
    if min(counts) < folds or n_images < folds:
        msg = (f"{split}: {counts[1]} matched and {counts[0]} unmatched proposals in "
               f"{n_images} images, too few to fit a rescorer; config.json is unchanged")
        logger.warning(msg)
        return {"split": split, "images": n_images, "proposals": int(len(y)),
                "skipped": msg}
    cv = cross_validate(props, folds=folds, uncertainty_threshold=t_u, kind=kind,
                        thresholds=sorted({*THRESHOLDS, *([threshold] if threshold else [])}))
    best = max(cv, key=lambda t: cv[t]["score"]) if threshold is None else float(threshold)
    model = fit_kind(kind, x, y, w, threshold=best)
    model.cluster = dict(PROPOSAL_CLUSTER)
    model.inputs = {"mc_samples": backend.mc_samples, "uncertainty": backend.uncertainty_kind}
    base = score_filtered(props, [np.ones(len(p["matched"])) for p in props], 0.5,
                          uncertainty_threshold=t_u)
    res: dict[str, Any] = {
        "split": split, "images": n_images, "factors": [float(f) for f in factors],
        "proposals": int(len(y)),
        "matched_fraction": float(y.mean()) if len(y) else float("nan"),
        "threshold": best, "threshold_from": "given" if threshold is not None else "cv",
        "folds": folds, "cv": {str(t): v for t, v in cv.items()},
        "proposals_unfiltered": base}
    if check_split:
        check = collect_proposals(backend, load_split(data_dir, check_split), progress=progress)
        probs = [model.predict_proba(p["features"]) if p["features"].shape[0] else np.zeros(0)
                 for p in check]
        res["check"] = {"split": check_split,
                        "rescored": score_filtered(check, probs, best, uncertainty_threshold=t_u)}
    at = _at_factors(factors, "the scale found")
    how = "given" if threshold is not None else f"by {folds}-fold CV"
    model.notes = (f"fitted on {len(y)} proposals of {n_images} {split} images{at}; threshold "
                   f"{best} {how} (held-out score {cv[best]['score']:.4f})")
    res["rescorer"] = model.to_dict()
    logger.info("rescorer: threshold %s, CV %s", best, cv[best])
    if write:
        install(model_dir, model, res)
    return res


def _at_factors(factors, scale: str) -> str:
    """``" at 0.8, 1, 1.25 x <scale>"`` for proposals at those factors; ``""``
    for the scale found alone."""
    factors = [float(f) for f in factors]
    return "" if factors == [1.0] else f" at {', '.join(f'{f:g}' for f in factors)} x {scale}"


def install(model_dir: Path, model, res: dict[str, Any]) -> None:
    """Write ``inference.rescore`` into ``config.json`` and a "Rescoring"
    section into ``MODEL_CARD.md`` (replacing an earlier one)."""
    cv = res["cv"][str(model.threshold)]
    if isinstance(model, MLPRescorer):
        layers = model.members[0]
        what = (f"An ensemble of {len(model.members)} perceptrons (two hidden layers of "
                f"{layers[0][0].shape[1]}) on {len(FEATURES)} per-particle features")
    else:
        what = f"A logistic regression on {len(FEATURES)} per-particle features and their squares"
    lines = [
        f"{what} ({', '.join(FEATURES)}) gives each proposal the probability that it is a real "
        "particle outlined well enough to match it (IoU > 0.5); that probability is the "
        f"particle's `score`, and proposals below {model.threshold} are dropped "
        "(`imageextract.segment.bpartis.rescore`).",
        f"- fitted on {res['proposals']} proposals (clustering filters "
        f"{json.dumps(model.cluster)}) of {res['images']} `{res['split']}` images"
        + _at_factors(res.get("factors", [1.0]), "the working scale found")
        + f", {res['matched_fraction']:.1%} of them matched",
        (f"- threshold {model.threshold}, the best of {len(res['cv'])} by "
         if res.get("threshold_from", "cv") == "cv" else
         f"- threshold {model.threshold}, chosen end to end "
         "(`benchmarks/bench_rescorer_kind.py`); by ")
        + f"{res.get('folds', 5)}-fold cross-validation over whole images: held-out AP50 "
        f"{cv['ap50']:.3f}, AJI+ {cv['aji_plus']:.3f} (proposals with only the uncertainty "
        f"filter: AP50 {res['proposals_unfiltered']['ap50']:.3f}, AJI+ "
        f"{res['proposals_unfiltered']['aji_plus']:.3f})",
    ]
    if "check" in res:
        c = res["check"]["rescored"]
        lines.append(f"- `{res['check']['split']}`: AP50 {c['ap50']:.3f}, AJI+ "
                     f"{c['aji_plus']:.3f}, AP {c['ap']:.3f}")
    install_section(model_dir, key="rescore", value=model.to_dict(), title="Rescoring",
                    lines=lines)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m imageextract.segment.bpartis.rescore_fit",
                                description="Fit and install the bpartis particle rescorer.")
    p.add_argument("--data", required=True, help="EMPS-format dataset folder")
    p.add_argument("--model", required=True, help="exported model folder (config.json ...)")
    p.add_argument("--split", default="train-fit")
    p.add_argument("--check-split", default="val")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--factors", type=float, nargs="+", default=[1.0],
                   help="propose at these multiples of the working scale found (default: "
                        "1, the scale found alone)")
    p.add_argument("--threshold", type=float,
                   help="keep this threshold instead of the one the cross-validation "
                        "scores best (its CV numbers are still reported)")
    p.add_argument("--kind", choices=sorted(KINDS), default=DEFAULT_KIND,
                   help="logistic regression on the features and their squares, or a small "
                        "ensemble of perceptrons (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="fit and report; leave the model folder unchanged")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res = fit_for_model(a.model, a.data, split=a.split, check_split=a.check_split or None,
                        folds=a.folds, write=not a.dry_run, progress=not a.no_progress,
                        kind=a.kind, factors=a.factors, threshold=a.threshold)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    logger.info("result: %s", {k: v for k, v in res.items() if k != "rescorer"})
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
