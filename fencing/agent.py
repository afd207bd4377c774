"""The fence agent contract, and the verification loop every agent shares.

Contract (every agent in this package keeps it):
- Each call takes an absolute :class:`Deadline` and returns by it.
- ``off()`` verifies OFF itself: it returns CONFIRMED_OFF only after reading
  the power state OFF on ``required_off_reads`` consecutive status reads taken
  after the command (or before it, when the machine already read OFF twice).
  An acknowledgement, an HTTP 2xx, an exit code alone, a timeout, an error or
  an unreachable device is never CONFIRMED_OFF.
- ``monitor()`` checks reachability and credentials; it never changes power.
- ``machine_id()`` returns the system UUID the device reports for the
  machine it controls (or, for devices that cannot report one, the UUID the
  operator configured), lower-case canonical form.
- Secrets are held as :class:`~clever_cluster.fencing.types.Secret` and never
  logged, put on a command line or returned in a result.

Blocking libraries run in a dedicated daemon thread per call
(:func:`run_blocking`): a hung call can be abandoned at its deadline without
exhausting a shared executor, and its late result is discarded.
"""

from __future__ import annotations

import abc
import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar

from .types import Deadline, DeviceHealth, FenceResult, Outcome, PowerOnResult, PowerReading, PowerState, now_wall

T = TypeVar("T")

# Two consecutive OFF readings: one stray OFF (a BMC answering from a stale
# cache, a transient sensor read) never confirms a fence on its own.
REQUIRED_OFF_READS = 2


class DeviceError(Exception):
    """A device operation failed; ``outcome`` says how (never CONFIRMED_OFF)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        assert outcome is not Outcome.CONFIRMED_OFF
        super().__init__(message)
        self.outcome = outcome
        self.message = message


class DeviceConfigError(Exception):
    """The device is configured in a way that cannot work (found at load or first use)."""


def error_text(e: Exception) -> str:
    """What went wrong in a device call, for evidence and status (never a traceback)."""
    if isinstance(e, DeviceError):
        return e.message
    if isinstance(e, DeviceConfigError):
        return str(e)
    return f"{type(e).__name__}: {e}"


class FenceAgent(abc.ABC):
    """One fence device that controls the power of the peer's machine."""

    kind: ClassVar[str]
    # True for a BMC (IPMI, Redfish): it usually loses power with its host,
    # so it cannot confirm a fence after a total power loss of the peer.
    shares_peer_power: ClassVar[bool] = False
    # Whether the device powers the machine on again after a confirmed fence.
    can_power_on: ClassVar[bool] = True

    def __init__(self, name: str, timeout: float, poll_interval: float = 1.0) -> None:
        self.name = name
        self.timeout = timeout
        self.poll_interval = poll_interval
        # One operation at a time per device: many BMCs accept one session only.
        self.lock = asyncio.Lock()

    @abc.abstractmethod
    async def status(self, deadline: Deadline) -> PowerReading: ...

    @abc.abstractmethod
    async def off(self, deadline: Deadline) -> FenceResult: ...

    @abc.abstractmethod
    async def on(self, deadline: Deadline) -> PowerOnResult: ...

    @abc.abstractmethod
    async def monitor(self, deadline: Deadline) -> DeviceHealth: ...

    @abc.abstractmethod
    async def machine_id(self, deadline: Deadline) -> str: ...

    def describe(self) -> str:
        """Where the device is, for logs and status (never secrets)."""
        return self.kind

    # ------------------------------------------------------------ helpers

    def result(self, action: str, outcome: Outcome, evidence: list[str], started: float, attempts: int = 1) -> FenceResult:
        return FenceResult(self.name, action, outcome, tuple(evidence), started, now_wall(), attempts)

    def on_result(self, ok: bool, evidence: list[str], started: float) -> PowerOnResult:
        return PowerOnResult(self.name, ok, tuple(evidence), started, now_wall())

    def health(self, ok: bool, message: str, power: PowerState = PowerState.UNKNOWN, machine_id: str | None = None) -> DeviceHealth:
        return DeviceHealth(self.name, ok, message, power, machine_id, now_wall())


def canonical_uuid(value: str) -> str:
    """Lower-case canonical UUID text; raises ValueError for anything else."""
    return str(uuid.UUID(value.strip().strip("{}")))


async def run_blocking(fn: Callable[[], T], deadline: Deadline, what: str) -> T:
    """Run ``fn`` in its own daemon thread; give up at ``deadline``.

    Raises DeviceError(TIMED_OUT) at the deadline; the thread is abandoned
    and whatever it returns later is dropped.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: object) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)  # type: ignore[arg-type]
        else:
            assert isinstance(value, BaseException)
            fut.set_exception(value)

    def body() -> None:
        try:
            value: object = fn()
            ok = True
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            value, ok = e, False
        try:
            loop.call_soon_threadsafe(deliver, ok, value)
        except RuntimeError:
            pass  # the loop is gone: nobody waits any more

    threading.Thread(target=body, name=f"fence-{what}", daemon=True).start()
    try:
        return await asyncio.wait_for(fut, timeout=deadline.remaining())
    except TimeoutError:
        raise DeviceError(Outcome.TIMED_OUT, f"{what}: no answer before the deadline") from None


async def verify_off(read: Callable[[Deadline], Awaitable[PowerReading]], deadline: Deadline, interval: float,
                     evidence: list[str], required: int = REQUIRED_OFF_READS) -> Outcome:
    """Poll ``read`` until ``required`` consecutive OFF readings or the deadline.

    Appends every reading to ``evidence``. Returns CONFIRMED_OFF, or
    TIMED_OUT when the power was read at least once but never OFF
    ``required`` times in a row, or UNREACHABLE when no read succeeded.
    """
    consecutive = 0
    answered = False
    while True:
        try:
            reading = await read(deadline)
        except DeviceError as e:
            reading = PowerReading(PowerState.UNKNOWN, e.message, e.outcome)
        if reading.outcome is None:
            answered = True
        if reading.state is PowerState.OFF and reading.outcome is None:
            consecutive += 1
            evidence.append(f"read OFF ({consecutive}/{required}): {reading.detail}")
            if consecutive >= required:
                return Outcome.CONFIRMED_OFF
        else:
            if consecutive:
                evidence.append(f"OFF not repeated: {reading.detail}")
            else:
                evidence.append(f"not off: {reading.detail}")
            consecutive = 0
        if deadline.remaining() <= 0:
            break
        await asyncio.sleep(min(interval, deadline.remaining()))
        if deadline.remaining() <= 0:
            break
    evidence.append(f"no {required} consecutive OFF readings before the deadline")
    return Outcome.TIMED_OUT if answered else Outcome.UNREACHABLE


async def verify_on(read: Callable[[Deadline], Awaitable[PowerReading]], deadline: Deadline, interval: float,
                    evidence: list[str]) -> bool:
    """Poll ``read`` until the machine reads ON (after a power-on) or the deadline."""
    while True:
        reading = await read(deadline)
        if reading.outcome is None and reading.state is PowerState.ON:
            evidence.append(f"read ON: {reading.detail}")
            return True
        evidence.append(f"not on yet: {reading.detail}")
        if deadline.remaining() <= interval:
            evidence.append("not seen ON before the deadline")
            return False
        await asyncio.sleep(interval)
