"""The report says what each model's particle uncertainty means."""

import json
import shutil

import numpy as np
import pandas as pd

from imageextract.report import write_report


def _model(root, name, inference):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "backend": "bpartis", "version": "v1", "weights": "weights.pt",
        "sha256": "ab" * 32, "inference": inference}))
    return f"bpartis:v1@sha256:{'ab' * 6}"


def test_report_names_each_models_uncertainty(tmp_path, monkeypatch):
    models = tmp_path / "models"
    tag = _model(models, "m-consistency", {"mc_samples": 8, "uncertainty": "consistency",
                                           "uncertainty_threshold": 0.2146,
                                           "rescore": {"threshold": 0.6},
                                           "outline": {"kind": "mlp", "band": 4.0}})
    monkeypatch.setenv("IMAGEEXTRACT_MODELS", str(models))
    micrographs = pd.DataFrame({"micrograph_id": ["a", "b", "c"], "backend": ["bpartis"] * 3,
                                "weights": [tag, tag, "bpartis:v9@sha256:000000000000"],
                                "n_particles": [3, 4, 0]})
    particles = pd.DataFrame({"touches_border": [False], "certain": [True], "ecd_nm": [np.nan],
                              "ecd_px": [10.0], "aspect_ratio": [1.2]})
    out = tmp_path / "out"
    out.mkdir()
    page = write_report(out, micrographs=micrographs, particles=particles,
                        failures=pd.DataFrame()).read_text()
    models_part = page.split("<h2>Models</h2>")[1].split("<h2>")[0]
    assert models_part.count("<li>") == 2  # one line per set of weights
    assert "models/m-consistency" in models_part and "best IoU" in models_part
    assert "above 0.215 were dropped" in models_part
    # the learned rescoring: what the score column means
    assert "learned rescoring" in models_part and "below 0.6 were dropped" in models_part
    # ... and the outline refinement: where the outlines come from
    assert "learned outline refiner (the pixels within 4 working-scale px" in models_part
    assert "bpartis:v9@sha256:000000000000</code>: not an installed model" in models_part
    # the paper's kind, no threshold
    shutil.rmtree(models / "m-consistency")
    _model(models, "m-mi", {"mc_samples": 4, "uncertainty_threshold": None})
    page = write_report(out, micrographs=micrographs.head(1), particles=particles,
                        failures=pd.DataFrame()).read_text()
    assert "mutual information" in page and "no threshold" in page
    assert "learned rescoring" not in page and "outline refiner" not in page
    # no weights at all (the classical backend): no Models section
    page = write_report(out, micrographs=micrographs.assign(weights="none"),
                        particles=particles, failures=pd.DataFrame()).read_text()
    assert "<h2>Models</h2>" not in page
