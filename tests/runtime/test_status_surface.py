"""`clevervm status` as operators see it, through the real CLI on the two-node lab.

One lab: the plain text of both nodes, `--json` on every read verb, a table
of bad arguments (one line on stderr, the documented exit code, never a
traceback), every key of the live status documented in docs/status-schema.md,
then the daemon stopped (the standby, SIGTERM) and killed (the active,
SIGKILL): `status` exits 3 under the "daemon not running" banner with what
the node itself holds, in text and in JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from clever_cluster.sim.nodelab.lab import NodeLab

from .cluster import OVERRIDES, other, wait_active, wait_code
from .schema_doc import undocumented

pytestmark = [pytest.mark.root, pytest.mark.slow]

# (arguments, exit code, what stderr says); run on the active node with its daemon up.
BAD_ARGUMENTS: list[tuple[tuple[str, ...], int, str]] = [
    (("bogus",), 2, "invalid choice: 'bogus'"),
    (("status", "--nope"), 2, "unrecognized arguments: --nope"),
    (("maintenance", "maybe"), 2, "invalid choice: 'maybe'"),
    (("maintenance",), 2, "arguments are required: state"),
    (("history", "--decisions", "0"), 2, "0 is not from 1 to 200"),
    (("history", "--decisions", "x"), 2, "not a whole number"),
    (("migrate", "--lifetime", "5q"), 2, "not a duration"),
    (("migrate", "--lifetime", "9000h"), 1, "at most a year"),
    (("fence",), 2, "arguments are required: node"),
    (("fence", "nodeX"), 1, "fences the peer: type its name (node"),
    (("standby", "nodeX"), 1, "unknown node 'nodeX'"),
    (("unstandby", "nodeX"), 1, "unknown node 'nodeX'"),
    (("confirm-fenced", "nodeX"), 1, "is not the peer's"),
    (("cleanup", "nosuchvm"), 1, "nosuchvm is not a managed VM"),
    (("split-brain", "--resolve"), 2, "--resolve needs --victim"),
    (("split-brain", "--resolve", "--victim", "nodeX", "--yes", "nodeX"), 1, "--victim must be"),
    (("--socket", "/nonexistent/control.sock", "why"), 3, "daemon not running"),
]


def test_status_text_json_errors_and_daemon_down(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    a, s = active.name, standby.name

    # Plain text, from both sides.
    r = active.cli("status")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = r.stdout
    for want in [f"Cluster labcluster, node {a} (peer {s})", f"Active node: {a} (this node holds DRBD Primary",
                 f"Node {a}: online  phase PRIMARY", f"Node {s}: online  phase SECONDARY",
                 "res_drbd Primary  res_Filesystem Started  res_IPaddr Started  plc1 running  plc2 running",
                 "Inactive resources: none", f"Fail counts: {a} none; {s} none",
                 "DRBD storage: r0 Connected Primary/Secondary UpToDate/UpToDate", "DRBD settings: safe",
                 ": mounted here  size ", "Name: plc1 State: running Managed save: no", "Floating IP 192.168.100.50/24 on eth0: here",
                 "gateway score 1/1", "link hb0  up ", "link hb1  up ", f"acknowledged by {s}",
                 f"level 1 bmc-{s} (ipmi 192.168.100.", "Bans and standby: none", ", identical on both nodes", "Epoch: 1@",
                 "Predicted failover: worst case "]:
        assert want in text, f"{want!r} missing from:\n{text}"
    text = standby.cli("status").stdout
    assert f"Active node: {a} ({a} reports phase PRIMARY" in text and ": not mounted here" in text
    assert "Floating IP 192.168.100.50/24 on eth0: not here" in text
    assert "Name: plc1 State: shutoff Managed save: unknown (filesystem not mounted here)" in text

    # --json on every read verb; the exit codes are the documented ones.
    for verb, code in (("status", 0), ("why", 0), ("history", 0), ("split-brain", 0), ("check", 1)):
        r = active.cli(verb, "--json", timeout=120)
        assert r.returncode == code, (verb, r.returncode, r.stderr)
        got = json.loads(r.stdout)
        assert isinstance(got, dict) and got, verb
        if verb in ("status", "why", "history"):
            assert got["schema"] == 1 and got["node"] == a, verb

    # Every key of the live status is in docs/status-schema.md.
    for n in (active, standby):
        assert undocumented(n.status()) == [], n.name

    # Bad arguments and wrong nodes: one line, the documented exit code, nothing on stdout, no traceback.
    for args, code, says in BAD_ARGUMENTS:
        r = active.cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == code and len(lines) == 1 and says in lines[0] and lines[0].startswith("clevervm"), (args, r.returncode, r.stderr)
        assert r.stdout == "" and "Traceback" not in r.stderr, (args, r.stdout)

    # The standby's daemon stopped cleanly: exit 3, what the standby holds (nothing).
    assert standby.stop_daemon() == 0
    r = standby.cli("status")
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("*** daemon not running") and "daemon not running (no control socket" in r.stderr
    for want in ["DRBD r0: role Secondary, connection Connected, disks UpToDate/UpToDate", "ext4: not mounted here",
                 "Floating IP 192.168.100.50/24: not here", "Name: plc1 State: shutoff", "Name: plc2 State: shutoff"]:
        assert want in r.stdout, f"{want!r} missing from:\n{r.stdout}"

    # The active's daemon killed: the resources run on; status shows them from the node itself.
    active.kill_daemon()
    r = active.cli("status")
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("*** daemon not running")
    for want in ["DRBD r0: role Primary, connection Connected, disks UpToDate/UpToDate", "ext4: mounted here  size ",
                 "Floating IP 192.168.100.50/24: here", "Name: plc1 State: running Managed save: no",
                 "Name: plc2 State: running Managed save: no"]:
        assert want in r.stdout, f"{want!r} missing from:\n{r.stdout}"
    assert "tools" not in r.stdout  # unmanaged domains are not the cluster's
    r = active.cli("status", "--json")
    assert r.returncode == 3
    got = json.loads(r.stdout)
    assert got["daemon_running"] is False and got["node"] == a and got["unreachable"]
    assert got["drbd"]["role"] == "Primary" and got["filesystem"]["mounted"] is True and got["ip"]["present"] is True
    assert got["libvirt"]["vms"] == {"plc1": "running", "plc2": "running"}
    assert got["filesystem"]["usage"]["size_bytes"] > 0
    lab.check()
