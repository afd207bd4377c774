"""The web console on the full two-node lab: a migrate clicked in a real browser moves the resources.

The console runs as its own process beside the active node, reading that
node's control socket; chromium drives the page. The move is checked three ways: the
daemons' ``clevervm status --json``, the lab's transition log (which node
holds DRBD, the mount and the VMs), and the page itself, without a reload.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon.console import auth, view
from clever_cluster.sim.consoleproc import ConsoleProcess
from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab
from tests.console.browser import chromium, screenshot, text_of, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]
PASSWORD = "a console passphrase"
REPO = Path(__file__).resolve().parents[2]


def active_in_status(st: dict[str, Any]) -> str | None:
    """The active node as the daemon's status document says it (read by the console's view model)."""
    active: str | None = view.build({"status": st, "fetched_at": 0.0})["summary"]["active"]
    return active


def holder(lab: NodeLab) -> str | None:
    """The node that holds DRBD Primary and a managed VM according to the transition log, if exactly one does."""
    now = lab.active()
    holding = [n for n, held in now.items() if any(h.startswith("role") for h in held) and any(h.startswith("vm") for h in held)]
    return holding[0] if len(holding) == 1 else None


def test_migrate_clicked_in_the_page_moves_the_resources(make_nodelab: Callable[..., NodeLab], tmp_path: Path) -> None:
    pw = tmp_path / "console.password"
    pw.write_text(auth.make_hash(PASSWORD, log2_n=10) + "\n")
    pw.chmod(0o600)
    lab = make_nodelab(overrides={"console": {"password_file": str(pw)}})
    lab.wait_connected()
    n1 = lab.node(1)
    if "schema" not in n1.status():
        pytest.skip("the daemon on this branch is main's skeleton (no status schema, no migrate): waits for the runtime of issue 8")
    first = wait_for(lambda: holder(lab), 90, "one node to hold the resources")
    assert wait_for(lambda: active_in_status(n1.status()), 30, "node1's status to name the active node") == first
    other = "node2" if first == "node1" else "node1"
    # The console of the active node: migrate bans the node whose daemon receives it (as clevervm migrate there).
    here = lab.node(int(first[-1]))
    with ConsoleProcess(here.config, interval=0.2, log_path=tmp_path / "console.log") as con, chromium() as b:
        b.get(con.url + "/")
        wait_until(b, lambda b: "ACTIVE" in text_of(b, f"#node-{first}") and "online" in text_of(b, f"#node-{other}"), 20,
                   f"{first} shown active")
        b.find_element("id", "password").send_keys(PASSWORD)
        b.find_element("id", "login").click()
        wait_until(b, lambda b: not b.execute_script("return document.querySelector('button[data-action=migrate]').disabled"), 10,
                   "migrate unlocked")
        screenshot(b, "console-lab-before.png")
        b.execute_script("window.__sameDocument = 'yes'")
        b.find_element("css selector", "button[data-action=migrate]").click()
        wait_until(b, lambda b: b.find_element("id", "confirm").is_displayed(), 10, "the confirmation")
        assert other in text_of(b, "#confirm-text")
        b.find_element("id", "confirm-ok").click()
        # The daemons say so (clevervm status --json on both nodes), and the transition log shows it.
        wait_for(lambda: active_in_status(lab.node(1).status()) == other == active_in_status(lab.node(2).status()), 120,
                 f"both daemons to report {other} active")
        wait_for(lambda: holder(lab) == other, 60, f"{other} to hold DRBD and the VMs")
        # The page follows without a reload.
        wait_until(b, lambda b: "ACTIVE" in text_of(b, f"#node-{other}") and "ACTIVE" not in text_of(b, f"#node-{first}"), 20,
                   f"the page to show {other} active")
        assert b.execute_script("return window.__sameDocument") == "yes"
        wait_until(b, lambda b: text_of(b, "#timeline-title") not in ("", "not available"), 20, "the handover timeline")
        shot = screenshot(b, "console-lab-after.png")
        shutil.copy(shot, tmp_path / shot.name)
    lab.check()
