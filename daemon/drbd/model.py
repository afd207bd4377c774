"""DRBD's state vocabulary and the typed facts the adapter hands to the policy.

The names are DRBD's own strings (``drbd_strings.c``), so a value can be
matched against DRBD's documentation. DRBD 8.4's connection states are
mapped onto DRBD 9's split of connection state and replication state
(``WFConnection`` is ``Connecting``; ``SyncSource`` is ``Connected`` with
replication ``SyncSource``); the original string is kept for display.

Invariants:
- Every parser raises :class:`DrbdParseError` and nothing else on text it
  does not understand.
- :class:`DrbdFacts` with ``known=False`` carries no state: consumers must
  treat every field as unknown (never "Secondary", never "UpToDate").
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import TypeVar


class DrbdParseError(ValueError):
    """DRBD printed something this adapter does not understand."""


class Role(enum.StrEnum):
    PRIMARY = "Primary"
    SECONDARY = "Secondary"
    UNKNOWN = "Unknown"


class DiskState(enum.StrEnum):
    DISKLESS = "Diskless"
    ATTACHING = "Attaching"
    DETACHING = "Detaching"
    FAILED = "Failed"
    NEGOTIATING = "Negotiating"
    INCONSISTENT = "Inconsistent"
    OUTDATED = "Outdated"
    DUNKNOWN = "DUnknown"
    CONSISTENT = "Consistent"
    UPTODATE = "UpToDate"


class ConnState(enum.StrEnum):
    STANDALONE = "StandAlone"
    DISCONNECTING = "Disconnecting"
    UNCONNECTED = "Unconnected"
    TIMEOUT = "Timeout"
    BROKENPIPE = "BrokenPipe"
    NETWORKFAILURE = "NetworkFailure"
    PROTOCOLERROR = "ProtocolError"
    TEARDOWN = "TearDown"
    CONNECTING = "Connecting"
    CONNECTED = "Connected"
    UNCONFIGURED = "Unconfigured"  # 8.4 pseudo-state: no disk and no network config


class ReplState(enum.StrEnum):
    OFF = "Off"
    ESTABLISHED = "Established"
    STARTINGSYNCS = "StartingSyncS"
    STARTINGSYNCT = "StartingSyncT"
    WFBITMAPS = "WFBitMapS"
    WFBITMAPT = "WFBitMapT"
    WFSYNCUUID = "WFSyncUUID"
    SYNCSOURCE = "SyncSource"
    SYNCTARGET = "SyncTarget"
    VERIFYS = "VerifyS"
    VERIFYT = "VerifyT"
    PAUSEDSYNCS = "PausedSyncS"
    PAUSEDSYNCT = "PausedSyncT"
    AHEAD = "Ahead"
    BEHIND = "Behind"


RESYNC_STATES = frozenset({ReplState.SYNCSOURCE, ReplState.SYNCTARGET, ReplState.PAUSEDSYNCS, ReplState.PAUSEDSYNCT,
                           ReplState.STARTINGSYNCS, ReplState.STARTINGSYNCT, ReplState.WFBITMAPS, ReplState.WFBITMAPT,
                           ReplState.WFSYNCUUID})

# 8.4 "cs:" values that are DRBD 9 connection states of the same name.
_CS84_PLAIN = {c.value: c for c in ConnState}
_CS84_WAITING = {"WFConnection": ConnState.CONNECTING, "WFReportParams": ConnState.CONNECTING}


E = TypeVar("E", Role, DiskState, ConnState, ReplState)


def _value(cls: type[E], text: str, what: str) -> E:
    try:
        return cls(text)
    except ValueError:
        raise DrbdParseError(f"unknown DRBD {what} {text!r}") from None


def role(text: str) -> Role:
    return _value(Role, text, "role")


def disk_state(text: str) -> DiskState:
    return _value(DiskState, text, "disk state")


def conn_state(text: str) -> ConnState:
    return _value(ConnState, text, "connection state")


def repl_state(text: str) -> ReplState:
    return _value(ReplState, text, "replication state")


def split_cs84(cs: str) -> tuple[ConnState, ReplState]:
    """8.4's single ``cs:`` value as (connection, replication)."""
    if cs in _CS84_WAITING:
        return _CS84_WAITING[cs], ReplState.OFF
    if cs == "Connected":
        return ConnState.CONNECTED, ReplState.ESTABLISHED
    if cs in _CS84_PLAIN:
        return _CS84_PLAIN[cs], ReplState.OFF
    try:
        return ConnState.CONNECTED, ReplState(cs)
    except ValueError:
        raise DrbdParseError(f"unknown DRBD 8.4 connection state {cs!r}") from None


def worst_disk(states: list[DiskState]) -> DiskState:
    """The lowest of several disk states in DRBD's own order (Diskless lowest, UpToDate highest)."""
    order = list(DiskState)
    return min(states, key=order.index)


def yes_no(text: str) -> bool:
    """DRBD booleans: ``no``/``false`` are false, anything else true (drbd-reactor's rule)."""
    return text not in ("no", "false")


@dataclasses.dataclass(frozen=True)
class ResyncProgress:
    done_percent: float
    left_kib: int | None = None
    total_kib: int | None = None


@dataclasses.dataclass(frozen=True)
class GenerationIds:
    """``get-gi``: the data generation UUIDs and the flags, as DRBD prints them."""

    current: str
    bitmap: str
    history: tuple[str, ...]
    flags: Mapping[str, bool]

    @property
    def data_uuid(self) -> str:
        """The current UUID with the role bit (bit 0) cleared, for comparing nodes."""
        return f"{int(self.current, 16) & ~1:016X}"


def parse_gi_line(text: str, pattern: re.Pattern[str], flags: tuple[str, ...], what: str) -> GenerationIds:
    """The one ``CURRENT:BITMAP:HIST1:HIST2:flags`` line of get-gi/show-gi output."""
    found = [m for m in (pattern.match(ln.strip()) for ln in text.splitlines()) if m]
    if len(found) != 1:
        raise DrbdParseError(f"{what}: expected one UUID line, found {len(found)}")
    m = found[0]
    bits = m.group(5).split(":")
    return GenerationIds(m.group(1).upper(), m.group(2).upper(), (m.group(3).upper(), m.group(4).upper()),
                         {name: b == "1" for name, b in zip(flags, bits, strict=True)})


@dataclasses.dataclass(frozen=True)
class SafetyIssue:
    """One setting that breaks DESIGN S9, named as in drbd.conf."""

    setting: str
    found: str
    required: str
    source: str  # "running" (drbdsetup show) or "config" (drbdadm dump)

    def describe(self) -> str:
        where = "running configuration" if self.source == "running" else "configuration file"
        return f"{self.setting} is {self.found} in the {where}; clever-cluster needs {self.required}"


@dataclasses.dataclass(frozen=True)
class SafetyReport:
    issues: tuple[SafetyIssue, ...]
    fencing: str | None = None  # the running fencing policy, when known

    @property
    def safe(self) -> bool:
        return not self.issues


@dataclasses.dataclass(frozen=True)
class DrbdFacts:
    """The DRBD observer's latest view of ``drbd.resource`` (and volume)."""

    backend: str  # "drbd9", "drbd84" or "unknown"
    resource: str
    known: bool
    observed_at: float | None = None
    role: Role = Role.UNKNOWN
    peer_role: Role = Role.UNKNOWN
    connection: ConnState | None = None
    connection_raw: str | None = None
    disk: DiskState | None = None
    peer_disk: DiskState | None = None
    replication: ReplState | None = None
    resync: ResyncProgress | None = None
    out_of_sync_kib: int | None = None
    suspended: frozenset[str] = frozenset()
    quorum: bool | None = None
    may_promote: bool | None = None
    split_brain: bool = False
    split_brain_evidence: str | None = None
    fence_peer_running: bool = False
    generation: GenerationIds | None = None
    settings: SafetyReport | None = None
    error: str | None = None

    @property
    def io_suspended(self) -> bool:
        return bool(self.suspended)

    @property
    def current_uuid(self) -> str | None:
        return self.generation.current if self.generation is not None else None

    @classmethod
    def unknown(cls, backend: str, resource: str, reason: str) -> DrbdFacts:
        return cls(backend=backend, resource=resource, known=False, error=reason)
