"""Alert hooks (``[[alerts]]``): run an operator's program for each alert.

Like Pacemaker alerts and keepalived notify scripts, the program gets the
event in environment variables:

    CLEVER_ALERT_KIND        peer_lost, fenced, fence_failing, failover_done, split_brain, ...
    CLEVER_ALERT_CLUSTER     cluster name
    CLEVER_ALERT_NODE        the node that raised the alert
    CLEVER_ALERT_PEER        the other node
    CLEVER_ALERT_REASON      the decision's reason code (docs/reasons.md)
    CLEVER_ALERT_MESSAGE     the decision's sentence, with its evidence
    CLEVER_ALERT_TIMESTAMP   ISO 8601 wall-clock time (UTC) of the event
    CLEVER_ALERT_TIMESTAMP_EPOCH  the same in seconds since the epoch
    CLEVER_ALERT_SEQUENCE    per-daemon counter (gaps mean dropped events)
    CLEVER_ALERT_HOOK        the hook's name

Invariants:
- Hooks never run on, or block, the event loop: each hook has its own
  worker task and an asyncio subprocess; a hook that overruns its
  ``timeout`` is killed with its whole process group.
- Events reach one hook in order. A hook that cannot keep up loses the
  oldest queued events (counted and logged), never the daemon's memory.
- The program runs with a minimal environment (PATH, LANG and the variables
  above) and no arguments; nothing secret is passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import os
import signal
from collections.abc import Sequence

from . import logsetup
from .config import AlertConfig

log = logsetup.get("daemon.alerts")

QUEUE_LIMIT = 100
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass(frozen=True)
class AlertEvent:
    kind: str
    cluster: str
    node: str
    peer: str
    reason: str
    message: str
    wall_time: float
    sequence: int = 0

    def environment(self, hook: str) -> dict[str, str]:
        ts = datetime.datetime.fromtimestamp(self.wall_time, datetime.UTC)
        return {
            "PATH": SAFE_PATH,
            "LANG": "C.UTF-8",
            "CLEVER_ALERT_KIND": self.kind,
            "CLEVER_ALERT_CLUSTER": self.cluster,
            "CLEVER_ALERT_NODE": self.node,
            "CLEVER_ALERT_PEER": self.peer,
            "CLEVER_ALERT_REASON": self.reason,
            "CLEVER_ALERT_MESSAGE": self.message,
            "CLEVER_ALERT_TIMESTAMP": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "CLEVER_ALERT_TIMESTAMP_EPOCH": f"{self.wall_time:.3f}",
            "CLEVER_ALERT_SEQUENCE": str(self.sequence),
            "CLEVER_ALERT_HOOK": hook,
        }


@dataclasses.dataclass
class HookStats:
    runs: int = 0
    failures: int = 0
    timeouts: int = 0
    dropped: int = 0


class _Hook:
    def __init__(self, cfg: AlertConfig) -> None:
        self.cfg = cfg
        self.queue: asyncio.Queue[AlertEvent] = asyncio.Queue()
        self.stats = HookStats()
        self.task: asyncio.Task[None] | None = None

    def wants(self, event: AlertEvent) -> bool:
        return not self.cfg.kinds or event.kind in self.cfg.kinds

    def offer(self, event: AlertEvent) -> None:
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.queue.get_nowait()
            self.queue.task_done()
            self.stats.dropped += 1
            log.warning("alert hook %s is not keeping up: dropped the oldest queued event", self.cfg.name)
        self.queue.put_nowait(event)

    async def run_forever(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                await self.run_one(event)
            finally:
                self.queue.task_done()

    async def run_one(self, event: AlertEvent) -> None:
        name = self.cfg.name
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self.cfg.program),
                env=event.environment(name),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            self.stats.failures += 1
            log.error("alert hook %s: cannot run %s: %s", name, self.cfg.program, e.strerror or e)
            return
        self.stats.runs += 1
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.cfg.timeout)
        except TimeoutError:
            self.stats.timeouts += 1
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            log.error("alert hook %s: %s did not finish within %.0f s; killed", name, self.cfg.program, self.cfg.timeout)
            return
        if proc.returncode != 0:
            self.stats.failures += 1
            tail = out.decode(errors="replace").strip().splitlines()[-3:] if out else []
            log.error("alert hook %s: %s exited %s for %s%s", name, self.cfg.program, proc.returncode, event.kind,
                      (": " + " | ".join(tail)) if tail else "")


class AlertDispatcher:
    """Fans alerts out to the configured hooks."""

    def __init__(self, hooks: Sequence[AlertConfig], cluster: str, node: str, peer: str) -> None:
        self.cluster, self.node, self.peer = cluster, node, peer
        self._hooks = [_Hook(h) for h in hooks]
        self._seq = itertools.count(1)

    def start(self) -> None:
        for h in self._hooks:
            if h.task is None:
                h.task = asyncio.create_task(h.run_forever(), name=f"alert-{h.cfg.name}")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Give queued events a short chance to run, then stop the workers."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), drain_timeout)
        for h in self._hooks:
            if h.task is not None:
                h.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await h.task
                h.task = None

    async def _drain(self) -> None:
        await asyncio.gather(*(h.queue.join() for h in self._hooks if h.task is not None))

    def raise_alert(self, kind: str, reason: str, message: str, wall_time: float) -> AlertEvent:
        event = AlertEvent(kind, self.cluster, self.node, self.peer, reason, message, wall_time, next(self._seq))
        for h in self._hooks:
            if h.wants(event):
                h.offer(event)
        return event

    def stats(self) -> dict[str, HookStats]:
        return {h.cfg.name: h.stats for h in self._hooks}
