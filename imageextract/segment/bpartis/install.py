"""Install a fitted post-processing model (rescorer, outline refiner) into an
exported ``bpartis`` model folder: its settings into ``config.json`` and its
section into ``MODEL_CARD.md``."""

from __future__ import annotations

import json
from pathlib import Path


def dumps_config(cfg: dict) -> str:
    """``cfg`` as JSON indented by two spaces, like ``json.dumps(cfg, indent=2)``,
    except that a list holding no objects or lists of objects stays on one line
    per row: a fitted model's weights then take a line per matrix row, not
    one per number.  Ends with a newline.

    >>> print(dumps_config({"a": [1, 2], "b": {"w": [[1.5, 2], [3, 4]]}, "c": []}), end="")
    {
      "a": [1, 2],
      "b": {
        "w": [
          [1.5, 2],
          [3, 4]
        ]
      },
      "c": []
    }
    """
    def flat(v) -> bool:
        return not isinstance(v, (dict, list))

    def dump(obj, pad: str) -> str:
        inner = pad + "  "
        if isinstance(obj, dict) and obj:
            items = (f"{inner}{json.dumps(str(k))}: {dump(v, inner)}" for k, v in obj.items())
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(obj, list) and obj and not all(flat(v) for v in obj):
            return "[\n" + ",\n".join(inner + dump(v, inner) for v in obj) + "\n" + pad + "]"
        if isinstance(obj, list):
            return "[" + ", ".join(json.dumps(v, default=float) for v in obj) + "]"
        return json.dumps(obj, default=float)

    return dump(cfg, "") + "\n"


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
    cfg_path.write_text(dumps_config(cfg))
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
