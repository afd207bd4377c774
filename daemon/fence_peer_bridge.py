"""The fencing coordinator (``fencing/coordinator.py``) seen as the fence-peer
service's :class:`~.fence_peer.FenceCoordinator`.

The handler asks to fence the peer for the *current* loss episode, which the
runtime knows (it opens and closes episodes from the heartbeat); the bridge
joins or starts the coordinator's one operation for it with no delay: the
handler runs on the active node (PRIMARY, which fences a lost peer at once,
DESIGN 4.4) or on a node already PROMOTING with a record (the coordinator
answers from the journal at once).

Invariants: "confirmed" only with the coordinator's own confirmation (a
record on disk); no open episode means no fence.
"""

from __future__ import annotations

from collections.abc import Callable

from clever_cluster.fencing.coordinator import FenceCoordinator as Coordinator
from clever_cluster.fencing.coordinator import FenceRequest
from clever_cluster.fencing.types import Episode, Outcome

from .fence_peer import FenceOutcome, FenceResult

# Outcomes where a gate, not a device, said no: trying again will not help until the world changes.
_NOT_ALLOWED = frozenset({Outcome.GATE_CLOSED, Outcome.REFUSED, Outcome.CANCELLED})

CurrentEpisode = Callable[[], tuple[Episode, int] | None]  # (episode, the peer incarnation to fence) or None


class CoordinatorForDrbd:
    def __init__(self, coordinator: Coordinator, current_episode: CurrentEpisode) -> None:
        self.coordinator = coordinator
        self.current_episode = current_episode

    async def fence_for_drbd(self, reason: str) -> FenceResult:
        cur = self.current_episode()
        if cur is None:
            return FenceResult(FenceOutcome.NOT_ALLOWED, "no loss episode is open: the peer is not lost")
        episode, incarnation = cur
        report = await self.coordinator.fence(FenceRequest(episode, incarnation, 0.0, reason, "drbd fence-peer"))
        if report.confirmed:
            return FenceResult(FenceOutcome.CONFIRMED, report.message)
        kind = FenceOutcome.NOT_ALLOWED if report.outcome in _NOT_ALLOWED else FenceOutcome.FAILED
        return FenceResult(kind, report.message)

    def record_for_current_episode(self) -> str | None:
        cur = self.current_episode()
        if cur is None:
            return None
        rec = self.coordinator.record_for(cur[0])
        return rec.episode.key() if rec is not None else None
