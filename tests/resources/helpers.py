"""Small in-test parts for the resource tests: a DRBD stand-in for the DrbdControl
contract (the real adapter is tested against the DRBD simulator by its own
issue), recording steps with injectable faults, a settable gate, a fake clock,
thin proxies that inject faults into real libvirt connections, and a filesystem that hangs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from clever_cluster.daemon.resources.base import ResourceError, StepContext


class SimDrbd:
    """Satisfies DrbdControl: a role that promote/demote change, with refusals on demand."""

    def __init__(self, log: list[tuple[str, str]] | None = None) -> None:
        self.current = "Secondary"
        self.refuse_promote = False
        self.refuse_demote = False
        self.log = log if log is not None else []

    async def promote(self) -> None:
        self.log.append(("promote", "drbd"))
        if self.refuse_promote:
            raise RuntimeError("1: State change failed: (-2) Need access to UpToDate data")
        self.current = "Primary"

    async def demote(self) -> None:
        self.log.append(("demote", "drbd"))
        if self.refuse_demote:
            raise RuntimeError("1: State change failed: (-12) Device is held open by someone")
        self.current = "Secondary"

    async def role(self) -> str:
        return self.current


class Gate:
    """A gate whose token stays valid until ``stale`` is set (or it is told to go stale after N checks)."""

    def __init__(self) -> None:
        self.stale: str | None = None
        self.checks = 0
        self.stale_after: int | None = None

    def __call__(self, token: Hashable) -> str | None:
        self.checks += 1
        if self.stale_after is not None and self.checks > self.stale_after:
            return "grant g1 was withdrawn"
        return self.stale


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class FakeStep:
    """A step that records what it was asked to do; faults are switched on per test."""

    name: str
    log: list[tuple[str, str]]
    clock: FakeClock | None = None
    start_cost: float = 0.0
    fail_start: bool = False
    stop_failures: int = 0  # the next N stops fail
    stop_attempts: int = 1
    block_start: asyncio.Event | None = None
    hang_start: bool = False
    budget: float = 5.0
    started: bool = False

    def start_budget(self) -> float:
        return self.budget

    def stop_budget(self) -> float:
        return self.budget

    async def start(self, ctx: StepContext) -> None:
        self.log.append(("start", self.name))
        if self.clock is not None:
            self.clock.now += self.start_cost
        if self.block_start is not None:
            await self.block_start.wait()
        if self.hang_start:
            await asyncio.Event().wait()
        if self.fail_start:
            raise ResourceError(f"{self.name} refused to start (injected)")
        ctx.check_gate()
        self.started = True

    async def stop(self, ctx: StepContext) -> None:
        self.log.append(("stop", self.name))
        if self.stop_failures > 0:
            self.stop_failures -= 1
            raise ResourceError(f"{self.name} refused to stop (injected)")
        self.started = False


# --------------------------------------------------------------------------- libvirt fault injection


class ConnProxy:
    """Wraps a real libvirt connection; domains it hands out go through ``DomProxy``."""

    def __init__(self, conn: Any, faults: DomainFaults) -> None:
        self._conn, self._faults = conn, faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def lookupByName(self, name: str) -> Any:
        return DomProxy(self._conn.lookupByName(name), self._faults)

    def listAllDomains(self, flags: int = 0) -> Any:
        hold = self._faults.hold_list
        if hold is not None:
            self._faults.list_held.set()
            hold.wait(30)
        return self._conn.listAllDomains(flags)

    def restore(self, path: str) -> int:
        if self._faults.slow_restore:
            time.sleep(self._faults.slow_restore)
        return int(self._conn.restore(path))


class DomProxy:
    def __init__(self, dom: Any, faults: DomainFaults) -> None:
        self._dom, self._faults = dom, faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dom, name)

    def create(self) -> int:
        name = self._dom.name()
        with self._faults.in_create():
            self._faults.entered.append(name)
            try:
                delay = self._faults.slow_create.get(name, 0.0)
                if delay:
                    time.sleep(delay)
                hold = self._faults.hold_create.get(name)
                if hold is not None:
                    hold.wait(30)  # a libvirt that is stuck on this domain, until the test lets it go
                return int(self._dom.create())
            finally:
                self._faults.finished.append(name)

    def shutdown(self) -> int:
        if self._dom.name() in self._faults.ignore_shutdown:
            self._faults.shutdowns_ignored.append(self._dom.name())
            return 0  # accepted, and ignored, like a guest without ACPI
        return int(self._dom.shutdown())


class DomainFaults:
    """Counts concurrent create() calls; each waits (up to 5 s) until ``hold_until`` are in flight at
    once or all ``expected`` calls have begun, so the bound is reached whenever it can be."""

    def __init__(self, hold_until: int = 0, expected: int = 0) -> None:
        self.hold_until = hold_until
        self.expected = expected  # how many create() calls the test will make
        self.started = 0
        self.ignore_shutdown: set[str] = set()
        self.slow_create: dict[str, float] = {}
        self.hold_create: dict[str, threading.Event] = {}
        self.hold_list: threading.Event | None = None  # listAllDomains waits for it while set
        self.list_held = threading.Event()  # a listAllDomains call is waiting on hold_list
        self.slow_restore = 0.0
        self.entered: list[str] = []  # create() calls begun, by domain
        self.finished: list[str] = []  # ... and ended
        self.shutdowns_ignored: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._cond = threading.Condition()

    def opener(self, real: Callable[[str], Any]) -> Callable[[str], Any]:
        return lambda uri: ConnProxy(real(uri), self)

    class _Guard:
        def __init__(self, outer: DomainFaults) -> None:
            self.o = outer

        def __enter__(self) -> None:
            o = self.o
            with o._cond:
                o.in_flight += 1
                o.started += 1
                o.max_in_flight = max(o.max_in_flight, o.in_flight)
                o._cond.notify_all()
                deadline = time.monotonic() + 5.0
                # Hold until enough are in flight at once, unless no more will come.
                while o.in_flight < o.hold_until and o.started < o.expected and time.monotonic() < deadline:
                    o._cond.wait(deadline - time.monotonic())

        def __exit__(self, *exc: object) -> None:
            with self.o._cond:
                self.o.in_flight -= 1

    def in_create(self) -> DomainFaults._Guard:
        return DomainFaults._Guard(self)


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` on the event loop until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- a filesystem that stops answering


class HungFilesystem:
    """A real FUSE mount whose server answers the kernel's INIT and then nothing: every lookup in it
    blocks (as on a network filesystem whose server died) until :meth:`release` aborts the
    connection, after which calls fail with ENOTCONN. No FUSE library: /dev/fuse and mount(8)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = threading.Event()  # a request is waiting for an answer that never comes
        self.released = False
        self._fd = os.open("/dev/fuse", os.O_RDWR)
        opts = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0"
        subprocess.run(["mount", "-t", "fuse", "-o", opts, "hung", str(path)], pass_fds=(self._fd,), check=True)
        threading.Thread(target=self._serve, name="hung-fuse", daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            buf = os.read(self._fd, (1 << 20) + 4096)
            unique = struct.unpack_from("<IIQ", buf)[2]  # len, opcode (FUSE_INIT), unique
            # fuse_init_out: protocol 7.31, max_background 16, congestion 12, max_write 4096, time_gran 1, max_pages 1
            body = struct.pack("<IIIIHHIIHHI28x", 7, 31, 0, 0, 16, 12, 4096, 1, 1, 0, 0)
            os.write(self._fd, struct.pack("<IiQ", 16 + len(body), 0, unique) + body)
            os.read(self._fd, (1 << 20) + 4096)  # the first real request: never answered
            self.pending.set()

    def release(self) -> None:
        if not self.released:
            self.released = True
            os.close(self._fd)  # aborts the connection: blocked calls return ENOTCONN

    def close(self) -> None:
        self.release()
        subprocess.run(["umount", str(self.path)], check=False)
