"""IPMI over LAN (RMCP+) fence agent, through pyghmi.

- A fresh IPMI session per operation (``off``, ``on``, ``status``,
  ``monitor``, ``machine_id``), logged out at its end. pyghmi is blocking and
  keeps process-wide session state, so each operation runs it in a worker
  process (:mod:`.ipmi_worker`, pyghmi's own I/O thread inside) that is
  killed, with its process group, when the operation's deadline passes.
- Raw IPMI commands only: Get Chassis Status, Chassis Control power down (a
  hard off: never cycle, reset or soft-off), Get System GUID. pyghmi's
  ``set_power`` is not used: it skips the command when it already reads the
  wanted state and may divert to OEM handlers.
- ``off`` confirms only after two consecutive OFF chassis-status readings
  after the command; an acknowledgement alone is nothing.
- The password goes to the worker on its stdin, never argv or environment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import signal
import sys
from typing import Any

from .agent import DeviceError, FenceAgent, verify_off, verify_on
from .types import Deadline, DeviceHealth, FenceResult, Outcome, PowerOnResult, PowerReading, PowerState, Secret, now_wall

_OUTCOMES = {"failed": Outcome.FAILED, "unreachable": Outcome.UNREACHABLE}


@dataclasses.dataclass(frozen=True)
class IpmiParams:
    host: str
    port: int
    username: str
    password: Secret


class _Session:
    """One IPMI session, held by a worker process."""

    def __init__(self, params: IpmiParams, label: str) -> None:
        self.params = params
        self.label = label
        self.proc: asyncio.subprocess.Process | None = None

    async def open(self, deadline: Deadline) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clever_cluster.fencing.ipmi_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        p = self.params
        login = {"host": p.host, "port": p.port, "user": p.username, "password_b64": base64.b64encode(p.password.reveal()).decode()}
        try:
            await self._exchange(login, deadline)
        except DeviceError as e:
            if e.outcome is Outcome.TIMED_OUT:
                raise DeviceError(Outcome.UNREACHABLE, f"no IPMI session with {p.host}:{p.port} before the deadline") from None
            raise

    async def _exchange(self, request: dict[str, Any], deadline: Deadline) -> Any:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.returncode is not None:
            raise DeviceError(Outcome.UNREACHABLE, f"{self.label}: IPMI session already ended")
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=max(0.0, deadline.remaining()))
        except TimeoutError:
            self.kill()
            raise DeviceError(Outcome.TIMED_OUT, f"{self.label}: no answer from the BMC before the deadline") from None
        except (ConnectionError, BrokenPipeError):
            self.kill()
            raise DeviceError(Outcome.UNREACHABLE, f"{self.label}: IPMI session process ended") from None
        if not line:
            self.kill()
            raise DeviceError(Outcome.UNREACHABLE, f"{self.label}: IPMI session process ended")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise DeviceError(_OUTCOMES.get(reply.get("outcome"), Outcome.FAILED), str(reply.get("message")))
        return reply.get("data")

    async def call(self, op: str, deadline: Deadline) -> Any:
        return await self._exchange({"op": op}, deadline)

    async def power(self, deadline: Deadline) -> PowerReading:
        try:
            data = await self.call("power", deadline)
        except DeviceError as e:
            return PowerReading(PowerState.UNKNOWN, e.message, e.outcome)
        return PowerReading(PowerState.ON if data["on"] else PowerState.OFF, str(data["detail"]))

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def close(self, deadline: Deadline) -> None:
        """Log out (the worker does so at end of input); kill it if it lingers."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            # A logout may not hold the operation much past its deadline.
            await asyncio.wait_for(self.proc.wait(), timeout=max(0.5, min(3.0, deadline.remaining())))
        except TimeoutError:
            self.kill()
            await self.proc.wait()


class IpmiAgent(FenceAgent):
    kind = "ipmi"
    shares_peer_power = True

    def __init__(self, name: str, params: IpmiParams, timeout: float = 30.0, poll_interval: float = 1.0) -> None:
        super().__init__(name, timeout, poll_interval)
        self.params = params

    def describe(self) -> str:
        return f"ipmi {self.params.host}:{self.params.port} user {self.params.username}"

    @contextlib.asynccontextmanager
    async def _session(self, deadline: Deadline, what: str):  # type: ignore[no-untyped-def]
        s = _Session(self.params, f"{self.name} {what}")
        try:
            await s.open(deadline)
            yield s
        finally:
            await asyncio.shield(s.close(deadline))

    async def status(self, deadline: Deadline) -> PowerReading:
        try:
            async with self._session(deadline, "status") as s:
                reading: PowerReading = await s.power(deadline)
                return reading
        except DeviceError as e:
            return PowerReading(PowerState.UNKNOWN, e.message, e.outcome)

    async def machine_id(self, deadline: Deadline) -> str:
        async with self._session(deadline, "guid") as s:
            return str(await s.call("guid", deadline))

    async def monitor(self, deadline: Deadline) -> DeviceHealth:
        try:
            async with self._session(deadline, "monitor") as s:
                reading = await s.power(deadline)
                if reading.outcome is not None:
                    return self.health(False, reading.detail)
                guid = str(await s.call("guid", deadline))
        except DeviceError as e:
            return self.health(False, e.message)
        return self.health(True, f"session ok, {reading.detail}", reading.state, guid)

    async def off(self, deadline: Deadline) -> FenceResult:
        started = now_wall()
        evidence: list[str] = []
        async with self.lock:
            try:
                async with self._session(deadline, "off") as s:
                    outcome = await self._off(s, deadline, evidence)
            except DeviceError as e:
                evidence.append(e.message)
                outcome = e.outcome
        return self.result("off", outcome, evidence, started)

    async def _off(self, s: _Session, deadline: Deadline, evidence: list[str]) -> Outcome:
        first = await s.power(deadline)
        if first.outcome is not None:
            evidence.append(f"status before the command failed: {first.detail}")
            return first.outcome
        if first.state is PowerState.OFF:
            evidence.append(f"already off before the command: {first.detail}")
        else:
            try:
                evidence.append(str(await s.call("off", deadline)))
            except DeviceError as e:
                evidence.append(f"chassis control power down: {e.message}")
                return e.outcome
        return await verify_off(s.power, deadline, self.poll_interval, evidence)

    async def on(self, deadline: Deadline) -> PowerOnResult:
        started = now_wall()
        evidence: list[str] = []
        async with self.lock:
            try:
                async with self._session(deadline, "on") as s:
                    evidence.append(str(await s.call("on", deadline)))
                    ok = await verify_on(s.power, deadline, self.poll_interval, evidence)
            except DeviceError as e:
                evidence.append(e.message)
                ok = False
        return self.on_result(ok, evidence, started)
