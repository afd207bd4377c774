"""Fence devices and a model of the fencing coordinator (DESIGN §8).

A device acts on the machine it is wired to, whatever the daemon then
believes: a power-off happens when the device's operation ends, even if the
daemon that asked crashed meanwhile. The coordinator confirms a level only
when every device of it reported the machine OFF *and* the machine id the
device reports equals the one the peer publishes (S2, and the identity
check of §8); a device wired to another machine is refused before acting.

Modes: ``ok``, ``fail`` (error), ``hang`` (no answer until the device
timeout), ``unreachable``, ``slow`` (succeeds after ``slow_time``),
``dies_with_node`` (a BMC powered by the node: unreachable once the node is
off), ``wrong_machine`` (wired to another machine: refused), ``accept_only``
("command accepted", the machine never goes off).
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import assert_never


class Mode(StrEnum):
    OK = "ok"
    FAIL = "fail"
    HANG = "hang"
    UNREACHABLE = "unreachable"
    SLOW = "slow"
    DIES_WITH_NODE = "dies_with_node"
    WRONG_MACHINE = "wrong_machine"
    ACCEPT_ONLY = "accept_only"


class Result(StrEnum):
    OFF = "off"
    ACCEPTED = "accepted"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    REFUSED = "refused"


@dataclasses.dataclass
class Device:
    name: str
    target: str                      # node this device powers
    mode: Mode = Mode.OK
    time: float = 2.0                # an ok operation, including the verification
    slow_time: float = 20.0
    timeout: float = 10.0            # budget of one operation

    def duration(self, target_powered: bool) -> float:
        match self.mode:
            case Mode.OK | Mode.ACCEPT_ONLY | Mode.FAIL:
                return self.time
            case Mode.SLOW:
                return self.slow_time
            case Mode.HANG:
                return self.timeout
            case Mode.UNREACHABLE | Mode.WRONG_MACHINE:
                return min(self.time, 1.0)
            case Mode.DIES_WITH_NODE:
                return self.time if target_powered else min(self.time, 1.0)
            case _:
                assert_never(self.mode)

    def outcome(self, target_powered: bool, was_powered: bool = True) -> Result:
        """What the device reports when its operation ends: its verification of the power state."""
        match self.mode:
            case Mode.OK | Mode.SLOW:
                return Result.OFF if not target_powered else Result.FAILED
            case Mode.DIES_WITH_NODE:
                # its BMC lost power with the node: reachable only if the node was on when asked
                if not was_powered:
                    return Result.UNREACHABLE
                return Result.OFF if not target_powered else Result.FAILED
            case Mode.FAIL:
                return Result.FAILED
            case Mode.HANG:
                return Result.TIMEOUT
            case Mode.UNREACHABLE:
                return Result.UNREACHABLE
            case Mode.WRONG_MACHINE:
                return Result.REFUSED
            case Mode.ACCEPT_ONLY:
                return Result.ACCEPTED
            case _:
                assert_never(self.mode)

    def powers_off(self) -> bool:
        return self.mode in (Mode.OK, Mode.SLOW, Mode.DIES_WITH_NODE)

    def off_delay(self) -> float:
        """When the machine actually goes off after the command (the rest is verification)."""
        return self.slow_time - self.time if self.mode is Mode.SLOW else 0.0

    def reports_off(self, target_powered: bool) -> bool:
        """The periodic status check reads OFF (used to skip the priority delay)."""
        return not target_powered and self.mode in (Mode.OK, Mode.SLOW)


@dataclasses.dataclass
class Attempt:
    """One run through the levels, in virtual time."""
    episode: object
    started_at: float
    level: int = 0
    device: int = 0
    op_end: float = 0.0
    off_at: float | None = None      # when the device's power-off takes effect
    op_target_powered: bool = True
    level_ok: bool = True
    running: bool = True
    finished_at: float | None = None
    detail: str = ""
