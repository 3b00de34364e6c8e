"""Shared fixtures: synthetic micrographs written to disk, the EMPS location."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageextract.data import synthetic_micrograph

ROOT = Path(__file__).resolve().parents[1]
EMPS = ROOT.parent / "shared" / "data" / "emps"


@pytest.fixture(scope="session")
def load_script():
    """Import a script of the repository that is not part of the package
    (``benchmarks/*.py``, ``tools/*.py``) by its path relative to the root;
    each is loaded once per session."""
    loaded = {}

    def load(relpath: str):
        if relpath not in loaded:
            spec = importlib.util.spec_from_file_location(Path(relpath).stem, ROOT / relpath)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            loaded[relpath] = mod
        return loaded[relpath]

    return load


@pytest.fixture
def emps_root() -> Path:
    if not (EMPS / "test.csv").is_file():
        pytest.skip(f"EMPS dataset not found at {EMPS} (only present in the development checkout)")
    return EMPS


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three synthetic micrographs (light, dark, 16-bit TIFF) in a folder."""
    import tifffile

    folder = tmp_path / "images"
    folder.mkdir()
    img, _ = synthetic_micrograph(seed=1, n_particles=10)
    Image.fromarray(img).save(folder / "light.png")
    img, _ = synthetic_micrograph(seed=2, n_particles=8, dark_particles=True)
    Image.fromarray(img).save(folder / "dark.jpg", quality=95)
    img, _ = synthetic_micrograph(seed=3, n_particles=6)
    tifffile.imwrite(folder / "sixteen.tif", img.astype(np.uint16) * 257)
    return folder
