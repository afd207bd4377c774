"""The outputs of one decision: typed actions the executor carries out.

docs/policy.md says, per action, what the executor must do and which fact
reports its progress. Actions are idempotent: the policy repeats an action
while its effect is not yet visible in the facts, and the executor ignores a
repeat of what it is already doing.

Invariants:
- Sequences carry a gate token; the executor re-validates it with
  :func:`clever_cluster.policy.gate_valid` before each step.
- A ``FencePeer`` is only emitted after the delay was waited and a fresh
  gateway probe taken at decision time said reachable (S7), unless an
  operator asked.
"""

from __future__ import annotations

import dataclasses

from .model import DemoteMode, Epoch, Grant, ImageToken, LossEpisode, Phase


@dataclasses.dataclass(frozen=True, slots=True)
class Announcement:
    """What the heartbeat carries for the policy (DESIGN §5). Sent on every heartbeat."""
    phase: Phase
    epoch: Epoch
    eligible: bool
    grant: Grant | None = None          # offered grant or yield
    ack: str | None = None              # grant id acknowledged
    decline: str | None = None          # grant id declined
    outdate_request: bool = False       # ask the peer to outdate its disk
    leaving: bool = False
    fail_counts: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class VmPlan:
    name: str
    restore: ImageToken | None          # restore this image (renamed .consumed first), else cold boot


@dataclasses.dataclass(frozen=True, slots=True)
class FencePeer:
    episode: LossEpisode
    delay_waited: float                 # how long the decision waited since the loss (priority delay + jitter, or 0)
    operator: bool = False              # `clevervm fence`: S8 overridden


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeGateway:
    """Take a fresh undampened probe now; the result comes back as ``Facts.gateway.fresh``."""
    requested_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class Promote:
    """DRBD Primary -> mount -> IP (+ARP) -> VMs. Rolls back on a failed step."""
    gate: str
    vms: tuple[VmPlan, ...]
    force: bool = False                 # operator accepted data loss: promote a Consistent disk


@dataclasses.dataclass(frozen=True, slots=True)
class Demote:
    """VMs (save or stop) -> IP -> unmount -> DRBD Secondary."""
    gate: str
    mode: DemoteMode
    grant: Grant | None = None          # handover: images are bound to this grant


@dataclasses.dataclass(frozen=True, slots=True)
class StartVm:
    gate: str
    plan: VmPlan
    count_failure: bool = False         # a crash restart: add one to the VM's fail count first


@dataclasses.dataclass(frozen=True, slots=True)
class StopVm:
    gate: str
    name: str
    save: bool                          # forcestop: save with a forcestop token


@dataclasses.dataclass(frozen=True, slots=True)
class DisconnectDrbd:
    """`drbdadm disconnect`: the dead peer is still shown Connected; safe after a confirmed fence."""
    episode: LossEpisode


@dataclasses.dataclass(frozen=True, slots=True)
class ReconnectDrbd:
    """`drbdadm connect`, so the fenced peer resyncs when it returns."""


@dataclasses.dataclass(frozen=True, slots=True)
class ResumeIo:
    """`drbdadm resume-io`: frozen by resource-and-stonith, handler gone, evidence in hand."""
    evidence: str


@dataclasses.dataclass(frozen=True, slots=True)
class OutdateLocalDisk:
    """`drbdadm outdate`: the peer asked (its fence-peer handler runs). Refused by DRBD while Connected; repeated."""


@dataclasses.dataclass(frozen=True, slots=True)
class AnswerFencePeer:
    """Answer DRBD's waiting fence-peer handler with this exit code (4 outdated, 7 fenced, 1 otherwise)."""
    exit_code: int


@dataclasses.dataclass(frozen=True, slots=True)
class Publish:
    announcement: Announcement


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    sentence: str


@dataclasses.dataclass(frozen=True, slots=True)
class SelfFence:
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class WaitUntil:
    """Nothing to do before this time unless a fact changes."""
    at: float


Action = (FencePeer | ProbeGateway | Promote | Demote | StartVm | StopVm | DisconnectDrbd | ReconnectDrbd
          | ResumeIo | OutdateLocalDisk | AnswerFencePeer | Publish | Alert | SelfFence | WaitUntil)
