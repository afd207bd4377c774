"""The console in a real headless browser (Debian's chromium) against real daemons."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon.console import actions, auth
from clever_cluster.sim import configgen
from clever_cluster.sim.consoleproc import ConsoleProcess
from clever_cluster.sim.harness import DaemonProcess, wait_for

from .browser import chromium, screenshot, text_of, wait_until
from .test_process import both_alive

pytestmark = pytest.mark.slow
PASSWORD = "a console passphrase"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Path, DaemonProcess, DaemonProcess, ConsoleProcess]]:
    pw = tmp_path / "console.password"
    pw.write_text(auth.make_hash(PASSWORD, log2_n=10) + "\n")
    pw.chmod(0o600)
    c1, c2 = configgen.write_pair(tmp_path / "lab", overrides={"console": {"password_file": str(pw)}})
    d1, d2 = DaemonProcess(c1).start(), DaemonProcess(c2).start()
    con = ConsoleProcess(c1, interval=0.2)
    try:
        wait_for(lambda: both_alive(c1, c2), 20, "both daemons to hear each other")
        con.start()
        yield c1, d1, d2, con
    finally:
        con.stop()
        d1.stop()
        d2.stop()


def disabled(driver: Any, action: str) -> bool:
    return bool(driver.execute_script(f"return document.querySelector('button[data-action={action}]').disabled"))


def card(driver: Any, node: str) -> str:
    return text_of(driver, f"#node-{node}")


def test_the_page_shows_both_nodes_and_follows_them_without_a_reload(lab: tuple[Path, DaemonProcess, DaemonProcess, ConsoleProcess]) -> None:
    _c1, _d1, d2, con = lab
    with chromium() as b:
        b.get(con.url + "/")
        wait_until(b, lambda b: "online" in card(b, "node2") and card(b, "node1"), 15, "both node cards")
        assert "this node" in card(b, "node1") and "phase STARTING" in card(b, "node1")
        assert "hb" not in text_of(b, "#section-links") and "lo1" in text_of(b, "#section-links")
        assert "Read-only" not in text_of(b, "#actions-note") and "Log in" in text_of(b, "#actions-note")
        screenshot(b, "console-two-daemons.png")
        b.execute_script("window.__sameDocument = 'yes'")
        # node2 stops. These daemons have no DRBD to observe, so it announces no clean leave (it could
        # not say what it holds): node1 loses it after the heartbeat timeout, and the page says so.
        d2.signal(signal.SIGTERM)
        wait_until(b, lambda b: "offline" in card(b, "node2"), 20, "node2 shown as offline")
        assert b.execute_script("return window.__sameDocument") == "yes"  # the live view, not a reload
        d2.start()
        wait_until(b, lambda b: "online" in card(b, "node2"), 20, "node2 back online")
        assert b.execute_script("return window.__sameDocument") == "yes"


def test_on_a_phone_nothing_is_cut_off(lab: tuple[Path, DaemonProcess, DaemonProcess, ConsoleProcess]) -> None:
    con = lab[3]
    with chromium(390, 844) as b:
        b.get(con.url + "/")
        wait_until(b, lambda b: "online" in card(b, "node2"), 15, "node2 online")
        assert b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        xs = b.execute_script("return [...document.querySelectorAll('#nodes .card')].map(c => Math.round(c.getBoundingClientRect().x))")
        assert len(xs) == 2 and len(set(xs)) == 1  # one column: the cards stack
        screenshot(b, "console-phone.png")


def test_login_and_an_action_with_its_confirmation_in_the_page(lab: tuple[Path, DaemonProcess, DaemonProcess, ConsoleProcess]) -> None:
    _c1, _d1, _d2, con = lab
    with chromium() as b:
        b.get(con.url + "/")
        wait_until(b, lambda b: "online" in card(b, "node2"), 15, "node2 online")
        assert disabled(b, "cleanup")  # locked until login
        b.find_element("id", "password").send_keys("wrong password")
        b.find_element("id", "login").click()
        wait_until(b, lambda b: "wrong password" in text_of(b, "#toast"), 10, "the refusal")
        b.find_element("id", "password").send_keys(PASSWORD)
        b.find_element("id", "login").click()
        wait_until(b, lambda b: not disabled(b, "cleanup"), 10, "actions unlocked")
        assert "logged in" in text_of(b, "#auth-state")
        b.find_element("css selector", 'button[data-action="cleanup"]').click()
        wait_until(b, lambda b: b.find_element("id", "confirm").is_displayed(), 10, "the confirmation")
        assert text_of(b, "#confirm-title") == "Cleanup?"
        assert text_of(b, "#confirm-text") == actions.fixed_sentence(actions.BY_NAME["cleanup"], None, ["node1", "node2"], None)
        b.find_element("id", "confirm-cancel").click()
        wait_until(b, lambda b: not b.find_element("id", "confirm").is_displayed(), 5, "the dialog to close")
        b.find_element("css selector", 'button[data-action="cleanup"]').click()
        wait_until(b, lambda b: b.find_element("id", "confirm").is_displayed(), 10, "the confirmation again")
        b.find_element("id", "confirm-ok").click()
        # The daemon's own answer reaches the operator.
        wait_until(b, lambda b: "fail counts of every VM cleared on both nodes" in text_of(b, "#toast"), 10, "the daemon's answer")
        screenshot(b, "console-action.png")
    assert "console action cleanup from 127.0.0.1" in con.log()
