"""A fake watchdog driver for tests: every call becomes a line in a file.

The test reads the file (or a FIFO) to see what the guard did to the device:
``open``, ``timeout 60``, ``keepalive``, ``magic``, ``close``. The options
and the timeout the "driver" reads back are chosen by the test.
"""

from __future__ import annotations

from pathlib import Path

from clever_cluster.fencing.watchdog import WDIOF_KEEPALIVEPING, WDIOF_MAGICCLOSE, WDIOF_SETTIMEOUT


class FileWatchdog:
    def __init__(self, path: Path, *, options: int = WDIOF_SETTIMEOUT | WDIOF_MAGICCLOSE | WDIOF_KEEPALIVEPING,
                 nowayout: bool = False, round_timeout: int = 0, identity: str = "fake watchdog") -> None:
        self.path = Path(path)
        self._options = options
        self._nowayout = nowayout
        self._round = round_timeout
        self._identity = identity
        self._open = False

    def _log(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def open(self) -> None:
        self._open = True
        self._log("open")

    def options(self) -> int:
        return self._options

    def identity(self) -> str:
        return self._identity

    def nowayout(self) -> bool:
        return self._nowayout

    def set_timeout(self, seconds: int) -> int:
        actual = seconds + self._round
        self._log(f"timeout {actual}")
        return actual

    def keepalive(self) -> None:
        assert self._open
        self._log("keepalive")

    def magic_close(self) -> None:
        self._log("magic")
        self.close()

    def close(self) -> None:
        if self._open:
            self._log("close")
        self._open = False

    def lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
