"""The configuration file of one lab node: every section points at that node's parts.

Built on :func:`clever_cluster.sim.configgen.node_table` (the format
operators use) and checked against the daemon's schema by the daemon itself
when it starts.

- heartbeat on hb0 (the replication link) and hb1, optionally the LAN too;
- gateway: the lab's gateway;
- drbd: the node's simulator front ends and /proc/drbd file;
- filesystem: the node's loop device on a mountpoint in the node's directory;
- ip: the floating address on the node's LAN interface;
- vms: the node's libvirtd (test driver), domains ``plc*``;
- fencing: one IPMI device, the *peer's* BMC;
- metrics on 127.0.0.1 inside the node's network namespace.

The node's own machine id (the UUID its BMC reports, which the peer's fence
device check compares with what the node publishes) goes into
``cluster.machine_id`` when the schema has that key (issue 4's heartbeat
branch adds it); it is always written to ``<node dir>/machine-id`` as well.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from clever_cluster.daemon.config import ClusterConfig
from clever_cluster.daemon.heartbeat.codec import to_wire
from clever_cluster.daemon.heartbeat.intent import INTENT_FILE
from clever_cluster.daemon.heartbeat.model import AdminIntent
from clever_cluster.daemon.persist import atomic_write_json
from clever_cluster.sim import configgen

FLOATING_IP = "192.168.100.50/24"
METRICS_PORT = 9640
BMC_PORT = 623
BMC_USER = "admin"


def schema_has_machine_id() -> bool:
    return any(f.name == "machine_id" for f in dataclasses.fields(ClusterConfig))


@dataclasses.dataclass(frozen=True)
class NodeParts:
    """What one node's configuration needs to know about its parts."""

    name: str
    dir: Path
    hb0: str
    hb1: str
    lan: str
    bmc: str
    machine_id: str
    loop_device: str
    drbdadm: Path
    drbdsetup: Path
    proc_drbd: Path
    libvirt_uri: str

    @property
    def mountpoint(self) -> Path:
        return self.dir / "fs" / "mnt"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def runtime_dir(self) -> Path:
        return self.dir / "run"


def table(me: NodeParts, peer: NodeParts, *, cluster: str, key_file: Path, bmc_password_file: Path, gateway: str,
          drbd_version: str, heartbeat_lan: bool, journal: bool,
          overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    links = [("hb0", me.hb0, peer.hb0), ("hb1", me.hb1, peer.hb1)]
    if heartbeat_lan:
        links.append(("lan", me.lan, peer.lan))
    spec = configgen.NodeSpec(me.name, links, me.state_dir, me.runtime_dir, f"127.0.0.1:{METRICS_PORT}")
    peer_spec = configgen.NodeSpec(peer.name, [], peer.state_dir, peer.runtime_dir)
    cluster_section: dict[str, Any] = {"name": cluster}
    if schema_has_machine_id():
        cluster_section["machine_id"] = me.machine_id
    sections: dict[str, dict[str, Any]] = {
        "cluster": cluster_section,
        "gateway": {"targets": [gateway]},
        "drbd": {"resource": "r0", "backend": "drbd84" if drbd_version == "8.4" else "drbd9", "drbdadm": str(me.drbdadm),
                 "drbdsetup": str(me.drbdsetup), "proc_drbd": str(me.proc_drbd)},
        "filesystem": {"device": me.loop_device, "mountpoint": str(me.mountpoint)},
        "ip": {"address": FLOATING_IP, "interface": "eth0"},
        "vms": {"uri": me.libvirt_uri, "name_prefix": "plc", "save_dir": str(me.mountpoint / ".clever-save")},
        "fencing": {"level": [{"device": [{"type": "ipmi", "name": f"bmc-{peer.name}", "host": peer.bmc, "port": BMC_PORT,
                                           "username": BMC_USER, "password_file": str(bmc_password_file)}]}]},
        "log": {"target": "journal" if journal else "stderr"},
    }
    for section, keys in (overrides or {}).items():
        sections.setdefault(section, {}).update(keys)
    return configgen.node_table(cluster=cluster, me=spec, peer=peer_spec, key_file=key_file, workdir=me.dir, overrides=sections)


def write(path: Path, me: NodeParts, peer: NodeParts, **kw: Any) -> Path:
    path.write_text(configgen.render(table(me, peer, **kw)))
    (me.dir / "machine-id").write_text(me.machine_id + "\n")
    return path


def write_maintenance_intent(me: NodeParts) -> None:
    """An admin intent with maintenance on, in the node's state directory before its daemon first starts
    (as `clevervm maintenance on` would leave it): the daemon observes and never acts."""
    rec = AdminIntent(version=1, origin=me.name, maintenance=True)
    me.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(me.state_dir / INTENT_FILE, {"format": 1, "intent": to_wire(rec), "summary": rec.describe()})
