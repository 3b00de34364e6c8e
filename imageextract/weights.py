"""Named, versioned, hashed model weights shipped under ``models/``.

Each trained model lives in ``models/<name>/`` with ``config.json`` and
``MODEL_CARD.md``.  ``config.json`` holds at least ``backend``, ``version``,
``weights`` (file name) and ``sha256``; loading verifies the hash.  Nothing is
ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WeightsError

#: Environment variable that points at an alternative models directory.
MODELS_ENV = "IMAGEEXTRACT_MODELS"


def models_dir() -> Path:
    """Directory holding ``models/<name>/`` folders.

    ``$IMAGEEXTRACT_MODELS`` when set, else the ``models/`` folder next to the
    package (a source checkout or an editable install).
    """
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class WeightSpec:
    """A set of trained weights: where it is, what it is, and its hash."""

    name: str
    backend: str
    version: str
    path: Path
    sha256: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """``"backend:version@sha256:abcdef123456"`` — recorded with every particle."""
        return f"{self.backend}:{self.version}@sha256:{self.sha256[:12]}"

    def verify(self) -> Path:
        """Check the file exists and matches its sha256; return its path."""
        if not self.path.is_file():
            raise WeightsError(f"weights file {self.path} of model {self.name!r} is missing")
        actual = sha256_file(self.path)
        if actual != self.sha256:
            raise WeightsError(
                f"weights file {self.path} has sha256 {actual[:12]}…, but "
                f"models/{self.name}/config.json records {self.sha256[:12]}…; "
                "the file is corrupt or was replaced without updating its card"
            )
        return self.path


def load_spec(name_or_dir: str | os.PathLike) -> WeightSpec:
    """Read ``models/<name>/config.json`` (or a directory path) into a WeightSpec."""
    p = Path(name_or_dir)
    folder = p if p.is_dir() else models_dir() / str(name_or_dir)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(
            f"no model {str(name_or_dir)!r}: {cfg_path} does not exist "
            f"(models available: {', '.join(list_models()) or 'none'})"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{cfg_path} is not valid JSON: {err}") from err
    for key in ("backend", "version", "weights", "sha256"):
        if key not in cfg:
            raise WeightsError(f"{cfg_path} lacks the key {key!r}")
    return WeightSpec(
        name=folder.name,
        backend=cfg["backend"],
        version=cfg["version"],
        path=folder / cfg["weights"],
        sha256=cfg["sha256"],
        config=cfg,
        metrics=cfg.get("metrics", {}),
    )


def list_models() -> list[str]:
    """Names of the model folders under :func:`models_dir` that have a config."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "config.json").is_file())
