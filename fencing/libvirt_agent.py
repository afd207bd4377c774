"""libvirt fence agent, for peers that are libvirt domains (labs, nested setups).

- ``off``: ``virDomainDestroy`` (a hard stop, never a guest shutdown), then
  the domain must read ``VIR_DOMAIN_SHUTOFF`` twice in a row. A paused
  domain is ON: it can be resumed and carry on writing. Crashed, shutting
  down, PM-suspended: not OFF either.
- An unknown domain is a failure, never "off" (no ``missing_as_off``).
- libvirt calls block and can hang on a dead host: each operation opens its
  own connection in its own thread under the deadline.
- The machine id is the domain UUID.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from .agent import DeviceError, FenceAgent, canonical_uuid, run_blocking, verify_off, verify_on
from .types import Deadline, DeviceHealth, FenceResult, Outcome, PowerOnResult, PowerReading, PowerState, now_wall

T = TypeVar("T")

_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
_SHUTOFF = 5


@dataclasses.dataclass(frozen=True)
class LibvirtParams:
    uri: str
    domain: str


class LibvirtAgent(FenceAgent):
    kind = "libvirt"

    def __init__(self, name: str, params: LibvirtParams, timeout: float = 30.0, poll_interval: float = 0.5) -> None:
        super().__init__(name, timeout, poll_interval)
        self.params = params

    def describe(self) -> str:
        return f"libvirt {self.params.uri} domain {self.params.domain}"

    def _call(self, fn: Callable[[Any], T]) -> Callable[[], T]:
        def body() -> T:
            import libvirt

            libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions; keep stderr quiet
            try:
                conn = libvirt.open(self.params.uri)
            except libvirt.libvirtError as e:
                raise DeviceError(Outcome.UNREACHABLE, f"cannot connect to {self.params.uri}: {e.get_error_message()}") from None
            try:
                try:
                    dom = conn.lookupByName(self.params.domain)
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        raise DeviceError(Outcome.FAILED, f"domain {self.params.domain!r} not found on {self.params.uri}") from None
                    raise DeviceError(Outcome.FAILED, f"lookup of {self.params.domain!r}: {e.get_error_message()}") from None
                try:
                    return fn(dom)
                except libvirt.libvirtError as e:
                    raise DeviceError(Outcome.FAILED, f"{self.params.domain}: {e.get_error_message()}") from None
            finally:
                conn.close()

        return body

    @staticmethod
    def _reading(dom: Any) -> PowerReading:
        state, reason = dom.state()
        name = _STATES.get(state, f"state {state}")
        return PowerReading(PowerState.OFF if state == _SHUTOFF else PowerState.ON, f"domain state {name} (reason {reason})")

    async def status(self, deadline: Deadline) -> PowerReading:
        try:
            reading: PowerReading = await run_blocking(self._call(self._reading), deadline, f"{self.name} state")
        except DeviceError as e:
            return PowerReading(PowerState.UNKNOWN, e.message, e.outcome)
        return reading

    async def machine_id(self, deadline: Deadline) -> str:
        raw: str = await run_blocking(self._call(lambda d: d.UUIDString()), deadline, f"{self.name} uuid")
        return canonical_uuid(raw)

    async def monitor(self, deadline: Deadline) -> DeviceHealth:
        try:
            reading, uuid = await run_blocking(self._call(lambda d: (self._reading(d), d.UUIDString())), deadline, f"{self.name} monitor")
        except DeviceError as e:
            return self.health(False, e.message)
        return self.health(True, f"{self.params.domain}: {reading.detail}", reading.state, canonical_uuid(uuid))

    async def off(self, deadline: Deadline) -> FenceResult:
        started = now_wall()
        evidence: list[str] = []

        def destroy(dom: Any) -> str:
            if dom.isActive():
                dom.destroy()
                return "virDomainDestroy returned"
            return "domain already inactive before the command"

        async with self.lock:
            try:
                evidence.append(await run_blocking(self._call(destroy), deadline, f"{self.name} destroy"))
                outcome = await verify_off(self.status, deadline, self.poll_interval, evidence)
            except DeviceError as e:
                evidence.append(e.message)
                outcome = e.outcome
        return self.result("off", outcome, evidence, started)

    async def on(self, deadline: Deadline) -> PowerOnResult:
        started = now_wall()
        evidence: list[str] = []
        async with self.lock:
            try:
                await run_blocking(self._call(lambda d: d.create()), deadline, f"{self.name} start")
                evidence.append("virDomainCreate returned")
                ok = await verify_on(self.status, deadline, self.poll_interval, evidence)
            except DeviceError as e:
                evidence.append(e.message)
                ok = False
        return self.on_result(ok, evidence, started)
