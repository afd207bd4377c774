"""The optional local hardware watchdog: a self-fence backstop, off by default.

It never confirms the peer: nothing in the coordinator reads it. What it does:
- :meth:`SelfFenceGuard.arm` opens the device (opening arms it), sets the
  configured timeout and reads back what the driver chose; it refuses (and
  disarms again) a driver that only raises an alarm, a driver that cannot
  be stopped only by the magic character (no ``WDIOF_MAGICCLOSE``) unless it
  was loaded with ``nowayout`` (otherwise a crashed daemon's implicit close
  would silently stop it), a timeout that reads back larger than configured,
  and a timeout that does not outlast a daemon restart.
- :meth:`SelfFenceGuard.feed_once` pings the device only while the policy
  says this node is entitled to the resources it holds (a node that holds
  nothing is entitled to nothing, and so is trivially entitled). An isolated
  active node stops feeding and is reset by the hardware.
- :meth:`SelfFenceGuard.stop` writes the magic character only on a clean
  shutdown with no resources held; otherwise the watchdog stays armed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("clever_cluster.fencing.watchdog")

WDIOF_SETTIMEOUT = 0x0080
WDIOF_MAGICCLOSE = 0x0100
WDIOF_ALARMONLY = 0x0400
WDIOF_KEEPALIVEPING = 0x8000


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("W") << 8) | nr


_READ, _WRITE = 2, 1
WDIOC_GETSUPPORT = _ioc(_READ, 0, 40)
WDIOC_KEEPALIVE = _ioc(_READ, 5, 4)
WDIOC_SETTIMEOUT = _ioc(_READ | _WRITE, 6, 4)
WDIOC_GETTIMEOUT = _ioc(_READ, 7, 4)


class WatchdogRefused(Exception):
    """The watchdog cannot be used safely; the message says why and what to do."""


class WatchdogDriver(Protocol):
    def open(self) -> None: ...
    def options(self) -> int: ...
    def identity(self) -> str: ...
    def nowayout(self) -> bool: ...
    def set_timeout(self, seconds: int) -> int: ...
    def keepalive(self) -> None: ...
    def magic_close(self) -> None: ...
    def close(self) -> None: ...


class _WatchdogInfo(ctypes.Structure):
    _fields_ = [("options", ctypes.c_uint32), ("firmware_version", ctypes.c_uint32), ("identity", ctypes.c_uint8 * 32)]


class LinuxWatchdog:
    """/dev/watchdog through the kernel's watchdog ioctl API."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            hint = (" (another process holds it: systemd RuntimeWatchdogSec=, sbd or watchdog(8)?)" if e.errno == errno.EBUSY else "")
            raise WatchdogRefused(f"cannot open {self.path}: {e.strerror}{hint}") from None

    def _ioctl(self, req: int, arg: ctypes._SimpleCData[int] | ctypes.Structure) -> None:
        assert self._fd is not None
        fcntl.ioctl(self._fd, req, arg, True)

    def _info(self) -> _WatchdogInfo:
        info = _WatchdogInfo()
        self._ioctl(WDIOC_GETSUPPORT, info)
        return info

    def options(self) -> int:
        return int(self._info().options)

    def identity(self) -> str:
        return bytes(self._info().identity).split(b"\0", 1)[0].decode(errors="replace")

    def nowayout(self) -> bool:
        name = self.path.name if self.path.name != "watchdog" else "watchdog0"
        try:
            return (Path("/sys/class/watchdog") / name / "nowayout").read_text().strip() == "1"
        except OSError:
            return False

    def set_timeout(self, seconds: int) -> int:
        val = ctypes.c_int(seconds)
        self._ioctl(WDIOC_SETTIMEOUT, val)
        return int(val.value)

    def keepalive(self) -> None:
        assert self._fd is not None
        os.write(self._fd, b"\0")

    def magic_close(self) -> None:
        assert self._fd is not None
        os.write(self._fd, b"V")
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SelfFenceGuard:
    def __init__(self, driver: WatchdogDriver, timeout: float, entitled: Callable[[], bool], *,
                 restart_allowance: float = 20.0, interval: float | None = None) -> None:
        self.driver = driver
        self.timeout = timeout
        self.entitled = entitled
        self.restart_allowance = restart_allowance
        self.interval = interval if interval is not None else max(1.0, timeout / 3)
        self.armed = False
        self.actual_timeout: int | None = None
        self.feeding = False
        self._disarm_on_refusal = True

    def arm(self, *, disarm_on_refusal: bool = True) -> None:
        """Open and configure the device; raises WatchdogRefused.

        On a refusal the device is disarmed (magic close) only when
        ``disarm_on_refusal``: a daemon restarted while this node holds
        resources passes False, so a refusal leaves the watchdog as the
        previous daemon armed it (it resets the node unless fixed) instead of
        silently removing the backstop under running resources.
        """
        if self.timeout <= self.restart_allowance:
            raise WatchdogRefused(f"watchdog.timeout {self.timeout:g}s must exceed a daemon restart ({self.restart_allowance:g}s), "
                                  "or a restart would reset the node")
        self.driver.open()
        self._disarm_on_refusal = disarm_on_refusal
        try:
            opts = self.driver.options()
            ident = self.driver.identity()
            if opts & WDIOF_ALARMONLY:
                raise WatchdogRefused(f"watchdog {ident!r} only raises an alarm; it cannot reset this node")
            if not opts & WDIOF_MAGICCLOSE and not self.driver.nowayout():
                raise WatchdogRefused(f"watchdog {ident!r} stops on any close (no magic close): a crashed daemon would disarm it; "
                                      "load its driver with nowayout=1")
            if not opts & WDIOF_SETTIMEOUT:
                raise WatchdogRefused(f"watchdog {ident!r} cannot set its timeout")
            # Whole seconds at or below the configured timeout: the node resets no later than configured.
            actual = self.driver.set_timeout(math.floor(self.timeout))
            if actual > self.timeout:
                raise WatchdogRefused(f"watchdog {ident!r} chose a timeout of {actual}s, above the configured {self.timeout:g}s")
            if actual <= self.restart_allowance:
                raise WatchdogRefused(f"watchdog {ident!r} chose a timeout of {actual}s, too short to outlast a daemon restart")
        except WatchdogRefused:
            self._disarm()
            raise
        except OSError as e:
            self._disarm()
            raise WatchdogRefused(f"watchdog setup failed: {e.strerror or e}") from None
        self.actual_timeout = actual
        self.armed = True
        log.info("hardware watchdog %s armed, timeout %ss", ident, actual)

    def _disarm(self) -> None:
        with contextlib.suppress(OSError):
            if self._disarm_on_refusal:
                self.driver.magic_close()
            else:
                self.driver.close()

    def feed_once(self) -> bool:
        """Ping the device if this node is entitled to what it holds; returns whether it fed."""
        if not self.armed:
            return False
        if self.entitled():
            self.driver.keepalive()
            if not self.feeding:
                log.info("watchdog: feeding")
            self.feeding = True
            return True
        if self.feeding:
            log.warning("watchdog: this node is no longer entitled to its resources; stopped feeding, reset in %ss", self.actual_timeout,
                        extra={"fields": {"CLEVER_REASON": "watchdog_starved"}})
        self.feeding = False
        return False

    async def run(self) -> None:
        """Feed on the event loop (a blocked loop must not be masked by a helper thread)."""
        while True:
            self.feed_once()
            await asyncio.sleep(self.interval)

    def stop(self, *, clean: bool, holds_resources: bool) -> str:
        """Close the device: disarm only on a clean shutdown with no resources."""
        if not self.armed:
            return "not armed"
        self.armed = False
        if clean and not holds_resources:
            self.driver.magic_close()
            return "disarmed"
        self.driver.close()
        return f"left armed: the node resets within {self.actual_timeout}s unless clever-clusterd opens it again"
