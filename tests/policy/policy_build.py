"""Builders of policy inputs for the table tests: a healthy two-node
cluster seen from node1, changed field by field with keyword overrides."""

from __future__ import annotations

import dataclasses
from typing import Any

from clever_cluster.policy import (
    Announcement,
    Conn,
    Disk,
    Drbd,
    Durable,
    Epoch,
    Facts,
    Fencing,
    Gateway,
    Intent,
    Link,
    Local,
    PeerFacts,
    PeerReport,
    Phase,
    PolicyState,
    Resources,
    Role,
    Settings,
    Vm,
    VmState,
)

S = Settings(node="node1", peer="node2")
BOOT = "node1-boot1"
NOW = 100.0
E1 = Epoch(1, "node1")


def report(**kw: Any) -> PeerReport:
    """node2 as a healthy standby, heard just now."""
    base = PeerReport(node="node2", incarnation=1, boot_id="node2-boot1", machine_id="uuid-node2", received_at=NOW,
                      phase="SECONDARY", epoch=E1, data_uuid="0A", disk=Disk.UP_TO_DATE, drbd_primary=False,
                      mounted=False, ip=False, vms_running=0, gateway_score=1, eligible=True, settings_fingerprint="fp")
    return dataclasses.replace(base, **kw)


def active_report(**kw: Any) -> PeerReport:
    return report(**{"phase": "PRIMARY", "drbd_primary": True, "mounted": True, "ip": True, "vms_running": 2, **kw})


VMS_UP = (Vm("vm1", VmState.RUNNING), Vm("vm2", VmState.RUNNING))
VMS_DOWN = (Vm("vm1", VmState.STOPPED), Vm("vm2", VmState.STOPPED))


def facts(*, active: bool = True, peer: PeerReport | None = None, age: float | None = 0.05, drbd: dict[str, Any] | None = None,
          resources: Resources | None = None, peer_facts: dict[str, Any] | None = None, local: dict[str, Any] | None = None,
          **kw: Any) -> Facts:
    """node1's view; ``active`` makes node1 hold the group, else node2 does."""
    if peer is None:
        peer = report() if active else active_report()
    role = Role.PRIMARY if active else Role.SECONDARY
    d = dict(role=role, peer_role=Role.SECONDARY if active else Role.PRIMARY, connection=Conn.CONNECTED,
             disk=Disk.UP_TO_DATE, peer_disk=Disk.UP_TO_DATE, data_uuid="0A", config_safe=True)
    d.update(drbd or {})
    pf = dict(links=(Link("bond0", age), Link("lan", age)), report=peer)
    pf.update(peer_facts or {})
    loc = dict(node="node1", incarnation=1, boot_id=BOOT, machine_id="uuid-node1", settings_fingerprint="fp")
    loc.update(local or {})
    base = Facts(
        now=NOW, local=Local(**loc), peer=PeerFacts(**pf), gateway=Gateway(1), drbd=Drbd(**d),
        resources=resources or (Resources(True, True, VMS_UP) if active else Resources(False, False, VMS_DOWN)),
        intent=Intent(), fencing=Fencing(),
    )
    return dataclasses.replace(base, **kw)


def lost(active: bool = True, **kw: Any) -> Facts:
    """The peer silent on every link for 2 s (timeout 1 s); DRBD has noticed."""
    drbd = {"connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN, "peer_disk": Disk.UNKNOWN, **kw.pop("drbd", {})}
    return facts(active=active, age=2.0, drbd=drbd, **kw)


def state(*, phase: Phase = Phase.PRIMARY, fresh_daemon: bool = False, **durable: Any) -> PolicyState:
    """A running daemon's state: the peer was heard this boot, a decision was already published."""
    d = Durable(**{"epoch": E1, "peer_epoch_seen": E1, "peer_heard_boot": BOOT, **durable})
    pub = None if fresh_daemon else Announcement(phase, d.epoch, True)
    return PolicyState(durable=d, phase=phase, published=pub, last_code="x")


def with_vol(st: PolicyState, **kw: Any) -> PolicyState:
    return dataclasses.replace(st, **kw)
