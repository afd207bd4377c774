"""The daemon's asyncio runtime: lifecycle, the decision tick, reload and shutdown.

Lifecycle: ``run(shutdown)`` starts the control socket, announces READY,
then runs the tick loop until the injected ``shutdown`` event is set; it then
stops in named, logged phases (each bounded by a timeout) and releases what
it started in reverse order, collecting errors instead of stopping at the
first one.

Invariants:
- The loop never blocks; a cycle that overran ``policy.stall_threshold`` is
  counted as a stall and does not feed the systemd watchdog.
- A reload that fails validation, or that changes a setting needing a
  restart, keeps the old configuration and logs why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, cast

from . import config as config_mod
from . import logsetup
from .control import Caller, ControlError, ControlServer, Handler, socket_path
from .heartbeat import Announce, HeartbeatError, HeartbeatService, NodeReport
from .heartbeat.keys import KeyProblem
from .heartbeat.model import PHASES, Phase
from .heartbeat.service import next_grid, sleep_until
from .notify import Notifier

log = logsetup.get("daemon.runtime")

VERSION = "0.1.0"
SHUTDOWN_PHASE_TIMEOUT = 10.0
EXIT_RESTART = 75  # the unit has RestartForceExitStatus=75: systemd starts the daemon again


class Runtime:
    def __init__(self, config_path: Path, cfg: config_mod.Config, notifier: Notifier | None = None) -> None:
        self.config_path = Path(config_path).resolve()
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.phase = "STARTING"
        self.verdict = "starting"
        self.loop_lag = 0.0
        self.stalls = 0
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error: list[str] = []
        self._shutdown: asyncio.Event | None = None
        self._control: ControlServer | None = None
        self.heartbeat: HeartbeatService | None = None
        self.announce = Announce(kind="leaving")  # what the peer is told at the stop

    # ------------------------------------------------------------------ control

    def handlers(self) -> Mapping[str, Handler]:
        return {
            "status": self._cmd_status,
            "reload": self._cmd_reload,
            "ping": self._cmd_ping,
            "shutdown": self._cmd_shutdown,
        }

    async def _cmd_ping(self, args: Mapping[str, Any], caller: Caller) -> Any:
        return {"pong": True}

    async def _cmd_status(self, args: Mapping[str, Any], caller: Caller) -> Any:
        return self.status()

    async def _cmd_shutdown(self, args: Mapping[str, Any], caller: Caller) -> Any:
        restart = args.get("restart", False)
        if not isinstance(restart, bool):
            raise ControlError("restart must be true or false", "bad_request")
        self.request_stop(restart=restart)
        log.info("%s requested by %s", "daemon restart" if restart else "daemon stop", caller.describe())
        return {"stopping": True, "announce": self.announce.kind, "expected": self.announce.expected}

    def request_stop(self, *, restart: bool) -> None:
        """Stop the daemon; the peer is told ``restarting`` (back within heartbeat.restart_announce) or ``leaving``."""
        if restart:
            self.announce = Announce(kind="restarting", expected=self.cfg.heartbeat.restart_announce)
        if self._shutdown is not None:
            self._shutdown.set()

    def _report(self) -> NodeReport:
        """This node's report for the heartbeat. The skeleton knows only its phase."""
        return NodeReport(phase=cast(Phase, self.phase) if self.phase in PHASES else "STARTING")

    async def _cmd_reload(self, args: Mapping[str, Any], caller: Caller) -> Any:
        ok, problems = self.reload()
        if not ok:
            raise ControlError("reload refused; the old configuration stays in force", "reload_failed", problems)
        return {"reloaded": True}

    def status(self) -> dict[str, Any]:
        c = self.cfg.cluster
        return {
            "node": c.node,
            "peer": c.peer,
            "cluster": c.name,
            "phase": self.phase,
            "verdict": self.verdict,
            "pid": os.getpid(),
            "version": VERSION,
            "uptime_seconds": round(time.monotonic() - self.started_mono, 3),
            "started_at": self.started_wall,
            "config_path": str(self.config_path),
            "settings_fingerprint": config_mod.safety_fingerprint(self.cfg),
            "loop_lag_seconds": round(self.loop_lag, 6),
            "loop_stalls": self.stalls,
            "reloads": {"ok": self.reloads_ok, "failed": self.reloads_failed, "last_error": self.last_reload_error},
            "heartbeat": self.heartbeat.status() if self.heartbeat is not None else None,
        }

    # ------------------------------------------------------------------ reload

    def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file. Returns (applied, problems)."""
        self.notifier.reloading()
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as e:
            self._reload_failed(e.problems)
            return False, e.problems
        blocked = config_mod.restart_only_changes(self.cfg, new)
        if blocked:
            problems = [f"{k}: changing this needs a restart (systemctl restart clever-clusterd)" for k in blocked]
            self._reload_failed(problems)
            return False, problems
        if self.heartbeat is not None:
            try:
                self.heartbeat.reload(new)
            except KeyProblem as e:
                self._reload_failed([str(e)])
                return False, [str(e)]
        changed = config_mod.changed_sections(self.cfg, new)
        if new.log != self.cfg.log:
            logsetup.setup(new.log.level, new.log.target)
        self.cfg = new
        self.reloads_ok += 1
        self.last_reload_error = []
        log.info("configuration reloaded from %s; changed: %s", self.config_path, ", ".join(changed) or "nothing")
        self.notifier.reloaded(self.verdict)
        return True, []

    def _reload_failed(self, problems: list[str]) -> None:
        self.reloads_failed += 1
        self.last_reload_error = problems
        log.error(
            "reload refused, keeping the running configuration: %s",
            "; ".join(problems),
            extra={"fields": {"CLEVER_REASON": "reload_refused"}},
        )
        self.notifier.reloaded(self.verdict)

    # ------------------------------------------------------------------ main

    async def run(self, shutdown: asyncio.Event) -> int:
        self._shutdown = shutdown
        cfg = self.cfg
        try:
            # First: the new incarnation is on disk before anything else happens.
            self.heartbeat = HeartbeatService.open(cfg, self._report)
        except HeartbeatError as e:
            log.error("cannot start the heartbeat: %s", e)
            return 1
        self._control = ControlServer(socket_path(cfg.cluster.runtime_dir), self.handlers(), cfg.cluster.control_group)
        try:
            await self._control.start()
        except (OSError, RuntimeError, KeyError) as e:
            log.error("cannot open the control socket: %s", e)
            return 1
        heartbeat = self.heartbeat
        await heartbeat.start()
        log.info(
            "clever-clusterd %s started: node %s, peer %s, cluster %s, config %s",
            VERSION, cfg.cluster.node, cfg.cluster.peer, cfg.cluster.name, self.config_path,
        )
        self.verdict = f"{cfg.cluster.node}: starting, waiting to hear {cfg.cluster.peer}"
        self.notifier.ready(self.verdict)
        tick_task = asyncio.create_task(self._tick_loop(), name="tick")
        try:
            await shutdown.wait()
        finally:
            await self._stop([
                ("stop decision loop", lambda: _cancel(tick_task)),
                (f"announce {self.announce.kind} to {cfg.cluster.peer}, stop heartbeats", lambda: heartbeat.stop(self.announce)),
                ("close control socket", self._control.close),
            ])
        return EXIT_RESTART if self.announce.kind == "restarting" else 0

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # On the heartbeat's time grid: one wakeup serves the tick and the senders.
            expected = next_grid(loop.time(), self.cfg.policy.tick)
            await sleep_until(expected)
            now = loop.time()
            self.loop_lag = max(0.0, now - expected)
            if self.loop_lag > self.cfg.policy.stall_threshold:
                self.stalls += 1
                log.warning("event loop stalled for %.3f s (threshold %.3f s)", self.loop_lag, self.cfg.policy.stall_threshold)
                continue
            self.cycle()
            self.notifier.cycle_done(loop.time())
            self.notifier.status(self.verdict)

    def cycle(self) -> None:
        """One observe-decide-act cycle. The skeleton has nothing to decide yet."""

    async def _stop(self, phases: list[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
        log.info("shutting down")
        self.notifier.stopping(f"{self.cfg.cluster.node}: stopping")
        errors: list[str] = []
        for name, action in phases:
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(action(), SHUTDOWN_PHASE_TIMEOUT)
                log.info("shutdown: %s done in %.3f s", name, time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - collect and go on releasing
                errors.append(f"{name}: {e!r}")
                log.error("shutdown: %s failed: %r", name, e)
        if errors:
            log.error("shutdown finished with %d error(s)", len(errors))
        else:
            log.info("shutdown complete")


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def install_signal_handlers(runtime: Runtime, shutdown: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, shutdown.set)
    loop.add_signal_handler(signal.SIGINT, shutdown.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload)
