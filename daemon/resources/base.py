"""Contracts between the resource steps and the group executor.

A *step* is one resource of the group (DRBD, filesystem, floating IP, VMs).
It knows how to start and stop itself; the executor (``group.py``) decides
the order, the deadlines, the retries and the rollback.

Invariants every step keeps:
- ``start`` and ``stop`` are idempotent: a resource already in the wanted
  state is a success, not an error.
- Before every action that S1 protects (promote, mount, add the IP, start or
  restore a VM) a step calls ``ctx.check_gate()`` with no ``await`` between
  the check and the action, so a decision that went stale is not carried out.
- An expected failure of the world raises :class:`ResourceError` with a
  sentence for the operator; anything else escaping a step is a bug.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, Literal, Protocol

# The policy's gate token (an episode or grant id) is opaque here; the
# validator injected into the executor returns None while the token is still
# valid, otherwise a sentence saying why it is stale.
GateCheck = Callable[[Hashable], str | None]

Takeover = Literal["handover", "failover", "cold_start", "restart"]
StopMode = Literal["save", "shutdown", "destroy"]
ImageOrigin = Literal["handover", "forcestop"]


class ResourceError(Exception):
    """A step could not do its job; the message is meant for the operator."""


class GateStale(ResourceError):
    """The decision behind the sequence is no longer valid; nothing more is done under it."""


@dataclasses.dataclass(frozen=True)
class ImageToken:
    """What binds a save image to the handover (or forcestop) that wrote it (DESIGN section 7)."""

    origin: ImageOrigin
    id: str  # handover (grant) id, or the forcestop's id
    epoch: str  # the data epoch, "counter:node"
    data_uuid: str  # DRBD's current data UUID when the image was written

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> ImageToken:
        if not isinstance(obj, dict):
            raise ValueError("token is not an object")
        origin, id_, epoch, data_uuid = (obj.get(k) for k in ("origin", "id", "epoch", "data_uuid"))
        if origin not in ("handover", "forcestop"):
            raise ValueError(f"unknown image origin {origin!r}")
        fields = [id_, epoch, data_uuid]
        if not all(isinstance(v, str) and v for v in fields):
            raise ValueError("token fields must be non-empty strings")
        return cls(origin=origin, id=str(id_), epoch=str(epoch), data_uuid=str(data_uuid))


@dataclasses.dataclass(frozen=True)
class StartRequest:
    """Start the group under ``token``.

    ``takeover`` says why: ``handover`` completes a grant (VMs are restored
    only from images whose token equals ``image``); ``failover`` is an
    unplanned takeover after a fence (the IP conflict probe runs; only an
    unconsumed ``forcestop`` image may be restored); ``cold_start`` and
    ``restart`` (resources already here, forcestart) restore only
    ``forcestop`` images too. A forcestop image is restored only when
    ``data_uuid`` is given and equals the one it was written with.
    """

    token: Hashable
    takeover: Takeover
    image: ImageToken | None = None
    data_uuid: str | None = None
    vms: frozenset[str] | None = None  # None: every managed domain

    def __post_init__(self) -> None:
        if self.takeover == "handover" and (self.image is None or self.image.origin != "handover"):
            raise ValueError("a handover start needs the handover's image token")


@dataclasses.dataclass(frozen=True)
class StopRequest:
    """Stop the group from the top down to (and including) ``until``.

    ``token`` None is an ungated stop (stopping never breaks S1; an S5
    emergency stop needs no grant). ``mode`` says what happens to running
    VMs: ``save`` (needs ``image``; falls back to shutdown, then destroy),
    ``shutdown`` (then destroy after the timeout) or ``destroy``.
    """

    token: Hashable | None
    mode: StopMode = "shutdown"
    image: ImageToken | None = None
    until: str | None = None  # e.g. "vms" for forcestop; None stops everything

    def __post_init__(self) -> None:
        if self.mode == "save" and self.image is None:
            raise ValueError("a save stop needs an image token")


class StepContext(Protocol):
    """What the executor hands to a running step."""

    @property
    def run_id(self) -> int: ...

    @property
    def start(self) -> StartRequest | None:
        """The start request, or None when stopping."""

    @property
    def stop(self) -> StopRequest | None:
        """The stop request, or None when starting (a rollback stops with mode ``shutdown``)."""

    def check_gate(self) -> None:
        """Raise GateStale unless the sequence's token is still valid (stops without a token always pass)."""

    def note(self, text: str) -> None:
        """Add a detail to this step's phase record (shown by status and history)."""

    def fail(self, resource: str, reason: str, vm: str | None = None) -> None:
        """Record a failure against a resource (per VM for VMs) without failing the step."""


class Step(Protocol):
    """One resource of the group. Deadlines are enforced by the executor."""

    @property
    def name(self) -> str: ...

    @property
    def stop_attempts(self) -> int:
        """How often a failed stop is tried before it is reported as failed."""

    def start_budget(self) -> float:
        """Seconds a start may take before it counts as failed."""

    def stop_budget(self) -> float:
        """Seconds one stop attempt may take."""

    async def start(self, ctx: StepContext) -> None: ...

    async def stop(self, ctx: StepContext) -> None: ...
