#!/usr/bin/env python3
"""Record the real output of every `clevervm` verb on the two-node lab into docs/operations.md.

Usage (root; about two minutes): ``.venv/bin/python scripts/sample-outputs.py [--check]``

Brings up ``sim.nodelab`` (two real daemons, the DRBD simulator, an ext4 loop
device, libvirt's test driver, IPMI BMC emulators), runs an operator's day
(status, why, check, start/stop, forcestop/forcestart, cleanup, migrate,
standby, maintenance, refusals, the daemon down, a power loss of the active
node and its failover), and replaces each block between
``<!-- sample NAME -->`` and ``<!-- /sample -->`` in docs/operations.md with
the command and what it printed (stdout, then stderr, then the exit code when
it is not 0). The lab's temporary directory is shown as ``/lab``.

Invariants: the document is only written when every sample was recorded (a
block in the document with no sample, or a sample with no block, is an
error and nothing is written); ``--check`` records and reports without
writing. The lab's timings and waits are those of the tests and the demo
(``sim/nodelab/drive.py``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.drive import OVERRIDES, holds_all, other, wait_active, wait_code
from clever_cluster.sim.nodelab.lab import NodeLab
from clever_cluster.sim.nodelab.node import LabNode

ROOT = Path(__file__).resolve().parents[1]

DOC = ROOT / "docs" / "operations.md"
# The lab's short timings; the fenced node stays off (fencing.after = "off"): the lab boots a node in about
# a second, which would cut the failover's timeline short with an election (real machines boot in minutes).
LAB = {**OVERRIDES, "fencing": {**OVERRIDES["fencing"], "after": "off"}}
BLOCK = re.compile(r"(<!-- sample (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /sample -->)", re.S)


class Recorder:
    def __init__(self, lab: NodeLab) -> None:
        self.lab = lab
        self.samples: dict[str, str] = {}

    def run(self, name: str, node: LabNode, *args: str, timeout: float = 120.0, role: str = "") -> str:
        r = node.cli(*args, timeout=timeout)
        out = r.stdout.rstrip("\n")
        err = r.stderr.rstrip("\n")
        where = f"{node.name}{', ' + role if role else ''}"
        text = f"{where}# clevervm {' '.join(args)}\n{out}"
        if err:
            text += ("\n" if out else "") + err
        if r.returncode:
            text += f"\n(exit code {r.returncode})"
        text = text.replace(str(self.lab.workdir), "/lab")
        self.samples[name] = text.replace("\n\n", "\n")
        print(f"--- {name}\n{text}\n", flush=True)
        return out


def scenario(lab: NodeLab) -> dict[str, str]:
    rec = Recorder(lab)
    a = wait_active(lab)
    s = other(lab, a)
    wait_code(s, "no_action_secondary")
    time.sleep(2)  # a few heartbeat rounds, so loss and RTT have values
    rec.run("status-active", a, "status", role="active")
    rec.run("status-standby", s, "status", role="standby")
    rec.run("status-json", a, "status", "--json", role="active")
    rec.samples["status-json"] = "\n".join(rec.samples["status-json"].splitlines()[:40]) + "\n  ... (the whole document: docs/status-schema.md)"
    rec.run("why-active", a, "why", role="active")
    rec.run("why-standby", s, "why", role="standby")
    rec.run("check", a, "check", role="active")

    rec.run("stop-standby", s, "stop", role="standby")
    rec.run("stop", a, "stop", role="active")
    wait_for(lambda: all(a.vm_states()[v] for v in ("plc1", "plc2")), 60, "VMs brought back", interval=0.2)
    rec.run("start", a, "start", role="active")
    rec.run("forcestop", s, "forcestop", role="standby")
    wait_for(lambda: not any(a.vm_states()[v] for v in ("plc1", "plc2")), 60, "VMs saved", interval=0.2)
    time.sleep(1)
    rec.run("status-forcestopped", a, "status", role="active")
    rec.run("forcestart", a, "forcestart", role="active")
    wait_for(lambda: all(a.vm_states()[v] for v in ("plc1", "plc2")), 60, "VMs restored", interval=0.2)
    rec.run("cleanup", s, "cleanup", "plc1", role="standby")
    rec.run("maintenance-on", a, "maintenance", "on", role="active")
    rec.run("maintenance-off", s, "maintenance", "off", role="standby")

    rec.run("migrate", a, "migrate", "--lifetime", "30m", role="active")
    wait_for(lambda: holds_all(lab, s.name), 90, "the handover", interval=0.2)
    wait_active(lab)
    a, s = s, a
    time.sleep(1)
    rec.run("status-banned", a, "status", role="active")
    rec.run("history-handover", a, "history", "--decisions", "8", role="active")
    rec.run("unmigrate", s, "unmigrate", role="standby")
    rec.run("migrate-standby", s, "migrate", role="standby")
    rec.run("unmigrate-again", a, "unmigrate", role="active")
    rec.run("standby", s, "standby", role="standby")
    rec.run("unstandby", a, "unstandby", s.name, role="active")

    rec.run("fence-refused", a, "fence", s.name, role="active")
    rec.run("confirm-fenced-refused", a, "confirm-fenced", s.name, role="active")
    rec.run("unblock", a, "unblock", role="active")
    rec.run("split-brain", a, "split-brain", role="active")
    rec.run("bad-node", a, "standby", "nodeX", role="active")
    rec.run("bad-usage", a, "maintenance", "maybe", role="active")
    rec.run("reload", a, "reload", role="active")
    rec.run("daemon-restart", s, "daemon-restart", role="standby")
    wait_for(lambda: s.daemon is None or not s.daemon.alive(), 60, "the daemon to exit for its restart", interval=0.2)
    s.start_daemon()  # systemd does this (RestartForceExitStatus=75)
    wait_code(s, "no_action_secondary", timeout=90)

    s.stop_daemon()
    rec.run("status-daemon-down", s, "status", role="standby, daemon stopped")
    s.start_daemon()
    wait_code(s, "no_action_secondary", timeout=90)

    # The restarted daemon's fence device identity check must have run while the peer was up: a power-off
    # within the heartbeat timeout of that check makes it latch MISMATCH (reported to the fencing owner).
    wait_for(lambda: all(d["identity"] == "verified" for d in s.status()["fencing"]["devices"]), 60, "the identity verified",
             interval=0.2)
    # A power loss of the active node through its BMC: the standby fences and takes over.
    r = lab.ipmi(s.index, a.index, "chassis", "power", "off")
    if r.returncode:
        raise RuntimeError(f"the BMC did not power {a.name} off: {r.stderr}")
    try:
        wait_for(lambda: holds_all(lab, s.name), 120, "the failover", interval=0.2)
    except Exception:
        print(s.cli("why").stdout, s.cli("status").stdout, lab.timeline(), sep="\n", file=sys.stderr)
        raise
    time.sleep(1)
    rec.run("status-after-failover", s, "status", role="survivor")
    rec.run("history-failover", s, "history", "--decisions", "10", role="survivor")
    lab.check()
    return rec.samples


def write(samples: dict[str, str], check: bool) -> int:
    text = DOC.read_text()
    names = [m.group("name") for m in BLOCK.finditer(text)]
    missing_block = sorted(set(samples) - set(names))
    missing_sample = sorted(set(names) - set(samples))
    if missing_block or missing_sample:
        print(f"sample-outputs: no block in {DOC.name} for {missing_block}; no sample for the blocks {missing_sample}", file=sys.stderr)
        return 1
    stamp = time.strftime("%Y-%m-%d")

    def fill(m: re.Match[str]) -> str:
        return f"{m.group(1)}```text\n{samples[m.group('name')]}\n```\n{m.group(4)}"

    new = BLOCK.sub(fill, text)
    new = re.sub(r"(Samples recorded on the lab on )\S+( by scripts/sample-outputs\.py)", rf"\g<1>{stamp}\g<2>", new)
    if check:
        print("sample-outputs: every block has its sample (not written: --check)")
        return 0
    DOC.write_text(new)
    print(f"sample-outputs: {len(samples)} samples written to {DOC}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="record, but do not write the document")
    p.add_argument("--logs", type=Path, help="keep the lab's logs and transition log here")
    args = p.parse_args()
    with NodeLab(args.logs, overrides=LAB) as lab:
        samples = scenario(lab)
    return write(samples, args.check)


if __name__ == "__main__":
    sys.exit(main())
