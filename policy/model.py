"""The vocabulary of the policy: phases, the identities of DESIGN §4.1, and
the enumerations that observers map the world onto.

Invariants:
- Every value here is immutable and hashable, so facts and state built from
  them can be compared and stored without copies.
- ``Epoch`` is totally ordered as (counter, node); two nodes never mint the
  same epoch because the node name is part of it.
- "Unknown" is a value of each enumeration, never an exception.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum


class Phase(StrEnum):
    STARTING = "STARTING"        # this boot has not heard the peer yet (S4)
    SECONDARY = "SECONDARY"
    FENCING = "FENCING"          # peer lost: waiting, probing, fencing or retrying; resources frozen
    PROMOTING = "PROMOTING"
    PRIMARY = "PRIMARY"
    DEMOTING = "DEMOTING"
    BLOCKED = "BLOCKED"          # cannot act safely; left only by an explicit unblock
    MAINTENANCE = "MAINTENANCE"  # observe only


class Role(StrEnum):
    PRIMARY = "Primary"
    SECONDARY = "Secondary"
    UNKNOWN = "Unknown"


class Conn(StrEnum):
    """DRBD's connection to the peer, reduced to what the policy needs."""
    CONNECTED = "Connected"      # replicating (including while a resync runs)
    CONNECTING = "Connecting"    # WFConnection / Connecting / NetworkFailure...: trying
    STANDALONE = "StandAlone"    # not trying (after disconnect or split brain)
    UNKNOWN = "Unknown"


class Disk(StrEnum):
    UP_TO_DATE = "UpToDate"
    CONSISTENT = "Consistent"    # a node that came up without its peer
    OUTDATED = "Outdated"
    INCONSISTENT = "Inconsistent"
    DISKLESS = "Diskless"
    FAILED = "Failed"
    UNKNOWN = "DUnknown"


class Suspended(StrEnum):
    NO = "no"
    FENCING = "fencing"          # resource-and-stonith froze I/O until the fence-peer answer
    USER = "user"
    OTHER = "other"


class VmState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    CRASHED = "crashed"
    UNKNOWN = "unknown"          # libvirt unreachable: not a crash, and possibly running


class StopCause(StrEnum):
    """Why a VM that is not running stopped, as libvirt's event reason tells."""
    NONE = "none"                # running, or never started
    CLUSTER = "cluster"          # this daemon stopped or saved it
    OUTSIDE = "outside"          # virsh / clevervm stop: brought back, not a failure
    CRASH = "crash"              # crashed or failed: a failure


class TargetRole(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"          # forcestop: VMs saved and kept stopped


class GrantKind(StrEnum):
    HANDOVER = "handover"        # the active grants after demoting
    YIELD = "yield"              # cold start: the weaker candidate yields


class Evidence(StrEnum):
    DEVICE = "device"            # a fence device verified the peer's machine OFF
    OPERATOR = "operator"        # clevervm confirm-fenced


class ImageKind(StrEnum):
    HANDOVER = "handover"
    FORCESTOP = "forcestop"


class SequenceKind(StrEnum):
    PROMOTE = "promote"
    DEMOTE = "demote"
    VM = "vm"


class DemoteMode(StrEnum):
    SAVE = "save"                # handover: save VMs to the replicated filesystem
    STOP = "stop"                # clean stop: shut VMs down
    STOP_NOW = "stop_now"        # S5: destroy at once, no save (the data may not be ours)


class BlockCause(StrEnum):
    SPLIT_BRAIN = "split_brain"
    UNSAFE_DRBD_CONFIG = "unsafe_drbd_config"
    MISFENCE = "misfence"


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Epoch:
    """Generation of the data this node holds: (counter, node), totally ordered."""
    counter: int
    node: str

    def next_for(self, node: str, seen: Epoch) -> Epoch:
        return Epoch(max(self.counter, seen.counter) + 1, node)

    def __str__(self) -> str:
        return f"{self.counter}@{self.node}"


ZERO_EPOCH = Epoch(0, "")


@dataclasses.dataclass(frozen=True, slots=True)
class LossEpisode:
    """One loss of the peer. Fence records name it; a record never serves another."""
    peer: str
    peer_incarnation: int | None   # None: the peer was never heard this boot
    peer_boot_id: str | None
    counter: int                   # persisted local counter

    def __str__(self) -> str:
        return f"episode {self.counter} ({self.peer} incarnation {self.peer_incarnation}, boot {self.peer_boot_id})"


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """A handover grant or a cold-start yield. The grantee acknowledges before acting."""
    grant_id: str
    kind: GrantKind
    grantor: str
    grantee: str
    grantor_incarnation: int
    epoch: Epoch
    grantee_incarnation: int | None = None   # the grantee daemon it was offered to; a restarted grantee must be offered anew

    def __str__(self) -> str:
        return f"{self.kind} {self.grant_id} {self.grantor}->{self.grantee}"


@dataclasses.dataclass(frozen=True, slots=True)
class ImageToken:
    """What a saved VM image is bound to (DESIGN §7)."""
    kind: ImageKind
    handover_id: str | None       # the grant id for a handover image
    epoch: Epoch
    data_uuid: str


@dataclasses.dataclass(frozen=True, slots=True)
class FencedIncarnation:
    """A node incarnation some fence record confirmed off."""
    node: str
    incarnation: int | None
    boot_id: str | None
