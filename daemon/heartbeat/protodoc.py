"""Generate the body key tables of docs/protocol.md from the wire records.

    python -m clever_cluster.daemon.heartbeat.protodoc --write

rewrites the part of docs/protocol.md between the BEGIN/END markers; a test
fails when the file is stale, so the documented keys are the ones on the wire.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from . import codec, model, requests, wire

BEGIN = "<!-- BEGIN GENERATED BODY TABLES (python -m clever_cluster.daemon.heartbeat.protodoc --write) -->"
END = "<!-- END GENERATED BODY TABLES -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

RECORDS: list[type] = [
    wire.Heartbeat, model.NodeReport, model.Epoch, model.ResourceSummary, model.DrbdReport, model.VmReport,
    model.GrantToken, model.GrantReply, model.FencingReport, model.EpisodeId, model.FencedIncarnation,
    model.Announce, model.IntentRef, model.AdminIntent, model.Ban, model.Cleanup,
    wire.RequestMsg, wire.ResponseMsg,
    requests.OutdateRequest, requests.OutdateResult, requests.GrantRequest, requests.GrantResult,
]


def _type(tp: Any, spec: codec.Spec) -> str:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type(inner, spec)} or nil"
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is tuple:
        return f"array (<= {spec.max_items}) of {_type(typing.get_args(tp)[0], spec)}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"map {tp.__name__}"
    if tp is str:
        return f"str (<= {spec.max_len})"
    if tp is bytes:
        return f"bin (<= {spec.max_len})"
    if tp is int:
        hi = "2^64-1" if spec.hi == codec.U64_MAX else f"{spec.hi:g}"
        return f"int {spec.lo:g}..{hi}"
    if tp is float:
        return f"float {spec.lo:g}..{spec.hi:g}"
    return str(getattr(tp, "__name__", tp))


def _default(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "nil"
    if dataclasses.is_dataclass(value):
        return "all defaults"
    if value == ():
        return "empty"
    return f"`{value!r}`"


def tables() -> str:
    out: list[str] = []
    for cls in RECORDS:
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out += [f"#### {cls.__name__}", "", doc, "", "| key | field | type | default |", "|---|---|---|---|"]
        for f in codec._fields(cls):
            default = _default(f.default)
            out.append(f"| `{f.spec.key}` | {f.name} | {_type(f.tp, f.spec)} | {default} |")
        out.append("")
    return "\n".join(out)


def render(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{tables()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {DOC}")
    args = ap.parse_args(argv)
    if args.write:
        DOC.write_text(render(DOC.read_text()))
    else:
        print(tables())
    return 0


if __name__ == "__main__":
    sys.exit(main())
