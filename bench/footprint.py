"""Footprint benchmark: idle RSS and CPU of one daemon, and of the whole stack per node, on the two-node lab.

Runs the real daemons on ``sim.nodelab`` (as root):

    .venv/bin/python bench/footprint.py                       # 10 windows of 6 s
    .venv/bin/python bench/footprint.py --runs 1 --window 2   # a quick check

The cluster is idle: one node active (DRBD Primary, mounted, IP, two VMs on
libvirt's test driver), the other the standby, nothing happening but the
heartbeat (100 ms), the gateway pings (1 s), the decision tick (100 ms) and
the observers. For each window, every process in each node's namespace is
measured: CPU time (utime + stime from /proc/PID/stat) over the window as a
share of one core, and RSS (VmRSS) at the end. Processes are grouped:

- ``daemon``: clever-clusterd itself (DESIGN section 12: <= 40 MB RSS and
  <= 1 % of one core), and ``daemon workers``: the processes it started
  (the fencing agents' worker, ...);
- ``drbd simulator``: stands in for the DRBD kernel module (no process in
  production: its cost here is not the product's);
- ``libvirtd``: the node's private libvirtd serving the test driver;
- ``lab only``: the harness's holder and libvirt keeper (not in production).

The baseline in the same run is a Python interpreter in the same node that
has imported the daemon's modules and sleeps: the daemon's RSS over it is
the daemon's own working state; its CPU is the cost of importing nothing
more than the code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import labbench as lb

CLK_TCK = os.sysconf("SC_CLK_TCK")
BASELINE_CODE = "import clever_cluster.daemon.runtime, clever_cluster.daemon.cli, time; print('ready', flush=True); time.sleep(3600)"


def stat(pid: int) -> tuple[int, float]:
    """(ppid, CPU seconds) of a process."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[1]), (int(f[11]) + int(f[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def groups(node: lb.LabNode, baseline_pid: int | None) -> dict[int, str]:
    """Each process in the node's namespace -> its group."""
    known: dict[int, str] = {}
    if node.daemon is not None and node.daemon.pid:
        known[node.daemon.pid] = "daemon"
    for p, name in ((node.sim.proc, "drbd simulator"), (node.lvd.proc, "libvirtd"), (node.keeper, "lab only"), (node.holder, "lab only")):
        if p is not None:
            known[p.pid] = name
    if baseline_pid is not None:
        known[baseline_pid] = "baseline interpreter"
    out: dict[int, str] = {}
    for pid in node.pids():
        try:
            chain, cur = [], pid
            while cur > 1 and cur not in known and len(chain) < 20:
                chain.append(cur)
                cur = stat(cur)[0]
        except OSError:
            continue
        g = known.get(cur, "other")
        out[pid] = g if cur == pid else ("daemon workers" if g == "daemon" else g)
    return out


def measure(lab: lb.NodeLab, window: float, baselines: dict[str, int]) -> dict[str, dict[str, dict[str, float]]]:
    """One window: {node: {group: {"cpu": share of a core, "rss_mb": MB}}}."""
    grp = {n.name: groups(n, baselines.get(n.name)) for n in lab.nodes}
    c0 = {n: {pid: stat(pid)[1] for pid in g if Path(f"/proc/{pid}").exists()} for n, g in grp.items()}
    t0 = time.monotonic()
    time.sleep(window)
    dt = time.monotonic() - t0
    out: dict[str, dict[str, dict[str, float]]] = {}
    for n, g in grp.items():
        per: dict[str, dict[str, float]] = {}
        for pid, name in g.items():
            try:
                cpu, rss = stat(pid)[1] - c0[n].get(pid, 0.0), rss_mb(pid)
            except OSError:
                continue  # ended during the window
            e = per.setdefault(name, {"cpu": 0.0, "rss_mb": 0.0, "processes": 0})
            e["cpu"] += cpu / dt
            e["rss_mb"] += rss
            e["processes"] += 1
        out[n] = per
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="measurement windows (default 10)")
    ap.add_argument("--window", type=float, default=6.0, help="seconds per window (default 6)")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    work = lb.setup("footprint")
    res: dict[str, Any] = {"command": lb.command(), "machine_before": lb.machine(), "window": args.window}
    windows = []
    with lb.lab(work, "idle", overrides={"gateway": {"dampen": "1s"}}) as lab:
        active, standby = lb.steady(lab)
        roles = {active.name: "active", standby.name: "standby"}
        base = {}
        procs = []
        for n in lab.nodes:  # the baseline interpreter, in each node
            p = subprocess.Popen([*n.prefix(), sys.executable, "-c", BASELINE_CODE], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            assert p.stdout is not None
            p.stdout.readline()
            procs.append(p)
            base[n.name] = p.pid
        try:
            time.sleep(3.0)  # past the start-up of the baseline
            for k in range(1, args.runs + 1):
                w = measure(lab, args.window, base)
                windows.append({roles[n]: v for n, v in w.items()})
                d = windows[-1]
                print(f"  window {k}/{args.runs}: daemon CPU active {d['active']['daemon']['cpu'] * 100:.2f} %, "
                      f"standby {d['standby']['daemon']['cpu'] * 100:.2f} %", file=sys.stderr)
            lb.steady(lab, 30)  # still idle and healthy at the end
        finally:
            for p in procs:
                p.kill()
                p.wait(10)
    res["machine_after"] = lb.machine()
    res["windows"] = windows
    summ: dict[str, dict[str, Any]] = {}
    for role in ("active", "standby"):
        names = sorted({g for w in windows for g in w[role]})
        summ[role] = {g: {"cpu": lb.summary([w[role][g]["cpu"] for w in windows if g in w[role]]),
                          "rss_mb": lb.summary([w[role][g]["rss_mb"] for w in windows if g in w[role]])} for g in names}
        stack = [sum(v["cpu"] for g, v in w[role].items() if g != "baseline interpreter") for w in windows]
        stack_rss = [sum(v["rss_mb"] for g, v in w[role].items() if g != "baseline interpreter") for w in windows]
        summ[role]["whole stack"] = {"cpu": lb.summary(stack), "rss_mb": lb.summary(stack_rss)}
    res["summary"] = summ
    print(f"\ncommand: {res['command']}")
    print(f"load average before {res['machine_before']['loadavg']}, after {res['machine_after']['loadavg']}")
    print(f"{args.runs} windows of {args.window:g} s; median (min-max) per window")
    print("| node | process group | CPU, % of one core | RSS, MB |\n|---|---|---|---|")
    for role in ("active", "standby"):
        for g, v in summ[role].items():
            c, r = v["cpu"], v["rss_mb"]
            print(f"| {role} | {g} | {c['median'] * 100:.2f} ({c['min'] * 100:.2f}-{c['max'] * 100:.2f}) | "
                  f"{r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f}) |")
    for role in ("active", "standby"):
        d, b = summ[role]["daemon"]["rss_mb"]["median"], summ[role]["baseline interpreter"]["rss_mb"]["median"]
        print(f"{role}: daemon RSS / baseline interpreter RSS = {d / b:.2f} ({d - b:.1f} MB of the daemon's own state)")
    lb.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
