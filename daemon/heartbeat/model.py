"""The facts a node publishes in its heartbeat (DESIGN sections 4.1 and 5).

These are the heartbeat's own typed records. The runtime fills a
:class:`NodeReport` from its world view; the peer's report arrives decoded
into the same types. Mapping them to the policy's facts is the runtime's job,
so this module does not import the policy.

Every field is declared with :func:`~.codec.wf` (short wire key, bounds);
``None`` means "unknown" or "not applicable", never a default guess.

Invariants:
- Records are frozen; their size on the wire is bounded by the declared
  bounds (names at most 63 characters, lists at most a few entries).
- An :class:`AdminIntent` is totally ordered by its :class:`IntentRef`
  (version, origin node, digest of the content): two nodes holding
  different records agree on which one wins, whatever the order they learnt
  them in.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Literal

import msgpack

from .codec import to_wire, wf

NAME = 63  # config.NAME_RE allows 63 characters
GRANT_ID = NAME + 33  # "<node>-<incarnation>-<counter>": the policy's grant ids
PHASES = ("STARTING", "SECONDARY", "FENCING", "PROMOTING", "PRIMARY", "DEMOTING", "BLOCKED", "MAINTENANCE")
Phase = Literal["STARTING", "SECONDARY", "FENCING", "PROMOTING", "PRIMARY", "DEMOTING", "BLOCKED", "MAINTENANCE"]
TargetRole = Literal["started", "stopped"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Epoch:
    """Generation of the data a node holds, ordered as (counter, node)."""

    counter: int = wf("c")
    node: str = wf("n", max_len=NAME)

    def order(self) -> tuple[int, str]:
        return (self.counter, self.node)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DrbdReport:
    """What this node's DRBD says. States are DRBD's own words (``UpToDate``...)."""

    role: str | None = wf("r", None, max_len=16)
    disk: str | None = wf("d", None, max_len=16)
    peer_disk: str | None = wf("pd", None, max_len=16)  # this node's view of the peer's disk
    connection: str | None = wf("c", None, max_len=24)
    data_uuid: str | None = wf("u", None, max_len=16)  # current data UUID, hex
    split_brain: bool = wf("sb", False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VmReport:
    name: str = wf("n", max_len=NAME)
    state: str = wf("s", max_len=16)  # running, shutoff, paused, crashed, unknown...
    fail_count: int = wf("f", 0, hi=1_000_000)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResourceSummary:
    """The resources this node holds. ``None``: not observed yet."""

    drbd: DrbdReport = wf("dr", DrbdReport())
    mounted: bool | None = wf("m", None)
    ip: bool | None = wf("ip", None)
    vms: tuple[VmReport, ...] = wf("vm", (), max_items=16)
    vms_omitted: int = wf("vo", 0, hi=65535)  # VMs left out so the datagram fits


@dataclasses.dataclass(frozen=True, kw_only=True)
class GrantToken:
    """A handover grant (from the active node) or a cold-start yield (from the weaker candidate)."""

    grant_id: str = wf("id", max_len=GRANT_ID)
    kind: Literal["grant", "yield"] = wf("k")
    grantee: str = wf("to", max_len=NAME)
    grantor_incarnation: int = wf("gi")
    epoch: Epoch = wf("e")
    grantee_incarnation: int | None = wf("ge", None)  # the grantee daemon it was offered to (a restarted one is offered anew)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GrantReply:
    """The grantee's answer: it acknowledged (and counts as active) or declined."""

    grant_id: str = wf("id", max_len=GRANT_ID)
    accepted: bool = wf("a")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpisodeId:
    """A loss episode: (peer, peer incarnation, peer boot id, local counter)."""

    peer: str = wf("p", max_len=NAME)
    peer_incarnation: int = wf("i")
    peer_boot_id: str = wf("b", max_len=36)
    counter: int = wf("c")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FencedIncarnation:
    """An incarnation of a node that this node confirmed powered off."""

    node: str = wf("n", max_len=NAME)
    incarnation: int = wf("i")
    episode: EpisodeId = wf("e")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FencingReport:
    """This node's fencing facts: the loss episode it has open, the peer incarnation it fenced."""

    open_episode: EpisodeId | None = wf("oe", None)
    fenced: FencedIncarnation | None = wf("f", None)
    fence_in_progress: bool = wf("ip", False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeReport:
    """Everything a node tells its peer about itself in each heartbeat."""

    phase: Phase = wf("ph")
    epoch: Epoch | None = wf("ep", None)
    resources: ResourceSummary = wf("rs", ResourceSummary())
    gateway_score: int | None = wf("gs", None, hi=1_000_000)  # None: no probe result yet
    eligible: bool | None = wf("el", None)
    ineligible_reasons: tuple[str, ...] = wf("er", (), max_len=40, max_items=4)
    grant: GrantToken | None = wf("g", None)
    grant_reply: GrantReply | None = wf("gr", None)  # the acknowledgement (or, with no acknowledgement, a decline)
    fencing: FencingReport = wf("fe", FencingReport())
    decline: str | None = wf("gd", None, max_len=GRANT_ID)  # a grant declined while another one is acknowledged
    outdate_request: bool = wf("or", False)  # this node's fence-peer handler asks the peer to outdate its disk
    leaving: bool = wf("lv", False)  # clean stop under way: nothing held here any more, the daemon may exit


@dataclasses.dataclass(frozen=True, kw_only=True)
class Announce:
    """Sent at a clean stop: ``leaving`` for good, or ``restarting`` within ``expected`` s."""

    kind: Literal["leaving", "restarting"] = wf("k")
    expected: float = wf("x", 0.0, hi=86400.0)


# --------------------------------------------------------------------------- admin intent


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ban:
    """The node may not hold the resources (``clevervm migrate``) until ``until`` (wall clock)."""

    node: str = wf("n", max_len=NAME)
    until: float | None = wf("u", None, hi=2.0**40)
    reason: str = wf("r", "", max_len=32)

    def active(self, wall_now: float) -> bool:
        return self.until is None or wall_now < self.until


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cleanup:
    """Fail counts of ``resource`` (None: all) on ``node`` (None: both) recorded before ``at`` are cleared."""

    serial: int = wf("s")
    at: float = wf("t", hi=2.0**40)
    resource: str | None = wf("r", None, max_len=NAME)
    node: str | None = wf("n", None, max_len=NAME)


MAX_CLEANUPS = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntentRef:
    """Names one intent record: sent in every heartbeat; the whole record only while the peer lacks it."""

    version: int = wf("v")
    origin: str = wf("o", max_len=NAME)
    digest: bytes = wf("d", max_len=8)

    def order(self) -> tuple[int, str, bytes]:
        """Total order: version, then origin node name, then content (a tie that should not happen)."""
        return (self.version, self.origin, self.digest)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdminIntent:
    """What the operators asked for, replicated between the nodes.

    ``version`` counts changes; ``origin`` is the node that made this
    version. The record with the higher :meth:`order` wins.
    """

    version: int = wf("v", 0)
    origin: str = wf("o", "", max_len=NAME)
    changed_at: float = wf("t", 0.0, hi=2.0**40)
    target_role: TargetRole = wf("tr", "started")
    bans: tuple[Ban, ...] = wf("b", (), max_items=2)
    standby: tuple[str, ...] = wf("sb", (), max_len=NAME, max_items=2)
    maintenance: bool = wf("m", False)
    cleanups: tuple[Cleanup, ...] = wf("c", (), max_items=MAX_CLEANUPS)
    unblock_seq: int = wf("us", 0)  # raised by each `clevervm unblock`
    fence_seq: int = wf("fs", 0)  # raised by each `clevervm fence PEER`

    @functools.cached_property
    def ref(self) -> IntentRef:
        digest = hashlib.sha256(msgpack.packb(to_wire(self), use_bin_type=True)).digest()[:8]
        return IntentRef(version=self.version, origin=self.origin, digest=digest)

    def order(self) -> tuple[int, str, bytes]:
        return self.ref.order()

    def banned(self, node: str, wall_now: float) -> bool:
        return any(b.node == node and b.active(wall_now) for b in self.bans)

    def describe(self) -> str:
        parts = [f"target {self.target_role}"]
        if self.maintenance:
            parts.append("maintenance on")
        for b in self.bans:
            parts.append(f"{b.node} banned" + ("" if b.until is None else " (expires)"))
        for n in self.standby:
            parts.append(f"{n} in standby")
        return ", ".join(parts)
