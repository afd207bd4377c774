"""The working context of one decision: the inputs, the derived views, and
the outputs being built (new durable and volatile state, actions, alerts).

It is created and discarded inside :func:`clever_cluster.policy.step`; the
function stays pure because nothing outside the call ever sees a Ctx.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import view
from .actions import Action, Alert, Promote, VmPlan, WaitUntil
from .facts import Facts
from .model import Conn, Disk, Grant, GrantKind, ImageKind, ImageToken, Phase, TargetRole
from .mutations import Mutations
from .reasons import Code
from .settings import Settings
from .state import Durable, PolicyState
from .view import PeerStatus

Outcome = tuple[Phase, Code, str]


class Ctx:
    def __init__(self, state: PolicyState, facts: Facts, settings: Settings, mutations: Mutations) -> None:
        self.st = state
        self.f = facts
        self.s = settings
        self.m = mutations
        self.d: Durable = state.durable
        self.v: PolicyState = state      # volatile fields, replaced as the decision goes
        self.actions: list[Action] = []
        self.alerts: list[Alert] = []
        self.status = view.peer_status(facts, settings)
        if self.status is PeerStatus.NEVER and state.durable.peer_left is not None:
            self.status = PeerStatus.LEFT    # a restarted daemon remembers that the peer left cleanly
        self.rep = facts.peer.report
        self.held = view.holds(facts)
        self.outdate_request = False

    # ------------------------------------------------------------ building
    def upd(self, **kw: Any) -> None:
        changed = {k: v for k, v in kw.items() if getattr(self.d, k) != v}
        if changed:
            self.d = dataclasses.replace(self.d, **changed)

    def vol(self, **kw: Any) -> None:
        changed = {k: v for k, v in kw.items() if getattr(self.v, k) != v}
        if changed:
            self.v = dataclasses.replace(self.v, **changed)

    def act(self, a: Action) -> None:
        self.actions.append(a)

    def alert(self, kind: str, sentence: str) -> None:
        self.alerts.append(Alert(kind, sentence))

    def wait_until(self, t: float) -> None:
        self.actions.append(WaitUntil(t))

    # ------------------------------------------------------------ views on the current durable state
    @property
    def eligible(self) -> bool:
        return view.self_eligible(self.d, self.f, self.s, self.m)

    @property
    def heard_this_boot(self) -> bool:
        return self.d.peer_heard_boot == self.f.local.boot_id

    def promote_blocker(self, accept_data_loss: bool) -> tuple[Code, str] | None:
        """S3 and S9 for a promotion now; None when it may go ahead."""
        f, d = self.f, self.d
        if f.now < self.v.observe_until:
            return Code.STALL_REOBSERVING, f"loop stalled; re-observing until {self.v.observe_until:.2f}"
        if f.drbd.split_brain:
            return Code.PROMOTE_REFUSED_DISK, "DRBD reports split brain"
        if f.drbd.config_safe is not True:
            return Code.PROMOTE_REFUSED_CONFIG, f"DRBD configuration not known safe ({f.drbd.config_problem or 'not checked yet'})"
        disk = f.drbd.disk
        if not view.disk_ok(disk, self.m):
            if disk is Disk.CONSISTENT and accept_data_loss:
                pass
            elif disk is Disk.CONSISTENT:
                return Code.PROMOTE_REFUSED_CONSISTENT, "local disk is Consistent (came up without its peer); needs confirm-fenced --accept-data-loss"
            else:
                return Code.PROMOTE_REFUSED_DISK, f"local disk is {disk}"
        if view.epoch_behind(d) and not accept_data_loss:
            return Code.PROMOTE_REFUSED_EPOCH_BEHIND, f"epoch {d.epoch} is behind the peer's {d.peer_epoch_seen}"
        return None

    def bump_epoch(self, key: str) -> bool:
        """Bump the epoch once per key (a promotion gate or a carried-on loss)."""
        if self.d.carried_on == key:
            return False
        self.upd(epoch=view.next_epoch(self.d, self.s), carried_on=key)
        return True

    def restorable(self, img: ImageToken | None, grant: Grant | None) -> bool:
        if img is None:
            return False
        if self.m.restore_stale_image:
            return True
        if img.data_uuid != self.f.drbd.data_uuid:
            return False
        if img.kind is ImageKind.FORCESTOP:
            return True
        return grant is not None and img.handover_id == grant.grant_id and img.epoch == grant.epoch

    def plans(self, grant: Grant | None) -> tuple[VmPlan, ...]:
        """What to start. Under a handover grant the images are not visible yet (not mounted): the plan
        names the exact token the image must carry, and the executor restores only on an exact match."""
        if self.f.intent.target_role is TargetRole.STOPPED:
            return ()
        out = []
        for vm in self.f.resources.vms:
            if grant is not None and grant.kind is GrantKind.HANDOVER:
                want: ImageToken | None = ImageToken(ImageKind.HANDOVER, grant.grant_id, grant.epoch, self.f.drbd.data_uuid)
            else:
                want = vm.image if self.restorable(vm.image, grant) else None
            out.append(VmPlan(vm.name, want))
        return tuple(out)

    def promote(self, gate: str, grant: Grant | None, force: bool) -> None:
        self.bump_epoch(f"promote:{gate}")
        self.act(Promote(gate, self.plans(grant), force))

    def recent_failure(self) -> float | None:
        """End of the wait after a failed sequence, if still running."""
        r = self.f.last_result
        if r is None or r.ok:
            return None
        until = r.finished_at + self.s.retry_backoff
        return until if self.f.now < until else None

    @property
    def connected(self) -> bool:
        return self.f.drbd.connection is Conn.CONNECTED
