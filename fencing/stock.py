"""Wrapper for any installed ClusterLabs fence agent (``fence_*``).

The calling convention of fence-agents' library, kept exactly:
- no command-line arguments at all (any argv makes an agent ignore stdin);
  options go to stdin as ``key=value`` lines, with ``action=`` and
  ``nodename=`` added by us; secrets come from a secret file, never argv;
- a scrubbed environment (``PATH``, ``LANG=C``, ``LC_ALL=C``; in particular
  no ``PCMK_service``, which would switch the agent's own timeouts off);
- the agent runs in its own process group under our deadline; at the
  deadline the whole group is killed (ipmitool, ssh children included);
- ``off`` succeeds only when the agent exits 0 *and* an independent
  ``action=status`` then exits 2 (OFF). Status exit 0 after a successful
  off is a contradiction; every other exit code is a failure;
- ``reboot`` is never sent and ``method=cycle`` is refused (unverifiable);
- options are checked against the agent's own metadata (names and their
  ``obsoletes`` aliases), and the agent must offer ``off`` and ``status``.

Stock agents cannot report the machine's UUID, so the identity is the one
the operator configured (``machine_id``); the identity check then rests on
the device reading ON while the peer is heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from .agent import DeviceConfigError, DeviceError, FenceAgent, canonical_uuid
from .types import Deadline, DeviceHealth, FenceResult, Outcome, PowerOnResult, PowerReading, PowerState, Secret, now_wall

SEARCH_PATH = ("/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin")
SCRUBBED_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
# Chosen by clever-cluster for every call; configuring them is an error.
RESERVED = {"action", "option", "nodename"}
# Agents whose device usually dies with the peer's power (a BMC).
BMC_AGENTS = {"fence_ipmilan", "fence_ipmilanplus", "fence_idrac", "fence_ilo3", "fence_ilo4", "fence_ilo5", "fence_imm",
              "fence_redfish", "fence_ilo", "fence_ilo_ssh", "fence_ilo_moonshot", "fence_ilo_mp", "fence_ibmblade", "fence_amt_ws"}
METADATA_TIMEOUT = 10.0
# Agent parameters that carry a secret (fence-agents' names; any *passw*
# too): they come from the secret file only, and describe() never shows them.
SECRET_OPTIONS = frozenset({"password", "passwd", "snmp_priv_passwd", "community", "hexadecimal_kg", "secret_key", "token", "apikey"})


def is_secret_option(key: str) -> bool:
    k = _norm(key).lower()
    return k in SECRET_OPTIONS or "passw" in k


@dataclasses.dataclass(frozen=True)
class StockParams:
    agent: str  # fence_ipmilan or /abs/path/fence_x
    options: Mapping[str, str]
    secrets: Mapping[str, Secret]  # from the secret file
    machine_id: str  # configured UUID of the machine the device powers
    nodename: str  # the peer's node name
    search_path: tuple[str, ...] = SEARCH_PATH


@dataclasses.dataclass(frozen=True)
class Metadata:
    names: frozenset[str]  # parameter names and their obsoletes aliases
    actions: frozenset[str]


def parse_metadata(xml_text: str) -> Metadata:
    """The parameter names and actions of an agent's metadata; ValueError if unusable."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise ValueError(f"metadata is not XML: {e}") from None
    if root.tag != "resource-agent":
        raise ValueError(f"metadata root is <{root.tag}>, not <resource-agent>")
    names: set[str] = set()
    for p in root.iter("parameter"):
        for attr in ("name", "obsoletes"):
            v = p.get(attr)
            if v:
                names.add(v)
    actions = frozenset(a.get("name", "") for a in root.iter("action"))
    if not names:
        raise ValueError("metadata lists no parameters")
    return Metadata(frozenset(names), actions)


def _norm(key: str) -> str:
    return key.strip().replace("-", "_")


def check_options(params: StockParams, meta: Metadata) -> list[str]:
    """Problems with the configured options, one sentence each (empty: fine)."""
    problems = []
    for need in ("off", "status"):
        if need not in meta.actions:
            problems.append(f"{params.agent} offers no `{need}` action; it cannot confirm a fence")
    known = {_norm(n) for n in meta.names}
    for key, value in [*params.options.items(), *((k, "") for k in params.secrets)]:
        k = _norm(key)
        if k in RESERVED:
            problems.append(f"option {key!r} is chosen by clever-cluster, not configured")
        elif k not in known:
            problems.append(f"option {key!r} is not a parameter of {params.agent}")
        if "\n" in value or "\r" in value:
            problems.append(f"option {key!r} contains a line break")
        if k == "method" and value.strip().lower() == "cycle":
            problems.append("method=cycle is refused: the agent would report success before the machine is off")
    for key, secret in params.secrets.items():
        if b"\n" in secret.reveal() or b"\r" in secret.reveal():
            problems.append(f"secret {key!r} contains a line break")
    return problems


class StockAgent(FenceAgent):
    kind = "fence_agent"

    def __init__(self, name: str, params: StockParams, timeout: float = 60.0, poll_interval: float = 1.0) -> None:
        super().__init__(name, timeout, poll_interval)
        self.params = params
        if " " in params.agent.strip():
            raise DeviceConfigError(f"{name}: `agent` is a command name or path, without arguments")
        self._metadata: Metadata | None = None
        self._machine_id = canonical_uuid(params.machine_id)
        base = os.path.basename(params.agent)
        self.shares_peer_power = base in BMC_AGENTS  # type: ignore[misc]

    def describe(self) -> str:
        # The options say which device and outlet; secrets are not options.
        opts = " ".join(f"{k}={'***' if is_secret_option(k) else v}" for k, v in sorted(self.params.options.items()))
        return f"{os.path.basename(self.params.agent)} {opts}".strip()

    def path(self) -> str:
        a = self.params.agent
        candidates = [a] if os.path.isabs(a) else [os.path.join(d, a) for d in self.params.search_path]
        for c in candidates:
            if os.path.isfile(c) and os.access(c, os.X_OK):
                return c
        raise DeviceConfigError(f"{self.name}: fence agent {a!r} is not installed (looked in {', '.join(candidates)})")

    # ------------------------------------------------------------ running

    def _stdin(self, action: str, with_options: bool = True) -> bytes:
        lines = []
        if with_options:
            lines += [f"{k}={v}".encode() for k, v in self.params.options.items()]
            lines += [k.encode() + b"=" + s.reveal() for k, s in self.params.secrets.items()]
            lines.append(f"nodename={self.params.nodename}".encode())
        lines.append(f"action={action}".encode())
        return b"\n".join(lines) + b"\n"

    def _redact(self, text: str) -> str:
        for s in self.params.secrets.values():
            raw = s.reveal().decode(errors="replace")
            if raw:
                text = text.replace(raw, "***")
        return text

    async def run(self, action: str, deadline: Deadline, with_options: bool = True) -> tuple[int, str]:
        """Run the agent once; returns (exit code, redacted stdout then stderr). Raises DeviceError(TIMED_OUT)."""
        rc, out, err = await self.run_split(action, deadline, with_options)
        return rc, "\n".join(x for x in (out, err) if x)

    async def run_split(self, action: str, deadline: Deadline, with_options: bool = True) -> tuple[int, str, str]:
        assert action not in ("reboot", "cycle"), "never fence with reboot/cycle"
        path = self.path()
        proc = await asyncio.create_subprocess_exec(
            path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(SCRUBBED_ENV), start_new_session=True, close_fds=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(self._stdin(action, with_options)), timeout=max(0.0, deadline.remaining()))
        except TimeoutError:
            await self._end_group(proc)
            raise DeviceError(Outcome.TIMED_OUT, f"{os.path.basename(path)} action={action} did not finish before the deadline; its process group was killed") from None
        except asyncio.CancelledError:
            # The caller gave up (shutdown, the fence ended): kill the agent
            # and let the cancellation go on; it is not a device result.
            await self._end_group(proc)
            raise
        # The agent is done; nothing it started may outlive it. Its group id
        # cannot be reused while a member lives, and with none left there is
        # nothing to kill (and the number might belong to someone else).
        if _group_has_members(proc.pid):
            self._kill_group(proc.pid)
        rc = proc.returncode
        assert rc is not None
        return rc, self._redact(out.decode(errors="replace")).strip(), self._redact(err.decode(errors="replace")).strip()

    async def _end_group(self, proc: asyncio.subprocess.Process) -> None:
        self._kill_group(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    async def metadata(self, deadline: Deadline) -> Metadata:
        if self._metadata is None:
            rc, out, err = await self.run_split("metadata", deadline.earliest(METADATA_TIMEOUT), with_options=False)
            if rc != 0:
                raise DeviceConfigError(f"{self.name}: `{self.params.agent}` action=metadata exited {rc}: {err[-200:]}")
            try:
                self._metadata = parse_metadata(out)
            except ValueError as e:
                raise DeviceConfigError(f"{self.name}: {self.params.agent}: {e}") from None
        return self._metadata

    async def validate(self, deadline: Deadline) -> list[str]:
        """Check the agent exists, its metadata, our options, and ``validate-all``."""
        try:
            meta = await self.metadata(deadline)
        except DeviceConfigError as e:
            return [str(e)]
        except DeviceError as e:
            return [f"{self.name}: metadata: {e.message}"]
        problems = [f"{self.name}: {p}" for p in check_options(self.params, meta)]
        if not problems and "validate-all" in meta.actions:
            try:
                rc, out = await self.run("validate-all", deadline)
            except DeviceError as e:
                return [f"{self.name}: validate-all: {e.message}"]
            if rc != 0:
                problems.append(f"{self.name}: validate-all exited {rc}: {out[-200:]}")
        return problems

    async def _ready(self, deadline: Deadline) -> None:
        problems = await self.validate(deadline) if self._metadata is None else []
        if self._metadata is None or problems:
            raise DeviceError(Outcome.REFUSED, "; ".join(problems) or f"{self.name}: metadata unavailable")
        problems = check_options(self.params, self._metadata)
        if problems:
            raise DeviceError(Outcome.REFUSED, f"{self.name}: " + "; ".join(problems))

    # ------------------------------------------------------------ contract

    async def status(self, deadline: Deadline) -> PowerReading:
        try:
            await self._ready(deadline)
            rc, out = await self.run("status", deadline)
        except (DeviceError, DeviceConfigError) as e:
            return PowerReading(PowerState.UNKNOWN, str(e), getattr(e, "outcome", Outcome.FAILED))
        last = out.splitlines()[-1] if out else ""
        if rc == 0:
            return PowerReading(PowerState.ON, f"status exit 0 ({last})")
        if rc == 2:
            return PowerReading(PowerState.OFF, f"status exit 2 ({last})")
        return PowerReading(PowerState.UNKNOWN, f"status exit {rc} ({last})", Outcome.FAILED)

    async def machine_id(self, deadline: Deadline) -> str:
        return self._machine_id

    async def monitor(self, deadline: Deadline) -> DeviceHealth:
        try:
            await self._ready(deadline)
            rc, out = await self.run("monitor", deadline)
        except (DeviceError, DeviceConfigError) as e:
            return self.health(False, str(e))
        if rc != 0:
            return self.health(False, f"monitor exit {rc}: {out[-200:]}")
        reading = await self.status(deadline)
        if reading.outcome is not None:
            return self.health(False, f"monitor ok but {reading.detail}")
        return self.health(True, f"monitor exit 0, {reading.detail}", reading.state, self._machine_id)

    async def off(self, deadline: Deadline) -> FenceResult:
        started = now_wall()
        evidence: list[str] = []
        async with self.lock:
            outcome = await self._off(deadline, evidence)
        return self.result("off", outcome, evidence, started)

    async def _off(self, deadline: Deadline, evidence: list[str]) -> Outcome:
        try:
            await self._ready(deadline)
            rc, out = await self.run("off", deadline)
        except DeviceError as e:
            evidence.append(e.message)
            return e.outcome
        except DeviceConfigError as e:
            evidence.append(str(e))
            return Outcome.REFUSED
        last = out.splitlines()[-1] if out else ""
        if rc != 0:
            evidence.append(f"action=off exited {rc}: {last}")
            return Outcome.FAILED
        evidence.append(f"action=off exited 0: {last}")
        # The independent check: only status exit 2 confirms.
        while True:
            reading = await self.status(deadline)
            if reading.outcome is None and reading.state is PowerState.OFF:
                evidence.append(f"independent check: {reading.detail}")
                return Outcome.CONFIRMED_OFF
            if reading.outcome is None and reading.state is PowerState.ON:
                evidence.append(f"independent check contradicts the agent: {reading.detail}")
                return Outcome.CONTRADICTION
            evidence.append(f"independent check failed: {reading.detail}")
            if deadline.remaining() <= self.poll_interval:
                evidence.append("no status exit 2 before the deadline")
                return Outcome.TIMED_OUT
            await asyncio.sleep(self.poll_interval)

    async def on(self, deadline: Deadline) -> PowerOnResult:
        started = now_wall()
        async with self.lock:
            try:
                await self._ready(deadline)
                rc, out = await self.run("on", deadline)
            except (DeviceError, DeviceConfigError) as e:
                return self.on_result(False, [str(e)], started)
            if rc != 0:
                return self.on_result(False, [f"action=on exited {rc}: {out[-200:]}"], started)
            reading = await self.status(deadline)
            return self.on_result(reading.state is PowerState.ON and reading.outcome is None,
                                  [f"action=on exited 0; {reading.detail}"], started)


def _group_has_members(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid):
            return True
    return False


def read_secret_file(path: Path) -> dict[str, Secret]:
    """``key=value`` lines (``#`` comments and blank lines skipped) as secrets."""
    out: dict[str, Secret] = {}
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if b"=" not in line:
            raise ValueError(f"{path}:{n}: expected key=value")
        k, v = line.split(b"=", 1)
        out[k.strip().decode()] = Secret(v)
    return out
