"""The heartbeat's facts about the peer, as the runtime and ``status`` see them.

Frozen snapshots built by :meth:`Session.view`; the runtime maps them to the
policy's facts. Times are monotonic seconds (``time.monotonic()``, the loop
clock), the same clock in every process of the machine.
"""

from __future__ import annotations

import dataclasses
import enum

from .model import AdminIntent, Announce, NodeReport


class PeerState(enum.StrEnum):
    UNSEEN = "unseen"  # not heard since this daemon started
    ALIVE = "alive"
    INCOMPATIBLE = "incompatible"  # fresh and authenticated, but its body cannot be read here
    LOST = "lost"
    LEFT = "left"  # announced a clean stop
    RESTARTING = "restarting"  # announced a restart, still within the expected time


HEARD = (PeerState.ALIVE, PeerState.INCOMPATIBLE)


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str  # peer_heard, peer_lost, peer_left, link_down, intent_adopted...
    mono: float
    wall: float
    message: str


@dataclasses.dataclass(frozen=True)
class LinkView:
    name: str
    up: bool
    last_heard: float | None  # monotonic
    silent_for: float | None
    loss_in: float | None  # of the peer's datagrams, as counted here
    loss_out: float | None  # of ours, as the peer counts them
    rtt: float | None
    rtt_smoothed: float | None
    key: str | None  # which key verified the last datagram on this link


@dataclasses.dataclass(frozen=True)
class PeerView:
    """The heartbeat's facts about the peer at one instant (for the runtime and status)."""

    name: str
    state: PeerState
    incarnation: int | None
    boot_id: str | None
    machine_id: str | None
    protocol: int | None  # body version of the last fresh datagram
    peer_max_version: int | None
    sending_version: int
    last_heard: float | None  # when the last fresh datagram proves the peer alive (its send, at the latest)
    silent_for: float | None
    report: NodeReport | None
    report_age: float | None  # at most this old: counted from the same instant
    announce: Announce | None
    restart_expected_by: float | None
    settings_fingerprint: str
    peer_settings_fingerprint: str | None
    intent: AdminIntent
    intent_acknowledged: bool
    intent_superseded: AdminIntent | None
    links: tuple[LinkView, ...]
    restarts: int
    longest_silence: float
    drops: dict[str, int]
    unconfirmed: int
    overtaken: int  # fresh datagrams sent before the newest one taken as facts: proof of life only

    @property
    def settings_mismatch(self) -> bool | None:
        if self.peer_settings_fingerprint is None:
            return None
        return self.peer_settings_fingerprint != self.settings_fingerprint
