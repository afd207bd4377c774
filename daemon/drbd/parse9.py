"""Pure parsers for DRBD 9 outputs: ``drbdsetup events2``, ``status`` (text and
``--json``), the one-liners and ``get-gi``/``show-gi``.

events2 grammar (``shared/reference/drbd.md`` section 4): ``[timestamp ]action
object key:value...``. ``change`` lines carry only what changed, so
:class:`Events2Model` keeps one dict per object and merges.

Invariants: pure; only DrbdParseError escapes; unknown keys are kept but
ignored; a ``change`` for an object never created is an error (the model is
then unreliable and the caller restarts the stream).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from .model import DrbdParseError, GenerationIds, Role, disk_state, parse_gi_line, role

ACTIONS = frozenset({"exists", "create", "change", "destroy", "call", "response", "rename"})
OBJECTS = frozenset({"resource", "device", "connection", "peer-device", "path", "helper", "-"})
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d$", re.ASCII)
_KEY = re.compile(r"^[a-z][a-z0-9_/-]*$", re.ASCII)

# Identity keys of each object (drbdsetup_events2.c).
IDENTITY: dict[str, tuple[str, ...]] = {
    "resource": ("name",),
    "device": ("name", "volume"),
    "connection": ("name", "peer-node-id"),
    "peer-device": ("name", "peer-node-id", "volume"),
    "path": ("name", "peer-node-id", "local", "peer"),
}


@dataclasses.dataclass(frozen=True)
class Event:
    action: str
    obj: str
    keys: dict[str, str]
    timestamp: str | None = None

    def identity(self) -> tuple[str, ...]:
        try:
            return tuple(self.keys[k] for k in IDENTITY[self.obj])
        except KeyError as e:
            raise DrbdParseError(f"events2: {self.action} {self.obj} without {e.args[0]}") from None


def parse_event(line: str) -> Event:
    parts = line.rstrip("\n").split(" ")
    parts = [p for p in parts if p]
    ts = None
    if parts and _TS.match(parts[0]):
        ts = parts.pop(0)
    if len(parts) < 2 or parts[0] not in ACTIONS or parts[1] not in OBJECTS:
        raise DrbdParseError(f"events2: not an event: {line[:120]!r}")
    action, obj = parts[0], parts[1]
    if obj == "-":
        if action != "exists" or len(parts) != 2:
            raise DrbdParseError(f"events2: bad end-of-dump line {line[:120]!r}")
        return Event(action, obj, {}, ts)
    keys: dict[str, str] = {}
    for item in parts[2:]:
        k, sep, v = item.partition(":")
        if not sep or not _KEY.match(k):
            raise DrbdParseError(f"events2: bad key:value {item[:60]!r}")
        keys[k] = v
    if "name" not in keys:
        raise DrbdParseError(f"events2: {action} {obj} without name")
    if obj == "helper" and ("helper" not in keys or action not in ("call", "response")):
        raise DrbdParseError(f"events2: bad helper event {line[:120]!r}")
    if action in ("call", "response") and obj != "helper":
        raise DrbdParseError(f"events2: {action} of {obj}")
    return Event(action, obj, keys, ts)


class Events2Model:
    """One state dict per object, merged from exists/create/change/destroy lines."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str, ...], dict[str, str]]] = {o: {} for o in IDENTITY}
        self.initial_done = False
        self.helpers_running: dict[tuple[str, str], int] = {}  # (resource, helper) -> calls in flight
        self.helper_log: list[Event] = []

    def apply(self, ev: Event) -> None:
        if ev.obj == "-":
            self.initial_done = True
            return
        if ev.obj == "helper":
            key = (ev.keys["name"], ev.keys["helper"])
            if ev.action == "call":
                self.helpers_running[key] = self.helpers_running.get(key, 0) + 1
            else:
                n = self.helpers_running.get(key, 0) - 1
                if n > 0:
                    self.helpers_running[key] = n
                else:
                    self.helpers_running.pop(key, None)
            self.helper_log.append(ev)
            del self.helper_log[:-64]
            return
        if ev.action == "rename":
            return
        table = self.objects[ev.obj]
        ident = ev.identity()
        if ev.action in ("exists", "create"):
            table[ident] = dict(ev.keys)
        elif ev.action == "change":
            if ident not in table:
                if ev.obj == "path":  # the kernel sends no initial "exists path"
                    table[ident] = dict(ev.keys)
                    return
                raise DrbdParseError(f"events2: change of unknown {ev.obj} {ident}")
            table[ident].update(ev.keys)
        elif ev.action == "destroy":
            table.pop(ident, None)

    def resource(self, name: str) -> dict[str, str] | None:
        return self.objects["resource"].get((name,))

    def connections(self, name: str) -> list[dict[str, str]]:
        return [v for k, v in sorted(self.objects["connection"].items()) if k[0] == name]

    def device(self, name: str, volume: int) -> dict[str, str] | None:
        return self.objects["device"].get((name, str(volume)))

    def devices(self, name: str) -> list[dict[str, str]]:
        return [v for k, v in sorted(self.objects["device"].items()) if k[0] == name]

    def peer_devices(self, name: str, volume: int | None = None) -> list[dict[str, str]]:
        """The peer devices of ``volume``, or of every volume."""
        return [v for k, v in sorted(self.objects["peer-device"].items())
                if k[0] == name and (volume is None or k[2] == str(volume))]

    def helper_running(self, name: str, helper: str) -> bool:
        return self.helpers_running.get((name, helper), 0) > 0


# --------------------------------------------------------------------------- status --json


@dataclasses.dataclass(frozen=True)
class JsonStatus:
    """One resource of ``drbdsetup status --json`` (tolerant: missing keys are None)."""

    name: str
    role: Role
    suspended: frozenset[str]
    devices: tuple[Mapping[str, Any], ...]
    connections: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any]


_SUSP_KEYS = {"suspended-user": "user", "suspended-no-data": "no-data", "suspended-fencing": "fencing",
              "suspended-quorum": "quorum"}


def parse_status_json(text: str) -> list[JsonStatus]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DrbdParseError(f"status --json: not JSON: {e}") from None
    if not isinstance(data, list):
        raise DrbdParseError("status --json: top level is not an array")
    out = []
    for res in data:
        if not isinstance(res, dict) or not isinstance(res.get("name"), str) or not isinstance(res.get("role"), str):
            raise DrbdParseError("status --json: a resource without name or role")
        reasons = {v for k, v in _SUSP_KEYS.items() if res.get(k) is True}
        if res.get("suspended") is True and not reasons:
            reasons.add("unspecified")
        devices = res.get("devices", [])
        conns = res.get("connections", [])
        if not isinstance(devices, list) or not isinstance(conns, list):
            raise DrbdParseError("status --json: devices/connections are not arrays")
        for d in devices:
            if not isinstance(d, dict) or not isinstance(d.get("disk-state"), str):
                raise DrbdParseError("status --json: a device without disk-state")
            disk_state(d["disk-state"])
        for c in conns:
            if not isinstance(c, dict) or not isinstance(c.get("connection-state"), str):
                raise DrbdParseError("status --json: a connection without connection-state")
            pds = c.get("peer_devices", [])
            if not isinstance(pds, list) or not all(isinstance(p, dict) for p in pds):
                raise DrbdParseError("status --json: peer_devices is not an array of objects")
        out.append(JsonStatus(res["name"], role(res["role"]), frozenset(reasons), tuple(devices), tuple(conns), res))
    return out


# --------------------------------------------------------------------------- status (text)


@dataclasses.dataclass
class TextPeer:
    name: str
    keys: dict[str, str]
    volumes: list[dict[str, str]]


@dataclasses.dataclass
class TextStatus:
    name: str
    keys: dict[str, str]
    volumes: list[dict[str, str]]
    peers: list[TextPeer]


def _kv(tokens: list[str], line: str) -> dict[str, str]:
    out = {}
    for t in tokens:
        k, sep, v = t.partition(":")
        if not sep or not _KEY.match(k):
            raise DrbdParseError(f"status: bad key:value {t!r} in {line!r}")
        out[k] = v
    return out


def parse_status_text(text: str) -> list[TextStatus]:
    """``drbdadm status``: resource line, 2-space device lines, 2-space peer lines,
    4-space peer-device lines; deeper indentation continues the previous line
    (wrapping at the terminal width)."""
    logical: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if logical and indent > 6:
            logical[-1] = (logical[-1][0], logical[-1][1] + " " + raw.strip())
            continue
        if indent == 4 and logical and logical[-1][0] == 0:
            logical[-1] = (0, logical[-1][1] + " " + raw.strip())  # verbose: write-ordering under the resource
            continue
        if indent == 6 and logical:
            logical[-1] = (logical[-1][0], logical[-1][1] + " " + raw.strip())
            continue
        logical.append((indent, raw.strip()))
    out: list[TextStatus] = []
    for indent, line in logical:
        tokens = line.split()
        if indent == 0:
            if not tokens or ":" in tokens[0]:
                raise DrbdParseError(f"status: resource line without a name: {line!r}")
            out.append(TextStatus(tokens[0], _kv(tokens[1:], line), [], []))
            continue
        if not out:
            raise DrbdParseError(f"status: {line!r} before any resource")
        res = out[-1]
        if indent == 2:
            if tokens and ":" not in tokens[0]:
                res.peers.append(TextPeer(tokens[0], _kv(tokens[1:], line), []))
            else:
                res.volumes.append(_kv(tokens, line))
        elif indent == 4:
            if not res.peers:
                raise DrbdParseError(f"status: peer-device line without a peer: {line!r}")
            res.peers[-1].volumes.append(_kv(tokens, line))
        else:
            raise DrbdParseError(f"status: unexpected indentation {indent} in {line!r}")
    for r in out:
        if "role" in r.keys:
            role(r.keys["role"])
    return out


# --------------------------------------------------------------------------- one-liners, gi


def parse_role9(text: str) -> Role:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise DrbdParseError(f"drbdadm role: expected one line, got {len(lines)}")
    if "/" in lines[0]:  # drbd-utils 9 talking to an 8.4 kernel
        return role(lines[0].split("/")[0])
    return role(lines[0])


_UUID = r"[0-9A-Fa-f]{16}"
_GI9 = re.compile(rf"^({_UUID}):({_UUID}):({_UUID}):({_UUID}):([01](?::[01]){{11}}):?\s*$", re.ASCII)
GI9_FLAGS = ("consistent", "was_up_to_date", "primary", "crashed_primary", "al_clean", "al_disabled",
             "primary_lost_quorum", "connected", "peer_outdated", "fencing", "full_sync", "device_seen")


def parse_gi9(text: str) -> GenerationIds:
    return parse_gi_line(text, _GI9, GI9_FLAGS, "get-gi (9)")
