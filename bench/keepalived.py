"""Floating-IP takeover after a power loss: keepalived (VRRP) next to clever-cluster, on the same lab topology.

Runs, as root, in one command (Debian's ``keepalived`` package, scripts/apt-packages.txt):

    .venv/bin/python bench/keepalived.py            # 10 power losses each: VRRP advert 1 s, 0.1 s, clever-cluster
    .venv/bin/python bench/keepalived.py --runs 1   # a quick check

Topology: ``sim.nodelab`` (two node namespaces, the LAN bridge in the
gateway namespace, the floating address 192.168.100.50/24 on eth0).

- keepalived: a lab without the cluster daemons; each node runs
  ``keepalived --vrrp`` with one VRRP instance on eth0 (VRRP version 3, so
  that 0.1 s adverts are allowed; node1 priority 200, node2 100; the VIP is
  the lab's floating address). node1 is the master; one run powers it off
  the lab's way (links down, then every process of the node killed), the
  backup takes the address; node1 is powered back on, its keepalived
  started again, and it takes the address back (preemption) before the next
  run. Runs with ``advert_int`` 1 s, then 0.1 s.
- clever-cluster: a lab with the daemons (fence delay 0, the peer's BMC
  reads OFF), the active node powered off the same way; the survivor
  fences, promotes DRBD, mounts and adds the address.

Measured the same way for both: the monotonic time just before the power
loss -> the floating address appearing on the survivor's eth0, seen by an
``ip monitor address`` started in the survivor's namespace before the run
(netlink events, stamped on arrival; no polling). The ratio is
clever-cluster's median over keepalived's, per advert interval.

keepalived moves only the address (it neither fences the old master nor
promotes storage); clever-cluster moves the address only after the peer is
confirmed off and DRBD is Primary and mounted here. The comparison is the
price of that safety on this topology, not a like-for-like race.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import labbench as lb

VIP = "192.168.100.50"
CC_OVERRIDES: dict[str, dict[str, Any]] = {
    "fencing": {"priority_delay": "0s", "random_delay": "0s", "after": "off"}, "gateway": {"dampen": "1s"}}
KEEPALIVED_CONF = """global_defs {{
    router_id {node}
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_instance VI_1 {{
    state {state}
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {vip}/24 dev eth0
    }}
}}
"""


class AddressWatch:
    """``ip monitor address`` in a namespace; the monotonic time at which ``VIP`` was first added after start."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(["ip", "-o", "-n", ns, "monitor", "address"], stdout=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.added: float | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.2)  # the netlink subscription is in place (ip opens it before it prints anything)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if f" {VIP}/" in line and not line.startswith("Deleted") and self.added is None:
                self.added = time.monotonic()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def has_vip(node: lb.LabNode) -> bool:
    r = subprocess.run(["ip", "-o", "-n", node.ns, "addr", "show", "dev", "eth0"], capture_output=True, text=True, check=False)
    return f" {VIP}/" in r.stdout


class Keepalived:
    """One keepalived per node of a lab without daemons (started by PID, ended by PID)."""

    def __init__(self, lab: lb.NodeLab, work: Path, advert: float) -> None:
        self.lab, self.work, self.advert = lab, work, advert
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int) -> None:
        old = self.procs.pop(i, None)
        if old is not None:  # killed with its node: reap it, or keepalived takes the zombie's PID file for a running daemon
            old.kill()
            old.wait(10)
        n = self.lab.node(i)
        d = self.work / f"keepalived-{self.advert:g}-{n.name}"
        d.mkdir(parents=True, exist_ok=True)
        for f in ("keepalived.pid", "vrrp.pid"):
            (d / f).unlink(missing_ok=True)
        conf = d / "keepalived.conf"
        conf.write_text(KEEPALIVED_CONF.format(node=n.name, state="MASTER" if i == 1 else "BACKUP",
                                               priority=200 if i == 1 else 100, advert=f"{self.advert:g}", vip=VIP))
        argv = [*n.prefix(), "keepalived", "--vrrp", "--dont-fork", "--log-console", "--no-syslog", "-f", str(conf),
                "-p", str(d / "keepalived.pid"), "-r", str(d / "vrrp.pid"), "-i", n.name]
        with open(d / "keepalived.log", "ab") as log:
            self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.lab.track(self.procs[i].pid, "keepalived", n.name)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        self.procs.clear()


def keepalived_runs(work: Path, advert: float, runs: int) -> list[float]:
    samples = []
    rng = random.Random(1)
    with lb.lab(work, f"keepalived-{advert:g}", daemons=False) as lab:
        ka = Keepalived(lab, work, advert)
        try:
            ka.start(1)
            ka.start(2)
            master, backup = lab.node(1), lab.node(2)
            for k in range(1, runs + 1):
                lb.wait_for(lambda: has_vip(master) and not has_vip(backup), 60, "node1 holds the address alone", interval=0.05)
                # The backup has heard the master's adverts for a while; the random part puts the power loss at
                # any phase of the advert cycle (the backup's master-down timer restarts at each advert).
                time.sleep(3 * advert + 0.5 + rng.uniform(0, advert))
                watch = AddressWatch(backup.ns)
                try:
                    t0 = lab.mark(f"advert {advert:g}, run {k}: power off the master")
                    lab.power_off(1)
                    lb.wait_for(lambda w=watch: w.added is not None, 30, "the backup to add the address", interval=0.01)
                finally:
                    watch.close()
                assert watch.added is not None
                samples.append(watch.added - t0)
                print(f"  keepalived advert {advert:g} s, run {k}/{runs}: {samples[-1]:.3f} s", file=sys.stderr)
                lab.power_on(1)
                ka.start(1)
        finally:
            ka.stop()
    return samples


def clever_runs(work: Path, runs: int) -> list[float]:
    samples = []
    with lb.lab(work, "clever-cluster", overrides=CC_OVERRIDES) as lab:
        for k in range(1, runs + 1):
            active, standby = lb.steady(lab)
            watch = AddressWatch(standby.ns)
            try:
                t0 = lab.mark(f"clever-cluster run {k}: power off {active.name}")
                lab.power_off(active.index)
                lb.wait_for(lambda w=watch: w.added is not None, 120, f"{standby.name} to add the address", interval=0.01)
            finally:
                watch.close()
            assert watch.added is not None
            samples.append(watch.added - t0)
            print(f"  clever-cluster run {k}/{runs}: {samples[-1]:.3f} s", file=sys.stderr)
            lb.wait_for(lambda s=standby: lb.holds_all(lab, s.name), 120, "the survivor holds everything", interval=0.05)
            lab.power_on(active.index)
            lb.wait_code(active, "no_action_secondary", 180)
        lab.check()
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="power losses per setup (default 10)")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    if shutil.which("keepalived") is None:
        print("bench/keepalived.py needs keepalived (apt-get install keepalived; scripts/apt-packages.txt)", file=sys.stderr)
        return 2
    work = lb.setup("keepalived")
    version = subprocess.run(["keepalived", "--version"], capture_output=True, text=True, check=False)
    res: dict[str, Any] = {"command": lb.command(), "machine_before": lb.machine(),
                           "keepalived_version": (version.stderr or version.stdout).splitlines()[0]}
    samples = {"keepalived advert 1 s": keepalived_runs(work, 1.0, args.runs),
               "keepalived advert 0.1 s": keepalived_runs(work, 0.1, args.runs),
               "clever-cluster (fence delay 0)": clever_runs(work, args.runs)}
    res["machine_after"] = lb.machine()
    res["samples"] = samples
    res["summary"] = {k: lb.summary(v) for k, v in samples.items()}
    cc = res["summary"]["clever-cluster (fence delay 0)"]["median"]
    res["ratio_clever_to_keepalived"] = {k: cc / v["median"] for k, v in res["summary"].items() if k.startswith("keepalived")}
    print(f"\ncommand: {res['command']}  ({res['keepalived_version']})")
    print(f"load average before {res['machine_before']['loadavg']}, after {res['machine_after']['loadavg']}")
    print("| setup | power off -> floating IP on the survivor | clever-cluster / this |\n|---|---|---|")
    for k, v in res["summary"].items():
        ratio = res["ratio_clever_to_keepalived"].get(k)
        print(f"| {k} | {lb.fmt(v)} | {f'{ratio:.1f}x' if ratio else ''} |")
    lb.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
