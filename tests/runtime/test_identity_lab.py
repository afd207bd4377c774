"""The identity check on the two-node lab: the active loses power just as the standby's check runs.

The standby's daemon restarts (its fence devices are checked at start) and the
active's machine is powered off through its BMC right after. The check reads
the machine OFF while the active still counts as heard (it does for a
heartbeat timeout after its last datagram). That reading used to disable the
standby's only fence device until a reload, and the standby never took over.
Now the reading is settled once the peer-loss detection time has passed, and
the failover must complete with a fence record.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab

from .cluster import OVERRIDES, cli_json, holds_all, other, wait_active, wait_code

pytestmark = [pytest.mark.root, pytest.mark.slow]

# A peer that has just lost power counts as heard for this long: wide enough that the standby's
# start check (three BMC sessions) reads the machine inside that window even on a loaded machine.
HEARTBEAT_TIMEOUT = "4s"


def test_active_powered_off_as_the_standby_restarts_still_fails_over(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides={**OVERRIDES, "heartbeat": {"timeout": HEARTBEAT_TIMEOUT}})
    dead = wait_active(lab)
    survivor = other(lab, dead)
    wait_code(survivor, "no_action_secondary")
    device = f"bmc-{dead.name}"

    def identity() -> str | None:
        return next((d["identity"] for d in cli_json(survivor, "status")["fencing"]["devices"] if d["name"] == device), None)

    # The standby has proven its device (ON while the peer is heard), as in production before a restart.
    wait_for(lambda: identity() == "verified", 60, f"{device} verified on {survivor.name}", interval=0.2)
    acked = dead.write()["id"]
    lab.mark("restart the standby's daemon, then power off the active through its BMC")
    survivor.stop_daemon()
    survivor.start_daemon()
    r = lab.ipmi(survivor.index, dead.index, "chassis", "power", "off")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: holds_all(lab, survivor.name), 120, "the survivor holds everything", interval=0.2)
    recs = cli_json(survivor, "status")["fencing"]["records"]
    assert recs and recs[-1]["kind"] == "device" and recs[-1]["devices"] == [device], recs
    assert identity() != "mismatch"
    # Whether this run's start check landed inside the window depends on the machine's load (it did in
    # most runs here; the journal says "fell silent" when it did). The path itself is proven
    # deterministically with the real BMC emulator in tests/fencing/test_fault_sequences.py
    # (test_an_off_reading_while_a_dying_peer_still_counts_as_heard_is_not_a_lasting_mismatch);
    # here the outcome must hold either way: the failover completes with a device record.
    assert survivor.write()["ok"] and acked
    lab.check()
