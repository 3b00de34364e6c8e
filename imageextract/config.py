"""Declarative pipelines: TOML files in ``pipelines/`` plus ``a.b=c`` overrides.

A local-collection pipeline::

    [pipeline]
    kind = "analyze"            # or "mine" (literature), once available

    [input]
    paths = ["examples/emps-sample"]
    split_panels = true         # cut compound figures; micrograph panels only

    [output]
    dir = "out/local-collection"

    [segmentation]
    backend = "classical"
    [segmentation.options]      # passed to the backend's constructor

    [calibration]
    nm_per_px = 0.0             # 0 or absent: read scale bars / leave uncalibrated

    [run]
    workers = 1
    scheduler = ""

Relative paths are resolved against the current directory (run from the
project root, as the README shows).
"""

from __future__ import annotations

import ast
import copy
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS: dict[str, Any] = {
    "pipeline": {"kind": "analyze"},
    "input": {"paths": [], "split_panels": True},
    "output": {"dir": "out"},
    "segmentation": {"backend": "classical", "options": {}},
    "calibration": {"nm_per_px": 0.0, "read_scale_bar": True},
    "run": {"workers": 1, "scheduler": "", "overwrite": False},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_value(text: str) -> Any:
    """``"3"`` → 3, ``"true"`` → True, ``"[1, 2]"`` → [1, 2]; anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (dots descend into tables)."""
    out = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a table")
        node[parts[-1]] = parse_value(value)
    return out


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a pipeline TOML file, fill defaults and apply overrides."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pipeline file {p} not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p} is not valid TOML: {err}") from err
    cfg = apply_overrides(_merge(DEFAULTS, data), overrides or [])
    kind = cfg["pipeline"].get("kind")
    if kind not in ("analyze", "mine"):
        raise ConfigError(f"{p}: pipeline.kind must be 'analyze' or 'mine', got {kind!r}")
    if not isinstance(cfg["input"].get("paths", []), list):
        raise ConfigError(f"{p}: input.paths must be a list of paths")
    return cfg
