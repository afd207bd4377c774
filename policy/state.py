"""What the policy remembers between decisions.

``Durable`` must survive a daemon restart: the runtime persists it (atomic
write + fsync) whenever a decision changes it, *before* carrying out that
decision's actions, and passes it to :func:`initial_state` at start. Everything
else in ``PolicyState`` is rebuilt from facts after a restart.

Invariants:
- The epoch is persisted before it is used (the rule above).
- ``grant_out`` is cleared only when the grantee declines, holds the
  resources, or is fenced; while it is set this node does not promote.
- ``grant_ack`` is set before the grantee promotes under it.
"""

from __future__ import annotations

import dataclasses

from .actions import Announcement
from .model import ZERO_EPOCH, BlockCause, Epoch, Grant, LossEpisode, Phase


@dataclasses.dataclass(frozen=True, slots=True)
class Block:
    cause: BlockCause
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class Durable:
    epoch: Epoch = ZERO_EPOCH
    peer_epoch_seen: Epoch = ZERO_EPOCH
    episode_counter: int = 0
    episode: LossEpisode | None = None
    episode_boot: str | None = None            # local boot id the episode was opened in (S4: never carried across a reboot)
    peer_heard_boot: str | None = None       # boot id during which the peer was heard (S4 marker)
    block: Block | None = None
    grant_counter: int = 0
    grant_out: Grant | None = None
    grant_ack: Grant | None = None
    declined: str | None = None               # last grant id we declined (published until superseded)
    carried_on: str | None = None             # the loss (episode or outdate) the epoch was last bumped for
    unblock_seen: int = 0
    fence_seen: int = 0
    peer_left: str | None = None              # boot id of the peer that announced a clean stop with nothing held, until heard again


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyState:
    durable: Durable = Durable()
    phase: Phase = Phase.STARTING
    lost_at: float | None = None              # when the current loss was freshly observed
    fence_not_before: float | None = None     # lost_at + priority delay + jitter, decided once per episode
    probe_requested_at: float | None = None
    observe_until: float = 0.0                # after a stall: no fence or promote before this
    gateway_lower_since: float | None = None
    operator_fence: bool = False              # `clevervm fence` pending for this episode
    outdate_requested_at: float | None = None  # when this node first asked the peer to outdate (for the current freeze)
    published: Announcement | None = None
    last_code: str = ""


def initial_state(durable: Durable = Durable()) -> PolicyState:
    """The state of a freshly started daemon, from what it persisted."""
    return PolicyState(durable=durable)
