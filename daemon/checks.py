"""`clevervm check` (issue 8's pre-flight list) and the evidence of `clevervm split-brain`.

Each check line has a severity (``ok``, ``warn``, ``fail``), an area and a
sentence that says what to do; ``check`` fails (exit 1) when any line is
``fail``. Checks read the parts as they are; the only actions are read-only
probes (a fresh gateway round, the fence devices' status and identity,
``drbdsetup show``, libvirt queries, ``statvfs``).

Invariant: a check that cannot run is a ``fail`` line saying why, never an
exception out of the command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clever_cluster.fencing.monitor import check_report

from . import config as config_mod
from .drbd import errors as drbd_errors
from .drbd.model import DrbdParseError
from .fencing_setup import peer_level1_budget
from .gateway import GatewayError
from .resources.threads import OBSERVE, run_in
from .resources.vmmonitor import is_managed

if TYPE_CHECKING:
    from .runtime import Runtime

CHECK_TIMEOUT = 60.0
CLUSTER_STACK = ("pacemakerd", "corosync", "pacemaker-controld", "crmd")
LIBVIRT_GUESTS_WANTS = (Path("/etc/systemd/system/multi-user.target.wants/libvirt-guests.service"),
                        Path("/etc/systemd/system/libvirtd.service.wants/libvirt-guests.service"))


@dataclasses.dataclass(frozen=True)
class Line:
    severity: str
    area: str
    text: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


async def run_checks(rt: Runtime) -> list[Line]:
    out: list[Line] = []
    for area, fn in (("config", _config), ("heartbeat", _heartbeat), ("gateway", _gateway), ("fencing", _fencing),
                     ("drbd", _drbd), ("libvirt", _libvirt), ("save space", _save_space), ("cluster stack", _stack)):
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                out += await fn(rt)
        except TimeoutError:
            out.append(Line("fail", area, f"the check did not finish within {CHECK_TIMEOUT:g} s"))
        except Exception as e:  # noqa: BLE001 - a check that cannot run is a failed check
            out.append(Line("fail", area, f"the check could not run: {type(e).__name__}: {e}"))
    return out


async def _config(rt: Runtime) -> list[Line]:
    out = []
    try:
        await asyncio.to_thread(config_mod.load, rt.config_path)
        out.append(Line("ok", "config", f"{rt.config_path} is valid (settings fingerprint {config_mod.safety_fingerprint(rt.cfg)})"))
    except config_mod.ConfigError as e:
        out.append(Line("fail", "config", f"{rt.config_path} on disk has problems (the daemon runs on its last good copy): "
                                          + "; ".join(e.problems)))
    keys = rt.heartbeat.session.keys
    out.append(Line("ok", "config", f"heartbeat key {keys.current.id}" + (f", next key {keys.next.id}" if keys.next else "")))
    view = rt.heartbeat.view()
    if view.settings_mismatch is None:
        out.append(Line("warn", "config", f"settings not compared: {rt.peer} not heard yet"))
    elif view.settings_mismatch:
        out.append(Line("fail", "config", f"safety-relevant settings differ: this node {view.settings_fingerprint}, "
                                          f"{rt.peer} {view.peer_settings_fingerprint}; make [heartbeat], [fencing], [policy] and "
                                          "the resource settings identical"))
    else:
        out.append(Line("ok", "config", f"settings identical on both nodes ({view.settings_fingerprint})"))
    if not rt.heartbeat.session.ident.machine_id:
        out.append(Line("fail", "config", "no machine id (no SMBIOS UUID and cluster.machine_id unset): the peer cannot check "
                                          "which machine its fence device powers"))
    return out


async def _heartbeat(rt: Runtime) -> list[Line]:
    view = rt.heartbeat.view()
    out = []
    for ln in view.links:
        if ln.up:
            out.append(Line("ok", "heartbeat", f"link {ln.name}: {rt.peer} heard {ln.silent_for:.2f}s ago"
                                                + (f", rtt {ln.rtt_smoothed * 1000:.2f} ms" if ln.rtt_smoothed is not None else "")))
        else:
            out.append(Line("fail", "heartbeat", f"link {ln.name}: {rt.peer} not heard on it"
                                                  + (f" for {ln.silent_for:.1f}s" if ln.silent_for is not None else "")))
    if len(view.links) < 2:
        out.append(Line("warn", "heartbeat", "one heartbeat link only: a second path keeps a cut cable from looking like a dead peer"))
    return out


async def _gateway(rt: Runtime) -> list[Line]:
    try:
        p = await rt.pinger.fresh_probe()
    except GatewayError as e:
        return [Line("fail", "gateway", str(e))]
    out = [Line("ok" if t.reachable else "fail", "gateway",
                f"{t.target}: " + (f"reachable, rtt {t.rtt_ms:.2f} ms" if t.reachable and t.rtt_ms is not None else
                                   "reachable" if t.reachable else f"not reachable ({t.error or 'no reply'})")) for t in p.targets]
    return out


async def _fencing(rt: Runtime) -> list[Line]:
    cfg = rt.cfg
    lines, _ = await check_report(rt.monitor, priority_delay=cfg.fencing.priority_delay,
                                  peer_level1_budget=peer_level1_budget(rt.levels),
                                  detection=cfg.heartbeat.timeout + cfg.heartbeat.interval)
    return [Line(c.severity, "fencing", c.text) for c in lines]


async def _drbd(rt: Runtime) -> list[Line]:
    try:
        rep = await rt.drbd.check_settings()
    except (drbd_errors.DrbdError, DrbdParseError) as e:
        return [Line("fail", "drbd", f"cannot read DRBD's configuration: {e}")]
    if rep.safe:
        return [Line("ok", "drbd", f"{rt.cfg.drbd.resource}: protocol C, fencing {rep.fencing or 'resource-and-stonith'}, "
                                   "clevervm handlers, no two primaries, no auto-promote (DESIGN S9)")]
    return [Line("fail", "drbd", i.describe()) for i in rep.issues]


async def _libvirt(rt: Runtime) -> list[Line]:
    vcfg = rt.cfg.vms

    def read(conn: Any) -> list[tuple[str, bool]]:
        return [(d.name(), bool(d.autostart())) for d in conn.listAllDomains(0) if is_managed(vcfg, d.name())]

    out = []
    found = dict(await rt.group.libvirt.call(read))
    for name in vcfg.domains:
        if name not in found:
            out.append(Line("fail", "libvirt", f"domain {name} is not defined on this node (define it on both nodes)"))
    if not found:
        out.append(Line("warn", "libvirt", f"no managed domain defined here ({'domains ' + ', '.join(vcfg.domains) if vcfg.domains else 'prefix ' + str(vcfg.name_prefix)})"))
    for name, auto in sorted(found.items()):
        out.append(Line("fail" if auto else "ok", "libvirt",
                        f"domain {name}: autostart is ON: libvirt would start it at boot on both nodes; run `virsh autostart --disable {name}`"
                        if auto else f"domain {name}: defined, autostart off"))
    guests = [p for p in LIBVIRT_GUESTS_WANTS if p.exists()]
    out.append(Line("fail", "libvirt", "libvirt-guests is enabled: it saves and restarts every running domain at shutdown and boot, "
                                       "behind the cluster's back; run `systemctl disable libvirt-guests`")
               if guests else Line("ok", "libvirt", "libvirt-guests does not manage the domains (not enabled)"))
    return out


async def _save_space(rt: Runtime) -> list[Line]:
    if not rt.world.mounted:
        return [Line("ok", "save space", "the replicated filesystem is not mounted here (checked on the active node)")]
    vcfg = rt.cfg.vms

    def memory(conn: Any) -> int:
        return sum(int(d.info()[2]) * 1024 for d in conn.listAllDomains(0) if is_managed(vcfg, d.name()) and d.isActive())

    need = await rt.group.libvirt.call(memory)
    save_dir = vcfg.save_dir if vcfg.save_dir.exists() else rt.group.filesystem.mountpoint
    st = await run_in(OBSERVE, os.statvfs, save_dir)
    free = st.f_bavail * st.f_frsize
    if free < need:
        return [Line("fail", "save space", f"{free / 2**30:.1f} GiB free in {save_dir}, the running VMs need up to {need / 2**30:.1f} GiB "
                                           "to be saved for a handover")]
    return [Line("ok", "save space", f"{free / 2**30:.1f} GiB free in {save_dir} for up to {need / 2**30:.1f} GiB of VM memory")]


def _cluster_stack_running() -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
        except OSError:
            continue
        if comm in CLUSTER_STACK:
            found.append(f"{comm} (pid {entry.name})")
    return found


async def _stack(rt: Runtime) -> list[Line]:
    found = await run_in(OBSERVE, _cluster_stack_running)
    if found:
        return [Line("fail", "cluster stack", "Pacemaker/Corosync are running: " + ", ".join(found)
                     + "; two cluster managers must never drive the same resources (docs/migration.md)")]
    return [Line("ok", "cluster stack", "Pacemaker and Corosync are not running")]


# --------------------------------------------------------------------------- split brain


async def split_brain_evidence(rt: Runtime) -> dict[str, Any]:
    """Which node has newer data, and the exact recovery commands."""
    f = rt.world.drbd
    gi: Any = None
    try:
        g = await rt.drbd.generation_ids()
        gi = {"current": g.current, "bitmap": g.bitmap, "history": list(g.history), "data_uuid": g.data_uuid}
    except (drbd_errors.DrbdError, DrbdParseError) as e:
        gi = {"error": str(e)}
    view = rt.heartbeat.view()
    rep = view.report
    dur = rt.loop.state.durable
    res, me, peer = rt.cfg.drbd.resource, rt.node, rt.peer
    peer_epoch = f"{rep.epoch.counter}@{rep.epoch.node}" if rep is not None and rep.epoch is not None else None
    here = {"node": me, "role": f.role.value, "disk": f.disk.value if f.disk else None, "epoch": str(dur.epoch),
            "generation": gi, "out_of_sync_kib": f.out_of_sync_kib, "split_brain": f.split_brain,
            "split_brain_evidence": f.split_brain_evidence, "holds_resources": bool(rt.loop.facts and rt.loop.facts.resources.mounted)}
    there = {"node": peer, "heard": view.state.value, "role": rep.resources.drbd.role if rep else None,
             "disk": rep.resources.drbd.disk if rep else None, "data_uuid": rep.resources.drbd.data_uuid if rep else None,
             "epoch": peer_epoch, "phase": rep.phase if rep else None, "split_brain": rep.resources.drbd.split_brain if rep else None}
    theirs = (rep.epoch.counter, rep.epoch.node) if rep is not None and rep.epoch is not None else None
    mine = (dur.epoch.counter, dur.epoch.node)
    newer = None if theirs is None or theirs == mine else (me if mine > theirs else peer)
    victim = peer if newer == me else me if newer == peer else None
    survivor = me if victim == peer else peer if victim == me else None

    def commands(v: str, s: str) -> list[str]:
        return [f"on {v} (the victim: its changes since the split are DISCARDED): make sure it holds no resources "
                f"(clevervm standby {v}), then drbdadm secondary {res}; drbdadm disconnect {res}; "
                f"drbdadm connect --discard-my-data {res} (or: clevervm split-brain --resolve --victim {v})",
                f"on {s} (the survivor): drbdadm disconnect {res}; drbdadm connect {res}",
                "when both show Connected and the resync finished: clevervm unblock (on both nodes)"]

    return {
        "split_brain": f.split_brain or bool(rep and rep.resources.drbd.split_brain),
        "this_node": here, "peer": there,
        "newer_data": newer,
        "why": (f"epoch {dur.epoch} here vs {peer_epoch} on {peer}: the higher epoch promoted last" if peer_epoch else
                f"{peer}'s epoch is not known (not heard); compare the generation UUIDs on both nodes"),
        "suggested_victim": victim,
        "recovery": commands(victim, survivor) if victim and survivor else
        ["decide which node's data to keep, then: clevervm split-brain --resolve --victim NODE on that node and its peer"],
    }
