"""Generate the option reference of docs/configuration.md from the schema.

    python -m clever_cluster.daemon.configdoc --write

rewrites the part of docs/configuration.md between the BEGIN/END markers; a
test fails when the file is stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import types
import typing
from pathlib import Path
from typing import Any, Literal

from . import config
from .schema import _table_type, field_opt, format_duration, toml_key

BEGIN = "<!-- BEGIN GENERATED REFERENCE (python -m clever_cluster.daemon.configdoc --write) -->"
END = "<!-- END GENERATED REFERENCE -->"


def _type_text(tp: Any, kind: str | None) -> str:
    if kind == "duration":
        return "duration"
    if kind == "host_port":
        return "HOST:PORT"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if args and all(a in (ipaddress.IPv4Address, ipaddress.IPv6Address) for a in args):
            return "IP address"
        if args and all(a in (ipaddress.IPv4Interface, ipaddress.IPv6Interface) for a in args):
            return "IP address/prefix"
        return _type_text(args[0], kind)
    if origin is tuple:
        return f"array of {_type_text(typing.get_args(tp)[0], None)}"
    if origin is dict:
        return "table of strings"
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(tp, str(tp))


def _default_text(f: dataclasses.Field[Any], kind: str | None) -> str:
    if f.default is dataclasses.MISSING:
        return "**required**"
    d = f.default
    if d is None:
        return "unset"
    if kind == "duration":
        return f'`"{format_duration(d)}"`'
    if isinstance(d, bool):
        return f"`{str(d).lower()}`"
    if isinstance(d, (str, Path)):
        return f'`"{d}"`'
    if isinstance(d, tuple):
        return "`[]`" if not d else f"`{list(d)}`"
    return f"`{d}`"


def _limits(o: Any) -> str:
    def fmt(x: float) -> str:
        return format_duration(x) if o.kind == "duration" else f"{x:g}"

    parts = []
    if o.min is not None:
        parts.append(f"min {fmt(o.min)}")
    if o.max is not None:
        parts.append(f"max {fmt(o.max)}")
    return f" ({', '.join(parts)})" if parts else ""


def _table(name: str, cls: Any, array: bool, tag: str, out: list[str]) -> None:
    """One heading and table of scalar keys for ``cls``, then its sub-tables."""
    hints = typing.get_type_hints(cls)
    rows: list[str] = []
    subs: list[tuple[str, Any, bool, str]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = _table_type(tp)
        key = toml_key(f.name)
        if inner is not None:
            for c in inner:
                c_hints = typing.get_type_hints(c)
                c_tag = typing.get_args(c_hints["type"])[0] if len(inner) > 1 and "type" in c_hints else ""
                subs.append((f"{name}.{key}", c, typing.get_origin(tp) is tuple, c_tag))
            continue
        o = field_opt(f)
        rows.append(f"| `{key}` | {_type_text(tp, o.kind)}{_limits(o)} | {_default_text(f, o.kind)} | {o.doc} |")
    if rows:
        heading = f"[[{name}]]" if array else f"[{name}]"
        out.append(f"### `{heading}`" + (f' with `type = "{tag}"`' if tag else ""))
        out.append("")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        out.extend(rows)
        out.append("")
    for sub_name, c, sub_array, c_tag in subs:
        _table(sub_name, c, sub_array, c_tag, out)


def reference() -> str:
    out: list[str] = [BEGIN, ""]
    hints = typing.get_type_hints(config.Config)
    for f in dataclasses.fields(config.Config):
        tp = hints[f.name]
        for cls in _table_type(tp) or []:
            _table(f.name, cls, typing.get_origin(tp) is tuple, "", out)
    out.append(END)
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="update docs/configuration.md in place")
    args = ap.parse_args()
    text = reference()
    if not args.write:
        print(text)
        return
    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    current = doc.read_text()
    start, end = current.index(BEGIN), current.index(END) + len(END)
    doc.write_text(current[:start] + text + current[end:])


if __name__ == "__main__":
    main()
