"""Every shipped model folder has a config, a model card and a matching hash."""

import json

import pytest

from imageextract.weights import list_models, load_spec, models_dir, sha256_file

MODELS = list_models()


def test_models_dir_exists():
    assert models_dir().is_dir()


@pytest.mark.parametrize("name", MODELS or ["(none)"])
def test_model_card_and_hash(name):
    if name == "(none)":
        pytest.skip("no trained models shipped yet")
    spec = load_spec(name)
    folder = models_dir() / name
    card = (folder / "MODEL_CARD.md").read_text()
    assert spec.sha256 in card, "MODEL_CARD.md must quote the weights sha256"
    for section in ("data", "recipe", "metrics"):
        assert section in card.lower()
    assert sha256_file(spec.path) == spec.sha256
    assert spec.path.stat().st_size < 100 * 1024 * 1024
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["backend"] and cfg["version"]
