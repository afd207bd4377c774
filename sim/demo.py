"""``make demo``: the main job on its embedded default, on the full two-node lab, in about a minute.

What it does (as root, on one machine; ``sim/nodelab/``, docs/testing.md):
two simulated nodes in network namespaces with two heartbeat links and a
gateway, the DRBD simulator over a real ext4 loop device, VMs on libvirt's
test driver, a pyghmi BMC per node and the real ``clever-clusterd`` on each.
It shows ``clevervm status`` of the elected node, hands the resources over
with ``clevervm migrate`` and prints that timeline from ``clevervm
history``, powers the active node off through its BMC and prints the
failover timeline, powers the fenced node back on through its BMC and shows
it rejoin as the standby, runs the lab's safety check (never two active, no acknowledged write lost)
and removes everything.

Invariants:
- Whatever happens (a failed step, Ctrl-C, SIGTERM), the lab is closed and
  proven gone (``NodeLab.assert_nothing_left``): no namespace, mount, loop
  device or process of the demo remains. A second Ctrl-C during the cleanup
  is ignored so that it completes.
- A failed step exits non-zero with one clear line saying which step and
  why; the lab's logs are then kept in a directory the message names.
- Every wait polls what the daemons and the transition log report, with a
  deadline; nothing waits a fixed time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import FrameType
from typing import Any

from clever_cluster.daemon.clirender import render_timeline
from clever_cluster.sim import netns
from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab import lab as nodelab
from clever_cluster.sim.nodelab.drive import (
    OVERRIDES,
    cli_json,
    holds_all,
    other,
    wait_active,
    wait_code,
    wait_timeline,
)
from clever_cluster.sim.nodelab.lab import NodeLab
from clever_cluster.sim.nodelab.node import LabNode

# What the lab runs, by command (Debian package in scripts/apt-packages.txt).
COMMANDS = {"ip": "iproute2", "nsenter": "util-linux", "losetup": "util-linux", "unshare": "util-linux",
            "mkfs.ext4": "e2fsprogs", "nft": "nftables", "ipmitool": "ipmitool", "libvirtd": "libvirt-daemon"}
MODULES = {"libvirt": "libvirt-python", "pyghmi": "pyghmi"}


class DemoFailed(Exception):
    """A step of the demo did not happen as it should; the message says which and why."""


class Interrupted(BaseException):
    """SIGTERM: handled like Ctrl-C (clean up, then exit)."""


_current = ["starting"]  # the section running, for the failure message


def section(title: str) -> None:
    _current[0] = title
    print(f"\n== {title}", flush=True)


def say(sentence: str) -> None:
    print(textwrap.fill(sentence, 100, initial_indent="   ", subsequent_indent="   "), flush=True)


def show(text: str) -> None:
    print(textwrap.indent(text.rstrip(), "     | "), flush=True)


def preflight() -> None:
    """Refuse early, with the fix, what would fail half-way: not root, a missing command or module."""
    if os.geteuid() != 0:
        raise DemoFailed("the demo needs root (network namespaces, loop devices, mounts): run `sudo make demo`")
    if os.environ.get("DEMO_QEMU") == "1":
        raise DemoFailed("DEMO_QEMU=1 is not supported yet: the two-node lab (sim/nodelab) runs its VMs on libvirt's test driver "
                         "only; the tiny QEMU guest (sim/guest.py) is not wired into it. Run `make demo` without DEMO_QEMU.")
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    missing = [f"{c} (Debian package {p})" for c, p in COMMANDS.items() if shutil.which(c, path=path) is None]
    missing += [f"Python module {m} (pip package {p})" for m, p in MODULES.items() if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoFailed("missing: " + ", ".join(missing) + "; `make bootstrap` as root installs them")


def status_text(n: LabNode) -> str:
    r = n.cli("status", timeout=60)
    if r.returncode != 0:
        raise DemoFailed(f"clevervm status on {n.name} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def writes(n: LabNode, count: int, *, replicated: bool = True) -> int:
    """``count`` writes by the VM on ``n`` through DRBD, each acknowledged (and with ``replicated``, on the peer's disk too).

    The safety check looks for every one of them on the active node's disk at the end.
    """
    for _ in range(count):
        w = n.write()
        if not w.get("ok"):
            raise DemoFailed(f"a write on {n.name} was not acknowledged: {w}")
        if replicated and not w.get("replicated"):
            raise DemoFailed(f"a write on {n.name} was acknowledged without reaching the peer's disk: {w}")
    return count


def vm_starts(st: dict[str, Any]) -> list[str]:
    """How the last start sequence started each VM (restored from its save image, or cold-booted)."""
    runs = [r for r in st["resources"]["history"] if r["kind"] == "start"]
    return [p["detail"] for p in runs[-1]["phases"] if p["step"] == "vms" and p["action"] == "start"] if runs else []


def step_lab(lab: NodeLab) -> None:
    section("1. The lab: two nodes on this machine")
    say("Starting two simulated nodes, node1 and node2, each in its own network namespace: two heartbeat links (hb0, which "
        "also carries DRBD replication, and hb1), a LAN with the gateway 192.168.100.1, the DRBD simulator over a real ext4 "
        "loop device, a private libvirtd (test driver) with the managed VMs plc1 and plc2, an IPMI BMC emulator per node, "
        "and the real clever-clusterd on each.")
    t0 = time.monotonic()
    lab.start()
    say(f"Both nodes booted and both daemons answer after {time.monotonic() - t0:.1f} s.")


def step_cold_start(lab: NodeLab) -> tuple[LabNode, LabNode, int]:
    section("2. Cold start: the daemons elect one active node")
    say("Nobody holds anything yet; the daemons hear each other on both links and agree that one node takes the resources "
        "(DRBD Primary, the mount, the floating address 192.168.100.50, the VMs).")
    active = wait_active(lab, timeout=90)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary", timeout=60)
    say(f"{active.name} is active, {standby.name} is the standby. `clevervm status` on {active.name}; look at the phase, "
        "the DRBD line (Primary/Secondary UpToDate/UpToDate) and the VMs running:")
    show(status_text(active))
    count = writes(active, 3)
    say(f"The VM on {active.name} wrote {count} blocks; DRBD acknowledged each once both disks had it.")
    return active, standby, count


def step_migrate(lab: NodeLab, old: LabNode, new: LabNode) -> int:
    section(f"3. Planned handover: clevervm migrate ({old.name} -> {new.name})")
    say(f"The operator asks {old.name} to hand everything to {new.name}. It saves the VMs, stops them, unmounts, demotes "
        "DRBD and grants; the peer promotes, mounts and restores the VMs from their save images.")
    since = time.time()
    r = old.cli("migrate", timeout=120)
    show(f"$ clevervm migrate\n{r.stdout}{r.stderr}")
    if r.returncode != 0:
        raise DemoFailed(f"clevervm migrate exited {r.returncode}")
    wait_for(lambda: holds_all(lab, new.name), 90, f"{new.name} to hold every resource", interval=0.2)
    wait_active(lab, timeout=60)
    out = wait_timeline(old, "handover_out", since=since, outcome="handed over", timeout=60)
    inn = wait_timeline(new, "handover_in", since=since, outcome="active here", timeout=60)
    say(f"Done. The timelines from `clevervm history`: each line is one phase and how long it took; the sequence lines "
        f"give the steps of the stop on {old.name} and of the start on {new.name}.")
    show(f"{old.name}:\n" + "\n".join(render_timeline(out)))
    show(f"{new.name}:\n" + "\n".join(render_timeline(inn)))
    for note in vm_starts(cli_json(new, "status")):
        say(f"On {new.name}: {note}.")
    r = new.cli("unmigrate", timeout=60)
    say(f"`clevervm unmigrate` lifts the ban that migrate put on {old.name}, so it can take over again if needed: "
        f"{(r.stdout or r.stderr).strip()}")
    if r.returncode != 0:
        raise DemoFailed(f"clevervm unmigrate exited {r.returncode}")
    wait_code(old, "no_action_secondary", timeout=60)
    wait_for(lambda: not cli_json(old, "status")["intent"]["bans"], 60, f"the ban on {old.name} lifted", interval=0.2)
    return writes(new, 3)


def step_failover(lab: NodeLab, dead: LabNode, survivor: LabNode) -> int:
    section(f"4. Failover: {dead.name} loses its power")
    say(f"`ipmitool chassis power off` against {dead.name}'s BMC: the node dies at once, without a goodbye, and its VMs' "
        f"memory is lost. {survivor.name} stops hearing it on both links, fences it through the same BMC (power off, then "
        "reads it off) and only then promotes DRBD, mounts and cold-boots the VMs. It fences only through a BMC that it checked "
        f"earlier reports {dead.name}'s machine id.")
    wait_for(lambda: all(d["usable"] for d in cli_json(survivor, "status")["fencing"]["devices"]), 60,
             f"{survivor.name}'s fence device to be usable (identity verified)", interval=0.2)
    since = time.time()
    r = lab.ipmi(survivor.index, dead.index, "chassis", "power", "off")
    if r.returncode != 0:
        raise DemoFailed(f"ipmitool power off of {dead.name} failed: {r.stderr.strip()}")
    wait_for(lambda: holds_all(lab, survivor.name), 120, f"{survivor.name} to hold every resource", interval=0.2)
    fo = wait_timeline(survivor, "failover", since=since, outcome="active here", timeout=60)
    st = cli_json(survivor, "status")
    say(f"{survivor.name} is active. Its failover timeline: peer_lost -> fence_started covers the checks before a fence "
        "(the gateway still answers, the fence delay), fence_started -> fence_confirmed is the BMC's work, and the rest is "
        "the start of the resources.")
    show(f"{survivor.name}:\n" + "\n".join(render_timeline(fo)))
    recs = st["fencing"]["records"]
    if not recs:
        raise DemoFailed(f"{survivor.name} took over without a fence record")
    say(f"Fence record on {survivor.name}: {recs[-1]['kind']} fence of {dead.name} through {', '.join(recs[-1]['devices'])}.")
    for note in vm_starts(st):
        say(f"On {survivor.name}: {note}.")
    count = writes(survivor, 3, replicated=False)
    say(f"The VM on {survivor.name} wrote {count} blocks; with its peer off, DRBD acknowledged them on this disk alone "
        f"({dead.name} gets them when it resyncs).")
    return count


def step_rejoin(lab: NodeLab, back: LabNode, active: LabNode) -> int:
    section(f"5. {back.name} comes back as the standby")
    say(f"`ipmitool chassis power on` against {back.name}'s BMC. {back.name} boots as a new machine, its daemon starts, "
        f"hears {active.name} holding the resources and stays standby while DRBD resyncs. (The demo sets fencing.after = "
        "\"off\" so that you see the failover on its own; with the default \"on\" the survivor powers the fenced node back "
        "on itself, right after the fence.)")
    if back.power != "off":
        raise DemoFailed(f"{back.name} is powered {back.power} before the demo powered it on")
    r = lab.ipmi(active.index, back.index, "chassis", "power", "on")
    if r.returncode != 0:
        raise DemoFailed(f"ipmitool power on of {back.name} failed: {r.stderr.strip()}")
    wait_code(back, "no_action_secondary", timeout=120)
    wait_for(lambda: back.sim.state()["disk"] == "UpToDate", 60, f"{back.name}'s disk to be UpToDate", interval=0.2)
    say(f"`clevervm status` on {back.name}; look at the phase SECONDARY and the active node {active.name}:")
    show(status_text(back))
    return writes(active, 3)


def step_check(lab: NodeLab, count: int) -> None:
    section("6. The safety check")
    say("The lab logged every DRBD role, mount and VM transition of both nodes and every acknowledged write. It now checks "
        "that no two nodes were ever active at once and that every acknowledged write is on the disk of the active node.")
    lab.check()
    say(f"Check passed: never two active, no acknowledged write lost ({count} acknowledged writes checked).")


def run(lab: NodeLab) -> None:
    step_lab(lab)
    first, second, count = step_cold_start(lab)
    count += step_migrate(lab, first, second)
    count += step_failover(lab, second, first)
    count += step_rejoin(lab, second, first)
    step_check(lab, count)


def close(lab: NodeLab) -> list[str]:
    """Close the lab; return what is left behind (empty: nothing)."""
    try:
        lab.close()
    except Exception as e:  # noqa: BLE001 - report it, then look for leftovers
        print(f"   closing the lab: {e}", file=sys.stderr)
    return lab.leftovers()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Interrupted()


def main() -> int:
    t0 = time.monotonic()
    try:
        preflight()
    except DemoFailed as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 2
    # Labs of a demo or test that was killed before it could clean up.
    netns.cleanup_stale()
    nodelab.cleanup_stale()
    signal.signal(signal.SIGTERM, _terminate)
    lab = NodeLab(overrides={**OVERRIDES, "fencing": {**OVERRIDES["fencing"], "after": "off"}})
    rc, failure = 0, ""
    try:
        run(lab)
    except (KeyboardInterrupt, Interrupted):
        rc = 130
    except Exception as e:  # noqa: BLE001 - any failed step: clean up, then say which and why
        rc, failure = 1, f"step \"{_current[0]}\": {type(e).__name__}: {e}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        section("7. Cleanup")
        if rc == 1 and lab.nodes:
            lab.logs_dir = Path(tempfile.mkdtemp(prefix="clever-demo-logs-"))
        say("Stopping every process of the lab and removing its namespaces, mounts and loop devices.")
        left = close(lab)
    if left:
        print("demo failed: the lab left behind:\n  " + "\n  ".join(left), file=sys.stderr)
        return 1
    say("Nothing is left: no namespace, mount, loop device or process of the demo.")
    if rc == 130:
        print("demo interrupted; everything it started is cleaned up", file=sys.stderr)
        return rc
    if rc:
        print(f"demo failed: {failure}", file=sys.stderr)
        if lab.logs_dir is not None:
            print(f"the lab's logs, configurations and transition log are in {lab.logs_dir}", file=sys.stderr)
        return rc
    section(f"demo finished in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
