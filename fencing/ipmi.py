"""IPMI over LAN (RMCP+) fence agent, through pyghmi.

- A fresh pyghmi session per operation (``off``, ``on``, ``status``,
  ``monitor``, ``machine_id``), logged out in ``finally``; pyghmi is blocking,
  so each operation runs in its own thread under the operation's deadline.
- Raw IPMI commands only: Get Chassis Status (NetFn 0, cmd 1, byte 0 bit 0 =
  power on), Chassis Control power down (NetFn 0, cmd 2, data 0: a hard off,
  never cycle/reset/soft), Get System GUID (NetFn 6, cmd 0x37). pyghmi's
  ``set_power`` is not used: it skips the command when it already reads the
  wanted state and may divert to OEM handlers.
- ``off`` confirms only after two consecutive OFF chassis-status readings.
- The user and password are handed to pyghmi as bytes: with ``str`` values
  pyghmi 1.6.19 keeps a stale entry in its session table after a logout and
  the next session to the same BMC fails.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from .agent import DeviceError, FenceAgent, run_blocking, verify_off, verify_on
from .types import Deadline, DeviceHealth, FenceResult, Outcome, PowerOnResult, PowerReading, PowerState, Secret, now_wall

T = TypeVar("T")

_CC = {0xC0: "node busy", 0xC1: "invalid command", 0xC3: "timeout", 0xCC: "invalid data field",
       0xD4: "insufficient privilege", 0xD5: "command not supported in present state"}


@dataclasses.dataclass(frozen=True)
class IpmiParams:
    host: str
    port: int
    username: str
    password: Secret


# pyghmi keeps its sessions in class-level tables that are not safe to change
# from several threads at once: every call into it holds this lock.
_PYGHMI = threading.Lock()


def _guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Serialise pyghmi calls; turn its unexpected exceptions into FAILED."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> T:
        with _PYGHMI:
            try:
                return fn(*args)
            except DeviceError:
                raise
            except Exception as e:  # noqa: BLE001 - a library bug must read as a failed device, never as success
                raise DeviceError(Outcome.FAILED, f"IPMI client error: {type(e).__name__}: {e}") from None

    return wrapper


class _Session:
    """One logged-in pyghmi session."""

    @_guarded
    def __init__(self, p: IpmiParams) -> None:
        from pyghmi import exceptions as pexc
        from pyghmi.ipmi import command

        try:
            self.cmd: Any = command.Command(bmc=p.host, userid=p.username.encode(), password=p.password.reveal(),
                                            port=p.port, keepalive=False)
        except pexc.IpmiException as e:
            text = str(e.args[0]) if e.args and e.args[0] else ""
            if "password" in text.lower() or "user" in text.lower() or "privilege" in text.lower():
                raise DeviceError(Outcome.FAILED, f"login refused: {text}") from None
            raise DeviceError(Outcome.UNREACHABLE, f"no IPMI session with {p.host}:{p.port}" + (f": {text}" if text else "")) from None

    @_guarded
    def raw(self, netfn: int, command: int, data: tuple[int, ...] = ()) -> bytes:
        rsp = self.cmd.raw_command(netfn=netfn, command=command, data=data)
        if "error" in rsp:
            err = str(rsp["error"])
            outcome = Outcome.UNREACHABLE if "timeout" in err.lower() or "session" in err.lower() else Outcome.FAILED
            raise DeviceError(outcome, f"BMC error: {err}")
        code = int(rsp.get("code", 0))
        if code:
            raise DeviceError(Outcome.FAILED, f"BMC completion code 0x{code:02X} ({_CC.get(code, 'error')})")
        return bytes(rsp.get("data", b""))

    def power(self) -> PowerReading:
        data = self.raw(0x00, 0x01)
        if not data:
            return PowerReading(PowerState.UNKNOWN, "chassis status without data", Outcome.FAILED)
        state = PowerState.ON if data[0] & 1 else PowerState.OFF
        return PowerReading(state, f"chassis status byte0=0x{data[0]:02x}")

    def guid(self) -> str:
        data = self.raw(0x06, 0x37)
        if len(data) != 16:
            raise DeviceError(Outcome.FAILED, f"system GUID of {len(data)} bytes")
        # SMBIOS byte order (first three fields little-endian), like dmidecode's UUID.
        return str(uuid.UUID(bytes_le=data))

    def logout(self) -> None:
        with _PYGHMI:
            self._logout()

    def _logout(self) -> None:
        try:
            self.cmd.ipmi_session.logout()
        except Exception:  # noqa: BLE001 - best effort; the BMC expires the session anyway
            pass


class IpmiAgent(FenceAgent):
    kind = "ipmi"
    shares_peer_power = True

    def __init__(self, name: str, params: IpmiParams, timeout: float = 30.0, poll_interval: float = 1.0) -> None:
        super().__init__(name, timeout, poll_interval)
        self.params = params

    def describe(self) -> str:
        return f"ipmi {self.params.host}:{self.params.port} user {self.params.username}"

    async def _open(self, deadline: Deadline, what: str) -> _Session:
        try:
            session: _Session = await run_blocking(lambda: _Session(self.params), deadline, f"{self.name} {what} login")
        except DeviceError as e:
            if e.outcome is Outcome.TIMED_OUT:
                raise DeviceError(Outcome.UNREACHABLE, f"no IPMI session with {self.params.host}:{self.params.port} before the deadline") from None
            raise
        return session

    @staticmethod
    def _close(s: _Session) -> None:
        # Fire and forget: a logout must not hold up a fence, and a read that
        # was abandoned at its deadline may still be using the session.
        threading.Thread(target=s.logout, name="ipmi-logout", daemon=True).start()

    async def _read(self, s: _Session, deadline: Deadline) -> PowerReading:
        try:
            reading: PowerReading = await run_blocking(s.power, deadline, f"{self.name} status")
        except DeviceError as e:
            return PowerReading(PowerState.UNKNOWN, e.message, e.outcome)
        return reading

    async def status(self, deadline: Deadline) -> PowerReading:
        try:
            s = await self._open(deadline, "status")
        except DeviceError as e:
            return PowerReading(PowerState.UNKNOWN, e.message, e.outcome)
        try:
            return await self._read(s, deadline)
        finally:
            self._close(s)

    async def machine_id(self, deadline: Deadline) -> str:
        s = await self._open(deadline, "guid")
        try:
            guid: str = await run_blocking(s.guid, deadline, f"{self.name} guid")
            return guid
        finally:
            self._close(s)

    async def monitor(self, deadline: Deadline) -> DeviceHealth:
        try:
            s = await self._open(deadline, "monitor")
        except DeviceError as e:
            return self.health(False, e.message)
        try:
            reading = await self._read(s, deadline)
            if reading.outcome is not None:
                return self.health(False, reading.detail)
            guid = await run_blocking(s.guid, deadline, f"{self.name} guid")
        except DeviceError as e:
            return self.health(False, e.message)
        finally:
            self._close(s)
        return self.health(True, f"session ok, {reading.detail}", reading.state, guid)

    async def off(self, deadline: Deadline) -> FenceResult:
        started = now_wall()
        evidence: list[str] = []
        async with self.lock:
            try:
                s = await self._open(deadline, "off")
            except DeviceError as e:
                evidence.append(e.message)
                return self.result("off", e.outcome, evidence, started)
            try:
                outcome = await self._off(s, deadline, evidence)
            finally:
                self._close(s)
        return self.result("off", outcome, evidence, started)

    async def _off(self, s: _Session, deadline: Deadline, evidence: list[str]) -> Outcome:
        first = await self._read(s, deadline)
        if first.outcome is not None:
            evidence.append(f"status before the command failed: {first.detail}")
            return first.outcome
        if first.state is PowerState.OFF:
            evidence.append(f"already off before the command: {first.detail}")
        else:
            try:
                await run_blocking(lambda: s.raw(0x00, 0x02, (0x00,)), deadline, f"{self.name} power down")
            except DeviceError as e:
                evidence.append(f"chassis control power down: {e.message}")
                return e.outcome
            evidence.append("chassis control power down acknowledged")
        return await verify_off(lambda d: self._read(s, d), deadline, self.poll_interval, evidence)

    async def on(self, deadline: Deadline) -> PowerOnResult:
        started = now_wall()
        evidence: list[str] = []
        async with self.lock:
            try:
                s = await self._open(deadline, "on")
            except DeviceError as e:
                return self.on_result(False, [e.message], started)
            try:
                await run_blocking(lambda: s.raw(0x00, 0x02, (0x01,)), deadline, f"{self.name} power up")
                evidence.append("chassis control power up acknowledged")
                ok = await verify_on(lambda d: self._read(s, d), deadline, self.poll_interval, evidence)
            except DeviceError as e:
                evidence.append(e.message)
                ok = False
            finally:
                self._close(s)
        return self.on_result(ok, evidence, started)
