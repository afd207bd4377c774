"""The DRBD step: promote to Primary on start, demote to Secondary on stop.

The adapter that talks to DRBD lives in ``daemon/drbd/`` (the observers
issue); this step only needs the small :class:`DrbdControl` contract, which
that adapter satisfies. Promotion is never forced: a refusal is a failure
(DRBD's own rules, S3, are enforced by the policy and by DRBD).

Invariants: promote runs only right after a gate check; the role is read
back after each action, so "the command returned 0" is never taken as the
result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from .base import ResourceError, StepContext

PRIMARY = "Primary"
SECONDARY = "Secondary"


class DrbdControl(Protocol):
    """What the resource group needs from the DRBD adapter.

    Each call may raise any exception on failure (a refusal, a timeout of the
    command); the step turns it into a failure with the exception's message.
    Calls are bounded by the step's deadline (``drbd.command_timeout`` based).
    """

    async def promote(self) -> None:
        """``drbdadm primary RESOURCE`` (``--force`` only for the one promotion an operator accepted
        the data loss for, ``clevervm confirm-fenced --accept-data-loss``).

        The step checks the gate right before calling this, so the command
        must be started before the first ``await`` that can yield (no lock,
        queue or thread pool in front of it), or a promotion could run after
        its gate went stale (S1).
        """

    async def demote(self) -> None:
        """``drbdadm secondary RESOURCE``."""

    async def role(self) -> str:
        """This node's role: ``"Primary"``, ``"Secondary"`` or ``"Unknown"``."""


class DrbdStep:
    name = "drbd"
    stop_attempts = 3

    def __init__(self, control: DrbdControl, command_timeout: float) -> None:
        self._drbd = control
        self._timeout = command_timeout

    def start_budget(self) -> float:
        return 3 * self._timeout  # read the role, promote, read it back

    def stop_budget(self) -> float:
        return 3 * self._timeout

    async def start(self, ctx: StepContext) -> None:
        if await self._role() == PRIMARY:
            ctx.note("already Primary")
            return
        ctx.check_gate()
        await self._call("promote", self._drbd.promote)
        role = await self._role()
        if role != PRIMARY:
            raise ResourceError(f"DRBD is {role} after promote, not Primary")
        ctx.note("promoted to Primary")

    async def stop(self, ctx: StepContext) -> None:
        if await self._role() == SECONDARY:
            ctx.note("already Secondary")
            return
        await self._call("demote", self._drbd.demote)
        role = await self._role()
        if role != SECONDARY:
            raise ResourceError(f"DRBD is {role} after demote, not Secondary")
        ctx.note("demoted to Secondary")

    async def _role(self) -> str:
        try:
            return await self._drbd.role()
        except ResourceError:
            raise
        except Exception as e:
            raise ResourceError(f"cannot read the DRBD role: {e}") from e

    @staticmethod
    async def _call(what: str, action: Callable[[], Awaitable[None]]) -> None:
        try:
            await action()
        except ResourceError:
            raise
        except Exception as e:
            raise ResourceError(f"DRBD {what} failed: {e}") from e
