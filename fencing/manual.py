"""Operator confirmation: ``clevervm confirm-fenced NODE``.

The ``manual`` device is the level that waits for a person who has made
sure the peer's machine is off (pulled the power, checked the PDU). Its
``off()`` returns CONFIRMED_OFF only when a confirmation arrives while it
waits; at its deadline it returns TIMED_OUT, never success.

A confirmation is refused (:class:`ConfirmRefused`) unless the operator
typed the peer's node name exactly, and never while the peer is heard or
DRBD is Connected to it: a node that still talks is not off. It is
recorded with who and when.
"""

from __future__ import annotations

import asyncio
import dataclasses

from .agent import DeviceError, FenceAgent
from .types import Deadline, DeviceHealth, FenceResult, Outcome, PowerOnResult, PowerReading, PowerState, now_wall


class ConfirmRefused(Exception):
    """The operator's confirmation cannot be accepted; the message says why."""


@dataclasses.dataclass(frozen=True)
class OperatorConfirmation:
    node: str
    operator: str  # who: user name and uid as the control socket saw them
    at: float  # wall clock

    def evidence(self) -> str:
        return f"operator {self.operator} confirmed {self.node} is off (typed the node name) at {self.at:.3f}"


def check_confirmation(peer: str, typed_name: str, operator: str, *, peer_heard: bool, drbd_connected: bool) -> OperatorConfirmation:
    """Validate a confirm-fenced request; raises ConfirmRefused with the reason."""
    if typed_name != peer:
        raise ConfirmRefused(f"the node name typed ({typed_name!r}) is not the peer's ({peer!r})")
    if peer_heard:
        raise ConfirmRefused(f"{peer} is heard on a heartbeat link right now: it is not off")
    if drbd_connected:
        raise ConfirmRefused(f"DRBD is Connected to {peer}: it is not off")
    return OperatorConfirmation(peer, operator, now_wall())


class ManualAgent(FenceAgent):
    kind = "manual"
    can_power_on = False

    def __init__(self, name: str, peer: str, timeout: float = 86400.0) -> None:
        super().__init__(name, timeout)
        self.peer = peer
        self._waiter: asyncio.Future[OperatorConfirmation] | None = None

    def describe(self) -> str:
        return f"manual: clevervm confirm-fenced {self.peer}"

    @property
    def waiting(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def confirm(self, confirmation: OperatorConfirmation) -> bool:
        """Hand a checked confirmation to a waiting ``off()``; False if none waits."""
        if confirmation.node != self.peer or not self.waiting:
            return False
        assert self._waiter is not None
        self._waiter.set_result(confirmation)
        return True

    async def status(self, deadline: Deadline) -> PowerReading:
        return PowerReading(PowerState.UNKNOWN, "only an operator can tell", Outcome.FAILED)

    async def machine_id(self, deadline: Deadline) -> str:
        raise DeviceError(Outcome.FAILED, "a manual device reports no machine id")

    async def monitor(self, deadline: Deadline) -> DeviceHealth:
        return self.health(True, f"waits for `clevervm confirm-fenced {self.peer}`")

    async def off(self, deadline: Deadline) -> FenceResult:
        started = now_wall()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            conf = await asyncio.wait_for(asyncio.shield(self._waiter), timeout=deadline.remaining())
        except TimeoutError:
            return self.result("off", Outcome.TIMED_OUT, [f"no operator confirmation yet: run `clevervm confirm-fenced {self.peer}` once its machine is off"], started)
        finally:
            if not self._waiter.done():
                self._waiter.cancel()
        return self.result("off", Outcome.CONFIRMED_OFF, [conf.evidence()], started)

    async def on(self, deadline: Deadline) -> PowerOnResult:
        return self.on_result(False, ["a manual device cannot power the peer on"], now_wall())
