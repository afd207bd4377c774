"""The console's only way to the daemon: its control socket, asked by one poller.

:class:`DaemonLink` is an asyncio client of :mod:`..control`'s protocol (one
JSON line out, one back), with a deadline on every call. :class:`Feed` asks
for ``status`` every ``interval`` and for ``history`` every
``history_interval`` and keeps the latest answers as one snapshot that every
browser is served from.

Invariants:
- The daemon's load does not depend on how many browsers watch or how often
  they ask: only the feed polls, at a fixed rate (plus one refresh after an
  action). Browsers read the cached snapshot.
- A daemon that does not answer, answers an error or garbage becomes a
  snapshot with ``error`` set, never an exception out of the feed.
- Every call has a deadline and uses its own connection, so a daemon that
  restarts or hangs costs one timed-out call, not a wedged console.
- Deadlines use ``asyncio.timeout``, not ``wait_for``: on Python 3.11
  ``wait_for`` can swallow a cancellation that races with completion, and a
  feed that ignores its cancellation never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import logsetup
from ..control import CommandFailed, DaemonUnreachable

log = logsetup.get("console.daemonlink")

MAX_ANSWER = 8 * 1024 * 1024  # a status document with long histories stays far below this


class DaemonLink:
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    async def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        """The result of ``cmd``; raises DaemonUnreachable or CommandFailed (as ControlClient does)."""
        try:
            async with asyncio.timeout(timeout or self.timeout):
                return await self._call(cmd, args)
        except TimeoutError:
            raise DaemonUnreachable(f"no answer from the daemon within {timeout or self.timeout:g} s") from None

    async def _call(self, cmd: str, args: dict[str, Any]) -> Any:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_ANSWER)
        except FileNotFoundError:
            raise DaemonUnreachable(f"daemon not running (no control socket at {self.path})") from None
        except PermissionError:
            raise DaemonUnreachable(f"permission denied on {self.path} (run the console as root or in cluster.control_group)") from None
        except OSError as e:
            raise DaemonUnreachable(f"daemon not answering on {self.path}: {e.strerror or e}") from None
        try:
            writer.write(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        except (OSError, ValueError, asyncio.LimitOverrunError) as e:
            raise DaemonUnreachable(f"lost the connection to the daemon: {e}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if not line.endswith(b"\n"):
            raise DaemonUnreachable("the daemon closed the connection before answering")
        try:
            reply = json.loads(line)
        except ValueError:
            raise DaemonUnreachable("the daemon answered with something that is not JSON") from None
        if not isinstance(reply, dict):
            raise DaemonUnreachable("the daemon answered with something that is not a JSON object")
        if not reply.get("ok"):
            raise CommandFailed(str(reply.get("error", "failed")), str(reply.get("code", "failed")), reply.get("details"))
        return reply.get("result")


class Feed:
    """The latest status (and history) of the daemon, refreshed by one task."""

    def __init__(self, link: DaemonLink, *, interval: float = 1.0, history_interval: float = 5.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.link = link
        self.interval = interval
        self.history_interval = history_interval
        self._wall = wall
        self.seq = 0
        self.polls = 0  # status requests sent to the daemon (the console's whole load on it)
        self.snapshot: dict[str, Any] = {"seq": 0, "fetched_at": None, "status": None, "error": "not asked yet",
                                         "history": None, "history_error": "not asked yet"}
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """Refresh now (after an action), instead of at the next interval."""
        self._poke.set()

    async def wait_newer(self, seq: int, timeout: float) -> dict[str, Any]:
        """The snapshot once it is newer than ``seq``, or the current one after ``timeout``."""
        if self.seq <= seq:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await changed.wait()
        return self.snapshot

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_history = 0.0
        while True:
            want_history = self._poke.is_set() or loop.time() >= next_history
            self._poke.clear()
            await self.refresh(history=want_history)
            if want_history:
                next_history = loop.time() + self.history_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._poke.wait()

    async def refresh(self, *, history: bool = True) -> None:
        snap = dict(self.snapshot)
        self.polls += 1
        try:
            status = await self.link.call("status")
            snap["status"], snap["error"] = (status, None) if isinstance(status, dict) else (None, "the status answer is not an object")
        except (DaemonUnreachable, CommandFailed) as e:
            snap["status"], snap["error"] = None, str(e)
        if history and snap["error"] is None:
            try:
                snap["history"], snap["history_error"] = await self.link.call("history"), None
            except CommandFailed as e:
                snap["history"], snap["history_error"] = None, str(e)
            except DaemonUnreachable as e:  # keep the last history shown; the header says the daemon is late
                snap["history_error"] = str(e)
        self.seq += 1
        snap["seq"], snap["fetched_at"] = self.seq, self._wall()
        self.snapshot = snap
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
