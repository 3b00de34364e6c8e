"""Fit the learned outline refiner (:mod:`.outline`) of an exported
``bpartis`` model on its own particles, and install it in ``config.json``.

1. The model, as configured but without outline refinement, segments every
   ``every``-th image of a training split; the pixels in a band around each
   particle's outline get their features and a label (does the pixel lie in
   the ground-truth particle that this particle matches?).  At most
   ``max_pixels`` band pixels per image are kept, drawn at random, so that
   large images do not dominate.
2. The perceptron is fitted on those pixels.  With ``later_passes`` N, it
   then refines each training image's particles N times, one pass at a time
   (gate ``LATER_PASS_GATE``, smoothing ``LATER_PASS_SMOOTH``), adds the band
   pixels of those outlines (``max_pixels / N`` per image and pass) and is
   fitted again on all of them, so that it also learns outlines that earlier
   passes have already moved towards the edge.
3. On a check split (``val``) the particles are refined with each gate of
   ``GATES`` and each smoothing of ``SMOOTHS`` and scored (mean of AP50 and
   AJI+, the model-selection score); the best pair is kept.  With it, each
   number of passes of ``PASSES`` is scored the same way, and the best is
   kept.  The refiner is installed only if it beats the unrefined particles
   there.

``python -m imageextract.segment.bpartis.outline_fit --data ../shared/data/emps
--model models/bpartis-emps`` (about 10 minutes on 2 CPU cores for EMPS).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .install import install_section
from .outline import FEATURES, band_targets, fit_outline_refiner, outline_features

logger = logging.getLogger(__name__)

#: Area-change gates tried on the check split (None: no gate).
GATES = (None, (0.8, 1.25), (0.7, 1.4))
#: Smoothings of the band's probabilities tried (working-scale px).
SMOOTHS = (0.0, 0.5)
#: Numbers of passes tried with the chosen gate and smoothing (see
#: :class:`~.outline.OutlineRefiner`).
PASSES = (1, 2, 3, 4, 5)
#: Gate and smoothing of the first fit's passes that make the later-pass
#: outlines (those of the shipped refiner since 2026-12-02).
LATER_PASS_GATE = (0.8, 1.25)
LATER_PASS_SMOOTH = 0.5


def _key(gate, smooth) -> str:
    return f"gate {gate} smooth {smooth:g}"


def segment_items(backend, items, *, progress: bool = True) -> list[dict[str, Any]]:
    """Run ``backend`` (without outline refinement) on ``items``
    (``[(stem, rgb, truth), ...]``); per image the label map, the seed map
    and the working scale."""
    out = []
    for stem, rgb, truth in tqdm(items, desc="segment", disable=not progress, leave=False):
        r = backend.segment_rgb(rgb, outline=None, specialist=None)
        out.append({"stem": stem, "rgb": rgb, "truth": truth, "labels": r["labels"],
                    "seed": r["seed"], "scale": float(r["scale"])})
    return out


def band_pixels(segs: list[dict], *, band: float, max_pixels: int = 20000,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of the usable band pixels of ``segs``, at most
    ``max_pixels`` per image; ``(X (P, F), y (P,))``."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for s in segs:
        flat, owner, X = outline_features(s["rgb"], s["labels"], s["seed"], scale=s["scale"],
                                          band=band)
        if flat is None:
            continue
        y, usable = band_targets(s["truth"], s["labels"], flat, owner)
        X, y = X[usable], y[usable]
        if len(y) > max_pixels:
            pick = rng.choice(len(y), max_pixels, replace=False)
            X, y = X[pick], y[pick]
        xs.append(X)
        ys.append(y)
    if not xs:
        return np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, np.float32)
    return np.concatenate(xs), np.concatenate(ys)


def score_segs(segs: list[dict], refiner=None) -> dict[str, float]:
    """Mean AP, AP50, AP75, mean IoU and AJI+ of ``segs`` (refined by
    ``refiner`` when given) and the selection score (mean of AP50 and AJI+)."""
    from ...evaluation.metrics import all_metrics

    rows = []
    for s in segs:
        lab = s["labels"]
        if refiner is not None:
            lab = refiner.refine(s["rgb"], lab, s["seed"], scale=s["scale"])
        m = all_metrics(s["truth"], lab)
        rows.append([m["ap"], m["ap50"], m["ap75"], m["mean_iou"], m["aji_plus"]])
    mean = np.mean(rows, 0) if rows else np.full(5, np.nan)
    out = dict(zip(("ap", "ap50", "ap75", "mean_iou", "aji_plus"), map(float, mean)))
    out["score"] = (out["ap50"] + out["aji_plus"]) / 2
    return out


def later_pass_segs(segs: list[dict], refiner, passes: int) -> list[dict]:
    """``segs`` with their labels after 1, 2, ... ``passes`` single passes of
    ``refiner`` (each from the one before), ``passes`` entries per image."""
    import dataclasses

    one = dataclasses.replace(refiner, passes=1)
    out = []
    for s in segs:
        lab = s["labels"]
        for _ in range(passes):
            lab = one.refine(s["rgb"], lab, s["seed"], scale=s["scale"])
            out.append(dict(s, labels=lab))
    return out


def choose_passes(segs: list[dict], refiner, *, passes=PASSES,
                  known: dict | None = None) -> dict[str, dict]:
    """Score ``segs`` refined with each number of ``passes`` (:func:`score_segs`;
    ``known`` maps numbers already scored to their scores) and set
    ``refiner.passes`` to the best (the fewest among equals).  Returns the
    scores by number of passes (keys as strings, for JSON)."""
    known = dict(known or {})
    table = {}
    for n in passes:
        if n not in known:
            refiner.passes = n
            known[n] = score_segs(segs, refiner)
        table[str(n)] = known[n]
    refiner.passes = min(passes, key=lambda n: (-known[n]["score"], n))
    return table


def fit_for_model(model_dir: str | Path, data_dir: str | Path, *, split: str = "train-fit",
                  every: int = 3, check_split: str = "val", band: float = 4.0,
                  max_pixels: int = 20000, later_passes: int = 0, write: bool = True,
                  progress: bool = True, device: str = "cpu",
                  exclude=None) -> dict[str, Any]:
    """Fit, check and (``write``, if it helps on ``check_split``) install the
    outline refiner of the model in ``model_dir``; returns the numbers.
    Stems in ``exclude`` are left out of ``split`` (None: those the
    network's own training left out, :func:`~.train.training_exclude`)."""
    from . import BPartIS
    from .train import load_split, training_exclude

    if every < 1:  # before the model is loaded
        raise ValueError(f"every must be >= 1, got {every}")
    if later_passes < 0:
        raise ValueError(f"later_passes must be >= 0, got {later_passes}")
    model_dir = Path(model_dir)
    backend = BPartIS(model=str(model_dir), outline=False, device=device)
    exclude = training_exclude(model_dir) if exclude is None else exclude
    items = load_split(data_dir, split, progress=progress, exclude=exclude)[::every]
    segs = segment_items(backend, items, progress=progress)
    X, y = band_pixels(segs, band=band, max_pixels=max_pixels)
    res: dict[str, Any] = {"split": split, "every": every, "images": len(segs),
                           "pixels": int(len(y)), "band": band}
    if len(y) == 0 or y.min() == y.max():
        res["skipped"] = (f"{split}: {len(y)} band pixels of matched particles in {len(segs)} "
                          "images, too few to fit an outline refiner; config.json is unchanged")
        logger.warning(res["skipped"])
        return res
    res["inside_fraction"] = float(y.mean())
    refiner = fit_outline_refiner(X, y, band=band)
    if later_passes:
        refiner.gate, refiner.smooth = LATER_PASS_GATE, LATER_PASS_SMOOTH
        later = later_pass_segs(segs, refiner, later_passes)
        X2, y2 = band_pixels(later, band=band, max_pixels=max(1, max_pixels // later_passes),
                             seed=1)
        res.update(later_passes=later_passes, later_pixels=int(len(y2)))
        X, y = np.concatenate([X, X2]), np.concatenate([y, y2])
        res["pixels"] = int(len(y))
        refiner = fit_outline_refiner(X, y, band=band)
    check = segment_items(backend, load_split(data_dir, check_split), progress=progress)
    res["check"] = {"split": check_split, "images": len(check),
                    "unrefined": score_segs(check)}
    pairs = [(g, sm) for g in GATES for sm in SMOOTHS]
    for gate, smooth in pairs:
        refiner.gate, refiner.smooth = gate, smooth
        res["check"][_key(gate, smooth)] = score_segs(check, refiner)
    best = max(pairs, key=lambda p: res["check"][_key(*p)]["score"])
    refiner.gate, refiner.smooth = best
    res["check"]["passes"] = choose_passes(check, refiner,
                                           known={1: res["check"][_key(*best)]})
    chosen = res["check"]["passes"][str(refiner.passes)]
    res["gate"] = None if best[0] is None else list(best[0])
    res["smooth"] = best[1]
    res["passes"] = refiner.passes
    gain = chosen["score"] - res["check"]["unrefined"]["score"]
    res["gain"] = gain
    refiner.meta = {"fitted_on": f"{len(y)} band pixels of {len(segs)} {split} images "
                                 f"(one in {every})"
                                 + (f", with the outlines after 1-{later_passes} passes"
                                    if later_passes else ""),
                    "check": {check_split: chosen, "unrefined": res["check"]["unrefined"]}}
    res["refiner"] = refiner.to_dict()
    logger.info("outline refiner: gate %s, smooth %g, %d pass(es), %s score %.4f -> %.4f",
                best[0], best[1], refiner.passes, check_split,
                res["check"]["unrefined"]["score"], chosen["score"])
    if write:
        if gain > 0:
            install(model_dir, refiner, res)
        else:
            logger.warning("the outline refiner does not raise the %s score (%+.4f); "
                           "config.json is unchanged", check_split, gain)
    return res


def install(model_dir: Path, refiner, res: dict[str, Any]) -> None:
    """Write ``inference.outline`` into ``config.json`` and an "Outline
    refinement" section into ``MODEL_CARD.md`` (replacing an earlier one)."""
    c = res["check"]
    new = c.get("passes", {}).get(str(refiner.passes)) \
        or c[_key(None if refiner.gate is None else tuple(refiner.gate), refiner.smooth)]
    old = c["unrefined"]
    lines = [
        f"A perceptron (two hidden layers of {refiner.layers[0][0].shape[1]}) re-decides every "
        f"pixel within {refiner.band:g} working-scale px of a particle's outline from "
        f"{len(FEATURES)} features ({', '.join(FEATURES)}): the pixel goes to the particle "
        f"whose outline is nearest if its probability (smoothed over {refiner.smooth:g} "
        f"working-scale px) is above {refiner.threshold:g}; a particle whose area would "
        f"change by a factor outside {refiner.gate} keeps its old outline, and each particle "
        "keeps only its main piece, holes filled (`imageextract.segment.bpartis.outline`)"
        + ("." if refiner.passes == 1 else
           f"; {refiner.passes} passes, each from the outlines the one before drew."),
        f"- fitted on {res['pixels']} band pixels of {res['images']} `{res['split']}` images "
        f"(one in {res['every']}; {res['inside_fraction']:.1%} of the pixels inside their "
        "particle)"
        + (f", {res['later_pixels']} of them from the outlines after 1-{res['later_passes']} "
           "passes of a first fit" if res.get("later_passes") else ""),
        f"- `{c['split']}` ({c['images']} images), unrefined -> refined: AP50 "
        f"{old['ap50']:.3f} -> {new['ap50']:.3f}, AJI+ {old['aji_plus']:.3f} -> "
        f"{new['aji_plus']:.3f}, mean IoU {old['mean_iou']:.3f} -> {new['mean_iou']:.3f}, "
        f"AP75 {old['ap75']:.3f} -> {new['ap75']:.3f}, AP {old['ap']:.3f} -> {new['ap']:.3f}",
    ]
    install_section(model_dir, key="outline", value=refiner.to_dict(),
                    title="Outline refinement", lines=lines)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m imageextract.segment.bpartis.outline_fit",
                                description="Fit and install the bpartis outline refiner.")
    p.add_argument("--data", required=True, help="EMPS-format dataset folder")
    p.add_argument("--model", required=True, help="exported model folder (config.json ...)")
    p.add_argument("--split", default="train-fit")
    p.add_argument("--every", type=int, default=3, help="use every N-th image of --split")
    p.add_argument("--check-split", default="val")
    p.add_argument("--band", type=float, default=4.0)
    p.add_argument("--later-passes", type=int, default=0,
                   help="also fit on the outlines after 1..N passes of a first fit")
    p.add_argument("--dry-run", action="store_true",
                   help="fit and report; leave the model folder unchanged")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res = fit_for_model(a.model, a.data, split=a.split, every=a.every,
                        check_split=a.check_split, band=a.band, later_passes=a.later_passes,
                        write=not a.dry_run,
                        progress=not a.no_progress)
    if a.json:
        Path(a.json).write_text(json.dumps(
            {k: v for k, v in res.items() if k != "refiner"}, indent=2) + "\n")
    logger.info("result: %s", {k: v for k, v in res.items() if k not in ("refiner", "check")})
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
