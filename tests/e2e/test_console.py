"""The web console on the full two-node lab with the wired daemons.

- A migrate clicked in a real browser moves the resources.
- A console stopped (SIGSTOP) or killed (SIGKILL) leaves the daemon's
  heartbeats and decisions as they were.

The console runs as its own process beside the active node, reading that
node's control socket (``migrate`` bans the node whose daemon receives it,
as ``clevervm migrate`` typed there does); Debian's chromium drives the
page. The move is checked three ways: ``clevervm status --json`` on both
nodes, the lab's transition log (which node holds DRBD, the mount, the IP
and the VMs), and the page itself, without a reload. The screenshots go to
``test-artifacts/``; docs/console.png is one of them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from clever_cluster.daemon.console import auth
from clever_cluster.sim.consoleproc import ConsoleProcess
from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab
from clever_cluster.sim.nodelab.node import LabNode
from tests.console.browser import chromium, screenshot, text_of, wait_until
from tests.runtime.cluster import OVERRIDES, after_decisions, cli_json, holds_all, other, wait_active, wait_code

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
        wait_until(br, lambda d: text_of(d, "#timeline-title").startswith("handover (giving)")
                   and text_of(d, "#timeline-title").endswith("handed over"), 30, "the finished handover timeline")
        assert "granted → peer_active" in text_of(br, "#timeline-legend")
        wait_until(br, lambda d: not d.find_element("id", "toast").is_displayed(), 20, "the answer to fade")
        screenshot(br, "console-lab-after.png", whole_page=True)
    lab.check()


# --------------------------------------------------------------------------- a stalled or killed console


def watchers(url: str, n: int, stop: threading.Event) -> list[threading.Thread]:
    """Browsers holding live views open (each reads its event stream until told to stop)."""
    def watch() -> None:
        while not stop.is_set():
            try:
                with httpx.stream("GET", url + "/api/events", timeout=httpx.Timeout(3.0)) as r:
                    for _line in r.iter_lines():
                        if stop.is_set():
                            return
            except httpx.HTTPError:
                time.sleep(0.1)

    threads = [threading.Thread(target=watch, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def quick_status(n: LabNode) -> dict[str, Any]:
    """Straight from the daemon's control socket with a 2 s deadline: a daemon held up by the console fails this."""
    st: dict[str, Any] = n.control("status", timeout=2.0)
    return st


def sent(st: dict[str, Any]) -> int:
    return sum(int(ln["sent"]) for ln in st["heartbeat"]["links"])


def assert_daemon_carries_on(n: LabNode, peer: LabNode, before: dict[str, Any], what: str) -> dict[str, Any]:
    """``n`` keeps sending and hearing heartbeats and deciding, without a stall or a change of decision, while ``what``."""
    loop0 = before["daemon"]["loop"]
    # 60 heartbeats on two links at 100 ms (3 s) and 30 decision cycles: a daemon that waited for the console would do neither.
    wait_for(lambda: sent(quick_status(n)) >= sent(before) + 60 and quick_status(n)["daemon"]["loop"]["cycles"] >= loop0["cycles"] + 30,
             30, f"{n.name} to send 60 heartbeats and decide 30 times while {what}", interval=0.2)
    st = quick_status(n)
    loop = st["daemon"]["loop"]
    assert st["heartbeat"]["last_heard_mono"] > before["heartbeat"]["last_heard_mono"], f"{n.name} heard nothing while {what}"
    assert (loop["stalls"], loop["errors"]) == (loop0["stalls"], loop0["errors"]), loop
    assert loop["lag_seconds"] < 0.5, loop  # below policy.stall_threshold: not a stall
    # The same decision, taken at the same time: it did not change even for one cycle.
    assert (st["decision"]["code"], st["decision"]["since"]) == (before["decision"]["code"], before["decision"]["since"])
    assert st["heartbeat"]["state"] == "alive" and st["heartbeat"]["event_counts"].get("peer_lost", 0) == 0
    assert quick_status(peer)["heartbeat"]["event_counts"].get("peer_lost", 0) == 0
    return st


def test_a_stopped_or_killed_console_leaves_the_daemon_unaffected(make_nodelab: Callable[..., NodeLab], tmp_path: Path) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    active = wait_active(lab, 90)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary", 60)
    # Polling ten times a second, with four live views open: always a request in flight when it stops.
    con = ConsoleProcess(active.config, interval=0.1, log_path=tmp_path / "console.log").start()
    stop = threading.Event()
    threads = watchers(con.url, 4, stop)
    try:
        wait_for(lambda: con.get("/api/view")["summary"]["active"] == active.name, 20, "the console to show the active node")
        after_decisions(active, 20)  # past the start-up's busy seconds
        before = quick_status(active)
        assert before["decision"]["code"] == "no_action_primary"
        con.signal(signal.SIGSTOP)
        st = assert_daemon_carries_on(active, standby, before, "the console is stopped")
        con.signal(signal.SIGCONT)
        seq = con.get("/api/status")["seq"]
        wait_for(lambda: con.get("/api/status")["seq"] > seq + 3, 10, "the console to poll again after SIGCONT")
        con.signal(signal.SIGKILL)
        assert con.proc is not None and con.proc.wait(5) == -signal.SIGKILL
        assert_daemon_carries_on(active, standby, st, "the console is killed")
    finally:
        stop.set()
        con.stop()
        for t in threads:
            t.join(5)
    lab.check()
