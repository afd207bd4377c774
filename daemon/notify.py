"""sd_notify: READY, STATUS, WATCHDOG and STOPPING for systemd ``Type=notify``.

The watchdog ping is sent only by :meth:`Notifier.cycle_done`, which the main
loop calls after a decision cycle that completed in time; a wedged loop
therefore stops pinging and systemd restarts the daemon. A notification
socket that is gone is logged once and counted, never raised.
"""

from __future__ import annotations

import logging
import os

from systemd import daemon as sd_daemon

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog_interval = int(usec) / 1e6
            except ValueError:
                self.watchdog_interval = None
        self._last_ping = float("-inf")
        self._last_status = ""
        self.send_errors = 0

    def _send(self, text: str) -> None:
        # systemd's own sd_notify() ignores a socket that is gone (systemd restarted, or the daemon
        # run by hand with a stale NOTIFY_SOCKET): a notification is never worth the daemon's life.
        if not self.enabled:
            return
        try:
            sd_daemon.notify(text)
        except OSError as e:
            self.send_errors += 1
            if self.send_errors == 1:
                log.warning("sd_notify to %s failed (%s); further failures are counted, not logged",
                            os.environ.get("NOTIFY_SOCKET", "?"), e)

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._send(f"STATUS={text}")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def reloaded(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def cycle_done(self, now: float, status: str | None = None, *, in_time: bool = True) -> bool:
        """After a cycle: ping the watchdog if the cycle was ``in_time`` and half its period has passed,
        and carry a changed ``status`` in the same message. Returns True when the watchdog was pinged."""
        parts = []
        ping = in_time and self.watchdog_interval is not None and now - self._last_ping >= self.watchdog_interval / 2
        if ping:
            self._last_ping = now
            parts.append("WATCHDOG=1")
        if status is not None and status != self._last_status:
            self._last_status = status
            parts.append(f"STATUS={status}")
        if parts:
            self._send("\n".join(parts))
        return ping
