"""The key paths documented in docs/status-schema.md, and the keys of a status document that are not.

A documented path is the first cell of a table row in backticks, in the
sections before "With the daemon down": ``a.b``, ``list[]`` for list items,
``map.*`` for the values of a map whose keys are data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "status-schema.md"
ROW = re.compile(r"^\| `([^`]+)` \|")


def documented(text: str | None = None) -> set[str]:
    text = DOC.read_text() if text is None else text
    schema_part = text.split("\n## With the daemon down", 1)[0]
    return {m.group(1) for line in schema_part.splitlines() if (m := ROW.match(line))}


def emitted(obj: Any, known: set[str], prefix: str = "") -> set[str]:
    """Every key path of ``obj``; a dict whose ``prefix.*`` is documented is a map (its keys are data)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        is_map = f"{prefix}.*" in known
        for k, v in obj.items():
            path = f"{prefix}.*" if is_map else (f"{prefix}.{k}" if prefix else k)
            out.add(path)
            out |= emitted(v, known, path)
    elif isinstance(obj, list):
        for v in obj:
            out.add(f"{prefix}[]")
            out |= emitted(v, known, f"{prefix}[]")
    return out


def undocumented(doc: dict[str, Any]) -> list[str]:
    known = documented()
    # ``intent.superseded`` and ``resources.sequence`` reuse the fields of a documented object.
    aliases = {"heartbeat.intent.superseded.": "heartbeat.intent.record.", "intent.superseded.": "heartbeat.intent.record.",
               "resources.sequence.": "resources.history[]."}
    missing = []
    for path in sorted(emitted(doc, known)):
        alias = next((path.replace(a, b, 1) for a, b in aliases.items() if path.startswith(a)), path)
        if path not in known and alias not in known:
            missing.append(path)
    return missing
