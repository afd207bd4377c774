"""The vocabulary of fencing: power readings, outcomes, deadlines, episodes.

Invariants kept by these types:
- :attr:`Outcome.CONFIRMED_OFF` is the only success. :attr:`FenceResult.confirmed`
  is true for it alone; every other outcome (a timeout, an error, a device
  that accepted the command, an unreachable device) is a failure.
- :class:`PowerState.UNKNOWN` is never OFF.
- A :class:`Deadline` is an absolute point on the monotonic clock, so retries
  inside one budget share it instead of each getting a fresh timeout.
- :class:`Secret` never shows its value in ``repr``/``str`` (logs, status).
"""

from __future__ import annotations

import dataclasses
import enum
import time


class PowerState(enum.Enum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class Outcome(enum.Enum):
    CONFIRMED_OFF = "confirmed_off"  # positive evidence that the machine is off
    FAILED = "failed"  # the device said no, or an error
    TIMED_OUT = "timed_out"  # the budget ran out before OFF was seen
    UNREACHABLE = "unreachable"  # no answer from the device
    GATE_CLOSED = "gate_closed"  # the gateway gate refused: we are probably the isolated one
    CONTRADICTION = "contradiction"  # e.g. the agent said done but the status reads ON
    CANCELLED = "cancelled"  # the peer was heard again, or the operation was superseded
    REFUSED = "refused"  # the device is not trusted (identity) or not allowed


class Deadline:
    """An absolute deadline on the monotonic clock (``time.monotonic``)."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def earliest(self, seconds: float) -> Deadline:
        """This deadline or ``seconds`` from now, whichever comes first."""
        return Deadline(min(self.at, time.monotonic() + seconds))

    def __repr__(self) -> str:
        return f"Deadline(in {self.at - time.monotonic():.3f}s)"


class Secret:
    """A password or key: bytes that never appear in a repr, log line or status."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclasses.dataclass(frozen=True)
class PowerReading:
    """One status read: what the device said, and how we read it."""

    state: PowerState
    detail: str  # e.g. "chassis status byte0=0x00", "PowerState='PoweringOff'"
    outcome: Outcome | None = None  # set when the read itself failed (UNREACHABLE, FAILED, TIMED_OUT)


@dataclasses.dataclass(frozen=True)
class FenceResult:
    """What one device action achieved, with the evidence for it."""

    device: str
    action: str  # "off" | "on"
    outcome: Outcome
    evidence: tuple[str, ...]
    started: float  # wall clock
    finished: float
    attempts: int = 1

    @property
    def confirmed(self) -> bool:
        return self.outcome is Outcome.CONFIRMED_OFF

    @property
    def message(self) -> str:
        return self.evidence[-1] if self.evidence else self.outcome.value


@dataclasses.dataclass(frozen=True)
class PowerOnResult:
    """Powering the peer back on after a confirmed fence (never a fencing fact)."""

    device: str
    ok: bool  # the machine was read ON afterwards
    evidence: tuple[str, ...]
    started: float
    finished: float


@dataclasses.dataclass(frozen=True)
class DeviceHealth:
    """A monitor result: reachable, credentials valid; never from a power action."""

    device: str
    ok: bool
    message: str
    power: PowerState = PowerState.UNKNOWN
    machine_id: str | None = None
    checked_at: float = 0.0  # wall clock


@dataclasses.dataclass(frozen=True, order=True)
class Episode:
    """A loss episode (DESIGN 4.1): a fence record serves exactly one.

    Owned by fencing/ so it does not depend on policy/'s types; the daemon
    maps its own episode onto this.
    """

    peer: str
    peer_incarnation: int
    peer_boot_id: str
    counter: int

    def key(self) -> str:
        return f"{self.peer}/{self.peer_incarnation}/{self.peer_boot_id}/{self.counter}"


def now_wall() -> float:
    return time.time()
