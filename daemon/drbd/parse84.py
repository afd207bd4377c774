"""Pure parsers for DRBD 8.4 outputs: ``/proc/drbd``, the ``drbdadm`` one-liners,
``get-gi``/``show-gi``, ``sh-minor`` and ``drbdadm --version``.

Formats: ``shared/reference/drbd.md`` sections 0, 1 and 6.4 (``drbd_proc.c``,
``user/v84/drbdsetup.c``). Only the per-device lines are trusted; header
lines vary (``GIT-hash:`` or ``srcversion:``, sometimes missing).

Invariant: every function is pure and raises only DrbdParseError.
"""

from __future__ import annotations

import dataclasses
import re

from .model import (
    ConnState,
    DiskState,
    DrbdParseError,
    GenerationIds,
    ReplState,
    ResyncProgress,
    Role,
    disk_state,
    parse_gi_line,
    role,
    split_cs84,
)

_VERSION = re.compile(r"^version:\s*(\S+)\s+\(api:(\d+)/proto:(\d+)-(\d+)\)", re.ASCII)
_DEVICE = re.compile(
    r"^\s*(\d+):\s+cs:(\S+)(?:\s+ro:(\w+)/(\w+)\s+ds:(\w+)/(\w+)\s(.)\s+(\S+))?\s*$", re.ASCII
)
_COUNTER = re.compile(r"([a-z]+):(\S+)", re.ASCII)
_PROGRESS = re.compile(r"^\s*\[[=>.]*\]\s+(?:sync'?ed|verified):\s*([\d.]+)%\s+\(([\d,]+)/([\d,]+)\)([KM])", re.ASCII)
_UUID = r"[0-9A-Fa-f]{16}"
_GI84 = re.compile(rf"^({_UUID}):({_UUID}):({_UUID}):({_UUID}):([01](?::[01]){{6}}):?\s*$", re.ASCII)
GI84_FLAGS = ("consistent", "was_up_to_date", "primary", "connected", "full_sync", "peer_outdated", "crashed_primary")


@dataclasses.dataclass(frozen=True)
class ProcDevice:
    minor: int
    cs: str
    connection: ConnState
    replication: ReplState
    role: Role | None = None
    peer_role: Role | None = None
    disk: DiskState | None = None
    peer_disk: DiskState | None = None
    protocol: str | None = None
    io_flags: str | None = None
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    write_ordering: str | None = None
    resync: ResyncProgress | None = None

    @property
    def unconfigured(self) -> bool:
        return self.connection is ConnState.UNCONFIGURED

    @property
    def suspended(self) -> bool:
        return self.io_flags is not None and self.io_flags.startswith("s")

    @property
    def out_of_sync_kib(self) -> int | None:
        return self.counters.get("oos")


@dataclasses.dataclass(frozen=True)
class ProcDrbd:
    version: str | None
    api: int | None
    devices: dict[int, ProcDevice]


def parse_proc_drbd(text: str) -> ProcDrbd:
    version: str | None = None
    api: int | None = None
    devices: dict[int, ProcDevice] = {}
    current: dict[str, object] | None = None

    def finish() -> None:
        if current is not None:
            dev = ProcDevice(**current)  # type: ignore[arg-type]
            devices[dev.minor] = dev

    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        m = _VERSION.match(line)
        if m:
            version, api = m.group(1), int(m.group(2))
            continue
        if line.startswith(("GIT-hash:", "srcversion:")):
            continue
        m = _DEVICE.match(line)
        if m:
            finish()
            minor, cs = int(m.group(1)), m.group(2)
            if cs == "Unconfigured":
                current = {"minor": minor, "cs": cs, "connection": ConnState.UNCONFIGURED, "replication": ReplState.OFF}
                continue
            if m.group(3) is None:
                raise DrbdParseError(f"/proc/drbd: incomplete device line {line!r}")
            conn, repl = split_cs84(cs)
            proto = m.group(7)
            if proto not in ("A", "B", "C", " "):
                raise DrbdParseError(f"/proc/drbd: unknown protocol {proto!r} in {line!r}")
            flags = m.group(8)
            if not re.fullmatch(r"[rs][-a-z]{3,5}", flags):
                raise DrbdParseError(f"/proc/drbd: unknown I/O flags {flags!r} in {line!r}")
            current = {
                "minor": minor, "cs": cs, "connection": conn, "replication": repl,
                "role": role(m.group(3)), "peer_role": role(m.group(4)),
                "disk": disk_state(m.group(5)), "peer_disk": disk_state(m.group(6)),
                "protocol": None if proto == " " else proto, "io_flags": flags,
            }
            continue
        if current is None:
            raise DrbdParseError(f"/proc/drbd: unexpected line {line!r}")
        if line.lstrip().startswith("ns:"):
            counters: dict[str, int] = {}
            for key, value in _COUNTER.findall(line):
                if key == "wo":
                    current["write_ordering"] = value
                    continue
                if not re.fullmatch(r"-?[0-9]+", value):
                    raise DrbdParseError(f"/proc/drbd: counter {key}:{value!r} is not a number")
                counters[key] = int(value)
            if "oos" not in counters:
                raise DrbdParseError(f"/proc/drbd: counter line without oos: {line!r}")
            current["counters"] = counters
            continue
        m = _PROGRESS.match(line)
        if m:
            scale = 1024 if m.group(4) == "M" else 1
            current["resync"] = ResyncProgress(float(m.group(1)), int(m.group(2).replace(",", "")) * scale,
                                               int(m.group(3).replace(",", "")) * scale)
            continue
        if line.startswith("\t") or line.startswith("        "):
            continue  # finish:/speed:, proc_details lines
        raise DrbdParseError(f"/proc/drbd: unexpected line {line!r}")
    finish()
    if version is None and not devices:
        raise DrbdParseError("/proc/drbd: neither a version line nor a device")
    return ProcDrbd(version, api, devices)


def _one_line(text: str, what: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise DrbdParseError(f"drbdadm {what}: expected one line, got {len(lines)}")
    return lines[0]


def parse_role84(text: str) -> tuple[Role, Role] | None:
    """``Primary/Secondary``; None for ``Unconfigured``."""
    line = _one_line(text, "role")
    if line == "Unconfigured":
        return None
    parts = line.split("/")
    if len(parts) != 2:
        raise DrbdParseError(f"drbdadm role: {line!r}")
    return role(parts[0]), role(parts[1])


def parse_cstate84(text: str) -> tuple[ConnState, ReplState]:
    line = _one_line(text, "cstate")
    if line == "Unconfigured":
        return ConnState.UNCONFIGURED, ReplState.OFF
    return split_cs84(line)


def parse_dstate84(text: str) -> tuple[DiskState, DiskState] | None:
    line = _one_line(text, "dstate")
    if line == "Unconfigured":
        return None
    parts = line.split("/")
    if len(parts) != 2:
        raise DrbdParseError(f"drbdadm dstate: {line!r}")
    return disk_state(parts[0]), disk_state(parts[1])


def parse_gi84(text: str) -> GenerationIds:
    """``get-gi`` (one line) or ``show-gi`` (the same line inside a legend)."""
    return parse_gi_line(text, _GI84, GI84_FLAGS, "get-gi (8.4)")


def parse_sh_minor(text: str) -> int:
    line = _one_line(text, "sh-minor")
    if not re.fullmatch(r"[0-9]+", line):
        raise DrbdParseError(f"drbdadm sh-minor: {line!r} is not a minor number")
    return int(line)


def parse_version_vars(text: str) -> dict[str, str]:
    """``drbdadm --version``: ``NAME=value`` lines."""
    out: dict[str, str] = {}
    for ln in text.splitlines():
        if "=" in ln:
            k, v = ln.strip().split("=", 1)
            if re.fullmatch(r"[A-Z0-9_]+", k):
                out[k] = v
    if not out:
        raise DrbdParseError("drbdadm --version: no NAME=value lines")
    return out


def kernel_major_minor(version_vars: dict[str, str]) -> tuple[int, int]:
    code = version_vars.get("DRBD_KERNEL_VERSION_CODE")
    if code is None:
        raise DrbdParseError("drbdadm --version: no DRBD_KERNEL_VERSION_CODE (is the module loaded?)")
    try:
        n = int(code, 16)
    except ValueError:
        raise DrbdParseError(f"DRBD_KERNEL_VERSION_CODE={code!r}") from None
    return n >> 16, (n >> 8) & 0xFF
