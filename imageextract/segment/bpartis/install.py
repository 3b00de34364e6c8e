"""Install a fitted post-processing model (rescorer, outline refiner) into an
exported ``bpartis`` model folder: its settings into ``config.json`` and its
section into ``MODEL_CARD.md``."""

from __future__ import annotations

import json
from pathlib import Path


def install_section(model_dir: str | Path, *, key: str, value: dict, title: str,
                    lines: list[str]) -> None:
    """Write ``inference[key] = value`` into ``model_dir/config.json`` and a
    ``## title`` section made of ``lines`` into ``MODEL_CARD.md``: in place
    of an earlier section of that title, else before the "Weights" section
    (else at the end).  A folder without a card gets only the config."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("inference", {})[key] = value
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    card = model_dir / "MODEL_CARD.md"
    if not card.is_file():
        return
    text = card.read_text()
    head, sep, rest = text.partition(f"\n## {title}\n")
    if sep:  # replace the earlier section
        nxt = rest.find("\n## ")
        tail = rest[nxt:] if nxt >= 0 else ""
    else:  # a new section goes before the weights' checksum
        head, sep, rest = text.partition("\n## Weights\n")
        tail = sep + rest if sep else ""
    body = head.rstrip("\n") + "\n\n" + "\n".join([f"## {title}", *lines]) + "\n"
    if tail:
        body += "\n" + tail.lstrip("\n")
    card.write_text(body)
