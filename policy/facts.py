"""The inputs of one decision: a frozen snapshot of everything observed.

The runtime builds one ``Facts`` per cycle from the latest value of each
observer (docs/policy.md says, per field, what it must observe). Times are
monotonic seconds in the same timebase as ``Facts.now``; persisted records
are converted to it by the runtime.

Invariants:
- Facts are immutable; "unknown" and "no data yet" are values (``None`` or an
  ``UNKNOWN`` member), never missing attributes.
- Nothing here is computed by the policy: it is what the world said.
"""

from __future__ import annotations

import dataclasses

from .model import (
    Conn,
    Disk,
    Epoch,
    Evidence,
    FencedIncarnation,
    Grant,
    ImageToken,
    LossEpisode,
    Role,
    SequenceKind,
    StopCause,
    Suspended,
    TargetRole,
    VmState,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Local:
    node: str
    incarnation: int
    boot_id: str
    machine_id: str
    shutting_down: bool = False        # a clean stop or reboot was requested: hand over, then announce leaving
    settings_fingerprint: str = ""     # daemon.config.safety_fingerprint of this node


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    name: str
    age: float | None                  # seconds since the last valid datagram on this link; None: never this boot


@dataclasses.dataclass(frozen=True, slots=True)
class PeerReport:
    """The peer's last valid heartbeat (DESIGN §5), as received."""
    node: str
    incarnation: int
    boot_id: str
    machine_id: str
    received_at: float
    phase: str
    epoch: Epoch
    data_uuid: str
    disk: Disk                          # the peer's own disk state
    drbd_primary: bool
    mounted: bool
    ip: bool
    vms_running: int
    gateway_score: int | None          # dampened; None: no data yet
    eligible: bool
    grant: Grant | None = None         # a grant or yield the peer offers
    ack: str | None = None             # grant id the peer acknowledged
    decline: str | None = None         # grant id the peer declined
    outdate_request: bool = False      # the peer asks us to outdate our disk (its fence-peer handler runs)
    leaving: bool = False              # clean stop announced
    restarting_until: float | None = None  # announced restart: expected back before this time
    fenced: tuple[FencedIncarnation, ...] = ()  # incarnations the peer holds a confirmed fence record for
    fail_counts: tuple[tuple[str, int], ...] = ()  # (vm, unexpired count) on the peer
    settings_fingerprint: str = ""

    @property
    def holds(self) -> bool:
        return self.drbd_primary or self.mounted or self.ip or self.vms_running > 0


@dataclasses.dataclass(frozen=True, slots=True)
class PeerFacts:
    links: tuple[Link, ...]
    report: PeerReport | None          # the last valid report this boot, or None
    incompatible: bool = False         # an authenticated datagram of an unknown protocol version arrived within the timeout
    unauthenticated: bool = False      # datagrams failing authentication arrive from the peer's addresses (key mismatch)


@dataclasses.dataclass(frozen=True, slots=True)
class FreshProbe:
    """A gateway probe taken on request (S7), undampened."""
    taken_at: float
    reachable: int | None              # None: the probe gave no data


@dataclasses.dataclass(frozen=True, slots=True)
class Gateway:
    score: int | None                  # dampened score; None: no data yet (different from 0)
    fresh: FreshProbe | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Drbd:
    role: Role
    peer_role: Role
    connection: Conn
    disk: Disk
    peer_disk: Disk
    data_uuid: str
    split_brain: bool = False
    suspended: Suspended = Suspended.NO
    fence_peer_pending: bool = False   # DRBD's fence-peer handler is waiting for this daemon's answer
    config_safe: bool | None = None    # S9 check of `drbdsetup show`; None: not checked yet
    config_problem: str = ""
    connected_since: float | None = None  # when the connection to the peer last became Connected (None: not since start)


@dataclasses.dataclass(frozen=True, slots=True)
class Vm:
    name: str
    state: VmState
    stop_cause: StopCause = StopCause.NONE
    image: ImageToken | None = None    # an unconsumed save image in save_dir, with its token


@dataclasses.dataclass(frozen=True, slots=True)
class Resources:
    mounted: bool
    ip: bool
    vms: tuple[Vm, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Sequence:
    """The in-flight promote/demote/VM sequence and the gate it runs under."""
    kind: SequenceKind
    gate: str
    started_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class SequenceResult:
    kind: SequenceKind
    gate: str
    ok: bool
    finished_at: float
    detail: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class FenceRecord:
    """A persisted confirmation that the peer's machine is off for one episode."""
    episode: LossEpisode
    evidence: Evidence
    machine_id: str
    confirmed_at: float
    accept_data_loss: bool = False     # operator: clevervm confirm-fenced --accept-data-loss


@dataclasses.dataclass(frozen=True, slots=True)
class FenceAttempt:
    episode: LossEpisode
    started_at: float
    running: bool
    finished_at: float | None = None
    detail: str = ""                   # why the last attempt failed ("level 1 bmc-host2: timeout")


@dataclasses.dataclass(frozen=True, slots=True)
class Fencing:
    records: tuple[FenceRecord, ...] = ()
    attempt: FenceAttempt | None = None
    failures: int = 0                  # failed attempts in the current episode
    peer_reported_off: bool = False    # the peer's level-1 device status reads OFF (device monitor)


@dataclasses.dataclass(frozen=True, slots=True)
class FailCount:
    vm: str
    count: int
    last_at: float                     # monotonic time of the last failure


@dataclasses.dataclass(frozen=True, slots=True)
class Ban:
    node: str
    until: float | None = None         # None: until unmigrate


@dataclasses.dataclass(frozen=True, slots=True)
class Intent:
    """Persisted, replicated admin intent."""
    version: int = 0
    target_role: TargetRole = TargetRole.STARTED
    bans: tuple[Ban, ...] = ()
    standby: frozenset[str] = frozenset()
    maintenance: bool = False
    unblock_seq: int = 0               # increases on each `clevervm unblock`
    fence_seq: int = 0                 # increases on each `clevervm fence PEER`


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    now: float
    local: Local
    peer: PeerFacts
    gateway: Gateway
    drbd: Drbd
    resources: Resources
    intent: Intent
    fencing: Fencing = Fencing()
    fail_counts: tuple[FailCount, ...] = ()
    sequence: Sequence | None = None
    last_result: SequenceResult | None = None
    stalled: bool = False              # the loop just came back from a gap longer than policy.stall_threshold
    random_draw: float = 0.0           # uniform in [0, 1), for the fence jitter
