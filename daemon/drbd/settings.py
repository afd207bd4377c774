"""DESIGN S9: read DRBD's configuration and name every unsafe setting.

Two sources, both in drbd.conf syntax: ``drbdsetup show --show-defaults RES``
(what the kernel runs: protocol, fencing, allow-two-primaries, auto-promote)
and ``drbdadm dump RES`` (the file: the same options, plus the handlers and
``startup { become-primary-on }``, which the kernel never sees).

Invariants:
- Pure; only DrbdParseError escapes.
- A setting that is absent takes DRBD's default (protocol C, fencing
  dont-care, allow-two-primaries no, DRBD 9 auto-promote yes), so a missing
  line can make a configuration unsafe but never safe.
- Each problem is reported once per source, by its drbd.conf name.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Iterator

from .model import DrbdParseError, SafetyIssue, SafetyReport


@dataclasses.dataclass
class Stmt:
    words: list[str]
    block: list[Stmt] | None = None

    @property
    def name(self) -> str:
        return self.words[0] if self.words else ""


def tokenize(text: str) -> Iterator[str]:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            yield c
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise DrbdParseError("drbd.conf: unterminated string")
            yield '"' + "".join(buf)  # a leading quote marks a string token
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in '{};"#':
                j += 1
            yield text[i:j]
            i = j


def parse_conf(text: str) -> list[Stmt]:
    tokens = list(tokenize(text))
    pos = 0

    def block(depth: int) -> list[Stmt]:
        nonlocal pos
        out: list[Stmt] = []
        words: list[str] = []
        while pos < len(tokens):
            t = tokens[pos]
            pos += 1
            if t == ";":
                if words:
                    out.append(Stmt([w.lstrip('"') if w.startswith('"') else w for w in words]))
                words = []
            elif t == "{":
                if not words:
                    raise DrbdParseError("drbd.conf: a block without a name")
                out.append(Stmt([w.lstrip('"') if w.startswith('"') else w for w in words], block(depth + 1)))
                words = []
            elif t == "}":
                if depth == 0 or words:
                    raise DrbdParseError("drbd.conf: unbalanced '}'")
                return out
            else:
                words.append(t)
        if depth != 0 or words:
            raise DrbdParseError("drbd.conf: unexpected end of text (missing '}' or ';')")
        return out

    stmts = block(0)
    if not any(s.name == "resource" and s.block is not None for s in stmts):
        raise DrbdParseError("drbd.conf: no resource block")
    return stmts


def find_resource(stmts: list[Stmt], resource: str) -> Stmt:
    for s in stmts:
        if s.name == "resource" and s.block is not None and len(s.words) >= 2 and s.words[1] == resource:
            return s
    raise DrbdParseError(f"drbd.conf: resource {resource!r} not found")


def options(res: Stmt, section: str, key: str) -> list[str]:
    """Every value of ``section { key value; }`` anywhere inside the resource."""
    found: list[str] = []

    def walk(stmts: list[Stmt], in_section: bool) -> None:
        for s in stmts:
            if s.block is not None:
                walk(s.block, s.name == section)
            elif in_section and s.name == key:
                found.append(" ".join(s.words[1:]))
    assert res.block is not None
    walk(res.block, False)
    return found


def _handler_ok(value: str, verb: str) -> bool:
    """Exactly ``[path/]clevervm [--config F | --socket S]... VERB``: no shell around it.

    DRBD runs handlers through ``/bin/sh -c``: anything after the command
    (``; exit 5``, ``|| true``) would replace clevervm's exit code.
    """
    if any(ch in value for ch in ";|&$`<>()\n*?!{}"):
        return False
    try:
        argv = shlex.split(value)
    except ValueError:
        return False
    if not argv or os.path.basename(argv[0]) != "clevervm":
        return False
    rest = argv[1:]
    while len(rest) >= 2 and rest[0] in ("--config", "--socket"):
        rest = rest[2:]
    return rest == [verb]


DEFAULTS = {"protocol": "C", "fencing": "dont-care", "allow-two-primaries": "no", "auto-promote": "yes"}


def check(running: str | None, config: str | None, resource: str, *, drbd9: bool) -> SafetyReport:
    """Check both texts (either may be None when it could not be read: that is an issue too)."""
    issues: list[SafetyIssue] = []
    fencing_running: str | None = None
    for source, text in (("running", running), ("config", config)):
        if text is None:
            issues.append(SafetyIssue("(all)", "unreadable", "a readable configuration", source))
            continue
        stmts = parse_conf(text)
        res = find_resource(stmts, resource)
        # Options inherited from a "common" section count as much as the resource's own.
        for common in (st for st in stmts if st.name == "common" and st.block is not None):
            assert res.block is not None and common.block is not None
            res = Stmt(res.words, [*common.block, *res.block])

        def values(section: str, key: str, res: Stmt = res) -> list[str]:
            v = options(res, section, key)
            return v or [DEFAULTS[key]]

        # Protocol: net section, or the 8.3-style resource-level statement.
        assert res.block is not None
        protos = options(res, "net", "protocol") + [" ".join(s.words[1:]) for s in res.block if s.block is None and s.name == "protocol"]
        for v in sorted(set(protos or ["C"])):
            if v != "C":
                issues.append(SafetyIssue("net.protocol", v, "C (DRBD refuses resource-and-stonith with protocol A)", source))
        fen = options(res, "net", "fencing") + options(res, "disk", "fencing")
        fen_values = sorted(set(fen or [DEFAULTS["fencing"]]))
        if source == "running":
            fencing_running = fen_values[0] if len(fen_values) == 1 else ",".join(fen_values)
        for v in fen_values:
            if v != "resource-and-stonith":
                issues.append(SafetyIssue("net.fencing" if drbd9 else "disk.fencing", v, "resource-and-stonith", source))
        for v in sorted(set(values("net", "allow-two-primaries"))):
            if v != "no":
                issues.append(SafetyIssue("net.allow-two-primaries", v, "no", source))
        if drbd9:
            for v in sorted(set(values("options", "auto-promote"))):
                if v != "no":
                    issues.append(SafetyIssue("options.auto-promote", v, "no", source))
        if source == "config":
            for v in options(res, "startup", "become-primary-on"):
                issues.append(SafetyIssue("startup.become-primary-on", v, "not set (clever-cluster decides who is Primary)", source))
            fp = options(res, "handlers", "fence-peer")
            if not fp or not all(_handler_ok(v, "fence-peer") for v in fp):
                issues.append(SafetyIssue("handlers.fence-peer", fp[0] if fp else "not set", '"clevervm fence-peer"', source))
            up = options(res, "handlers", "unfence-peer")
            if not drbd9 and not up:
                up = [v for v in options(res, "handlers", "after-resync-target") if _handler_ok(v, "unfence-peer")]
            if not up or not all(_handler_ok(v, "unfence-peer") for v in up):
                issues.append(SafetyIssue("handlers.unfence-peer", up[0] if up else "not set", '"clevervm unfence-peer"', source))
    return SafetyReport(tuple(issues), fencing_running)
