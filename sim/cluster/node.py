"""One simulated node: power, the daemon process (incarnation, policy state,
what it has heard), the executor model, libvirt's VMs and persisted files.

Invariants:
- VMs, DRBD and persisted files outlive a daemon crash; only power loss
  takes VMs and DRBD state down (persisted files stay).
- A daemon restart keeps ``durable`` (persisted) and forgets everything else.
"""

from __future__ import annotations

import copy
import dataclasses

from clever_cluster.policy import (
    Durable,
    FailCount,
    FenceRecord,
    FreshProbe,
    ImageToken,
    PeerReport,
    PolicyState,
    SequenceKind,
    SequenceResult,
    StopCause,
    VmState,
    initial_state,
)

from .fencedev import Attempt


@dataclasses.dataclass
class VmSim:
    state: VmState = VmState.STOPPED
    cause: StopCause = StopCause.NONE


@dataclasses.dataclass
class SeqRun:
    kind: SequenceKind
    gate: str
    started_at: float
    steps: list[tuple[str, tuple[object, ...]]]    # (op, args): data, not closures
    undo: list[str]
    next_at: float
    index: int = 0
    origin: object = None       # the action that started it (identifies the closures in ``steps``)


class Node:
    def __init__(self, name: str, machine_id: str, vm_names: tuple[str, ...]) -> None:
        self.name = name
        self.machine_id = machine_id
        self.powered = True
        self.boot_seq = 1
        self.boot_at: float | None = None
        self.daemon = "running"            # running | crashed | hung | stopped | off
        self.restart_at: float | None = None
        self.hang_until: float | None = None
        self.incarnation = 1
        self.durable = Durable()
        self.state: PolicyState = initial_state(self.durable)
        self.records: list[FenceRecord] = []
        self.fail_counts: dict[str, FailCount] = {}
        self.vms = {v: VmSim() for v in vm_names}
        self.mounted = False
        self.ip = False
        self.proto = 5
        self.keys: tuple[str, ...] = ("k1",)
        self.shutting_down = False
        self.reboot_after_stop = False
        self.stays_off_after_stop = False      # a clean shutdown rather than a reboot
        self.announce_restart_until: float | None = None
        self.heard_boot: str | None = None   # ground truth for the oracle: a valid heartbeat reached this boot
        self.reset_daemon_memory()

    @property
    def boot_id(self) -> str:
        return f"{self.name}-boot{self.boot_seq}"

    @property
    def alive(self) -> bool:
        """The daemon takes decisions."""
        return self.powered and self.daemon == "running"

    def reset_daemon_memory(self) -> None:
        self.last_heard: dict[str, float] = {}
        self.report: PeerReport | None = None
        self.incompatible_at: float | None = None
        self.unauth_at: float | None = None
        self.gw_score: int | None = None
        self.gw_candidate: int | None = None
        self.gw_candidate_since = 0.0
        self.gw_next_probe = 0.0
        self.fresh: FreshProbe | None = None
        self.probe_due: float | None = None
        self.stalled = False
        self.free_since: float | None = None   # for the oracle: the first decision after MAINTENANCE or BLOCKED
        self.seq: SeqRun | None = None
        self.last_result: SequenceResult | None = None
        self.attempt: Attempt | None = None
        self.failures = 0
        self.failures_episode: object = None

    def clone(self) -> Node:
        c = copy.copy(self)
        c.records = list(self.records)
        c.fail_counts = dict(self.fail_counts)
        c.vms = {k: dataclasses.replace(v) for k, v in self.vms.items()}
        c.last_heard = dict(self.last_heard)
        if self.seq is not None:
            c.seq = dataclasses.replace(self.seq, steps=list(self.seq.steps), undo=list(self.seq.undo))
        if self.attempt is not None:
            c.attempt = dataclasses.replace(self.attempt)
        return c

    def holds(self) -> bool:
        return self.mounted or self.ip or any(v.state in (VmState.RUNNING, VmState.PAUSED) for v in self.vms.values())

    def image_view(self, images: dict[str, tuple[ImageToken, bool]], vm: str) -> ImageToken | None:
        got = images.get(vm)
        if got is None or got[1] or not self.mounted:
            return None
        return got[0]
