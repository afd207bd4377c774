"""The web console on the full two-node lab: a migrate clicked in a real browser moves the resources.

The console runs as its own process beside the active node, reading that
node's control socket (``migrate`` bans the node whose daemon receives it,
as ``clevervm migrate`` typed there does); Debian's chromium drives the
page. The move is checked three ways: ``clevervm status --json`` on both
nodes, the lab's transition log (which node holds DRBD, the mount, the IP
and the VMs), and the page itself, without a reload. The screenshots go to
``test-artifacts/``; docs/console.png is one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from clever_cluster.daemon.console import auth
from clever_cluster.sim.consoleproc import ConsoleProcess
from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab
from tests.console.browser import chromium, screenshot, text_of, wait_until
from tests.runtime.cluster import OVERRIDES, cli_json, holds_all, other, wait_active, wait_code

pytestmark = [pytest.mark.root, pytest.mark.slow]
PASSWORD = "a console passphrase"


def test_migrate_clicked_in_the_page_moves_the_resources(make_nodelab: Callable[..., NodeLab], tmp_path: Path) -> None:
    pw = tmp_path / "console.password"
    pw.write_text(auth.make_hash(PASSWORD, log2_n=10) + "\n")
    pw.chmod(0o600)
    lab = make_nodelab(overrides={**OVERRIDES, "console": {"password_file": str(pw)}})
    first = wait_active(lab, 90)
    second = other(lab, first)
    wait_code(second, "no_action_secondary", 60)
    a, b = first.name, second.name
    assert cli_json(first, "status")["active_node"] == a == cli_json(second, "status")["active_node"]
    with ConsoleProcess(first.config, interval=0.2, log_path=tmp_path / "console.log") as con, chromium(1200, 1500) as br:
        br.get(con.url + "/")
        wait_until(br, lambda d: "ACTIVE" in text_of(d, f"#node-{a}") and "online" in text_of(d, f"#node-{b}")
                   and "ACTIVE" not in text_of(d, f"#node-{b}"), 30, f"{a} shown active, {b} online")
        br.find_element("id", "password").send_keys(PASSWORD)
        br.find_element("id", "login").click()
        wait_until(br, lambda d: not d.execute_script("return document.querySelector('button[data-action=migrate]').disabled"), 10,
                   "migrate unlocked")
        assert f"move off {a}" in text_of(br, "button[data-action=migrate]")
        screenshot(br, "console-lab-before.png")
        br.execute_script("window.__sameDocument = 'yes'")  # gone if the page reloads
        br.find_element("css selector", "button[data-action=migrate]").click()
        wait_until(br, lambda d: d.find_element("id", "confirm").is_displayed(), 10, "the confirmation")
        assert text_of(br, "#confirm-text").startswith(f"{a} is banned, so the resources move to {b} by handover")
        assert cli_json(first, "status")["intent"]["bans"] == []  # nothing is sent before the confirmation
        br.find_element("id", "confirm-ok").click()
        # The daemon's own answer reaches the page.
        wait_until(br, lambda d: f"the resources move to {b} by handover now" in text_of(d, "#toast"), 30, "the daemon's answer")
        # The daemons say so (clevervm status --json on both nodes), and the transition log shows it.
        wait_for(lambda: cli_json(first, "status")["active_node"] == b == cli_json(second, "status")["active_node"], 120,
                 f"both daemons to report {b} active", interval=0.5)
        wait_for(lambda: holds_all(lab, b), 60, f"{b} to hold DRBD, the mount, the IP and the VMs, {a} nothing", interval=0.2)
        st = cli_json(first, "status")
        assert [(x["node"], x["active"]) for x in st["intent"]["bans"]] == [(a, True)]
        # The page follows without a reload: the new active node, the ban, and the handover timeline.
        wait_until(br, lambda d: "ACTIVE" in text_of(d, f"#node-{b}") and "ACTIVE" not in text_of(d, f"#node-{a}")
                   and "banned" in text_of(d, f"#node-{a}"), 30, f"the page to show {b} active and {a} banned")
        assert br.execute_script("return window.__sameDocument") == "yes"
        wait_until(br, lambda d: text_of(d, "#timeline-title").startswith("handover (giving)"), 30, "the handover timeline")
        screenshot(br, "console-lab-after.png", whole_page=True)
    lab.check()
