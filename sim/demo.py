"""``make demo``: the main job on its embedded default.

Today: two real daemons on loopback addresses with a generated configuration
and key, ``clevervm status`` of both, then a clean stop. The failover
showcase (namespaces, DRBD simulator, VMs, fencing) grows here as the
runtime issue lands.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from clever_cluster.daemon.control import ControlClient, DaemonUnreachable, socket_path
from clever_cluster.sim import configgen
from clever_cluster.sim.harness import DaemonProcess, run_cli, wait_for


class DemoFailed(Exception):
    pass


def answers(d: DaemonProcess) -> bool:
    if not d.alive():
        raise DemoFailed(f"daemon {d.config.stem} exited:\n{d.log()}")
    try:
        with ControlClient(socket_path(d.config.parent / d.config.stem / "run"), timeout=1) as cl:
            return bool(cl.call("ping"))
    except DaemonUnreachable:
        return False


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="clever-demo-"))
    daemons: list[DaemonProcess] = []
    try:
        step(f"writing a two-node configuration and a fresh key under {work}")
        cfgs = configgen.write_pair(work)
        for c in cfgs:
            print(f"   {c}")
        step("starting clever-clusterd for node1 and node2 (loopback links 127.0.0.11<->12 and 127.0.0.21<->22)")
        t0 = time.monotonic()
        for c in cfgs:
            daemons.append(DaemonProcess(c).start())
        for d in daemons:
            wait_for(functools.partial(answers, d), 20, f"{d.config.stem} to answer")
        print(f"   both answering after {time.monotonic() - t0:.2f} s")
        for c in cfgs:
            step(f"clevervm status on {c.stem}")
            r = run_cli(c, "status")
            print(r.stdout.rstrip() or r.stderr.rstrip())
            if r.returncode != 0:
                return 1
        step("stopping both daemons (SIGTERM, as systemctl stop does)")
        for d in daemons:
            rc = d.stop()
            print(f"   {d.config.stem}: exit code {rc}")
            if rc != 0:
                print(d.log())
                return 1
        step("demo finished")
        return 0
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoFailed as e:
        print(f"demo failed: {e}", file=sys.stderr)
        sys.exit(1)
