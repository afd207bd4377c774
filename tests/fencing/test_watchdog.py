"""The local watchdog guard against a fake device that logs to a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from clever_cluster.fencing.watchdog import (
    WDIOC_GETSUPPORT,
    WDIOC_GETTIMEOUT,
    WDIOC_KEEPALIVE,
    WDIOC_SETTIMEOUT,
    WDIOF_ALARMONLY,
    WDIOF_KEEPALIVEPING,
    WDIOF_SETTIMEOUT,
    SelfFenceGuard,
    WatchdogRefused,
)
from clever_cluster.sim.fakewatchdog import FileWatchdog


def test_ioctl_numbers_match_linux_watchdog_h() -> None:
    # Values from include/uapi/linux/watchdog.h compiled on x86_64 (reference/fencing.md 5.1).
    assert (WDIOC_GETSUPPORT, WDIOC_KEEPALIVE, WDIOC_SETTIMEOUT, WDIOC_GETTIMEOUT) == (0x80285700, 0x80045705, 0xC0045706, 0x80045707)


def test_feeding_stops_when_entitlement_is_lost(tmp_path: Path) -> None:
    dev = FileWatchdog(tmp_path / "wd")
    entitled = [True]
    g = SelfFenceGuard(dev, 60, lambda: entitled[0])
    g.arm()
    assert dev.lines() == ["open", "timeout 60"]
    assert g.feed_once() and g.feed_once()
    entitled[0] = False
    assert not g.feed_once() and not g.feed_once()
    assert dev.lines()[2:] == ["keepalive", "keepalive"]
    entitled[0] = True
    assert g.feed_once() and dev.lines()[-1] == "keepalive"


def test_refuses_a_timeout_read_back_larger_than_configured(tmp_path: Path) -> None:
    dev = FileWatchdog(tmp_path / "wd", round_timeout=4)
    g = SelfFenceGuard(dev, 60, lambda: True)
    with pytest.raises(WatchdogRefused, match="64s, above the configured 60s"):
        g.arm()
    assert dev.lines()[-2:] == ["magic", "close"]  # disarmed again
    assert not g.feed_once()


def test_a_refusal_while_resources_are_held_leaves_the_watchdog_armed(tmp_path: Path) -> None:
    """A daemon restarted while this node holds resources must not remove the backstop the previous
    daemon armed: the refusal closes the device without the magic character."""
    dev = FileWatchdog(tmp_path / "wd", round_timeout=4)
    g = SelfFenceGuard(dev, 60, lambda: True)
    with pytest.raises(WatchdogRefused):
        g.arm(disarm_on_refusal=False)
    assert dev.lines()[-1] == "close" and "magic" not in dev.lines()
    assert not g.armed


def test_refuses_a_driver_without_magic_close_unless_nowayout(tmp_path: Path) -> None:
    opts = WDIOF_SETTIMEOUT | WDIOF_KEEPALIVEPING
    with pytest.raises(WatchdogRefused, match="nowayout"):
        SelfFenceGuard(FileWatchdog(tmp_path / "a", options=opts), 60, lambda: True).arm()
    g = SelfFenceGuard(FileWatchdog(tmp_path / "b", options=opts, nowayout=True), 60, lambda: True)
    g.arm()
    assert g.armed


def test_refuses_alarm_only_and_a_timeout_shorter_than_a_restart(tmp_path: Path) -> None:
    with pytest.raises(WatchdogRefused, match="only raises an alarm"):
        SelfFenceGuard(FileWatchdog(tmp_path / "a", options=WDIOF_ALARMONLY | 0x180), 60, lambda: True).arm()
    dev = FileWatchdog(tmp_path / "b")
    with pytest.raises(WatchdogRefused, match=r"exceed a daemon restart"):
        SelfFenceGuard(dev, 15, lambda: True, restart_allowance=20).arm()
    assert dev.lines() == []  # refused before the device was even opened


def test_magic_close_only_on_clean_shutdown_without_resources(tmp_path: Path) -> None:
    for clean, holds, expect_magic in ((True, False, True), (True, True, False), (False, False, False), (False, True, False)):
        dev = FileWatchdog(tmp_path / f"wd-{clean}-{holds}")
        g = SelfFenceGuard(dev, 60, lambda: True)
        g.arm()
        outcome = g.stop(clean=clean, holds_resources=holds)
        assert ("magic" in dev.lines()) == expect_magic, (clean, holds)
        assert dev.lines()[-1] == "close"
        assert outcome.startswith("disarmed" if expect_magic else "left armed")
