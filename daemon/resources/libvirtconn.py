"""One libvirt connection for the daemon: blocking calls off the event loop, events, reconnects.

libvirt-python is blocking, so every call runs in a small thread pool of
its own (the event loop never waits on libvirt). Lifecycle events arrive
on libvirt's default event implementation, run by one thread per process,
and are handed to the asyncio loop with ``call_soon_threadsafe``.

Invariants:
- A lost connection (close callback, or a failed call on a connection that
  is no longer alive) is dropped, its callbacks deregistered so that it is
  really freed (socket, eventfd), and reopened with exponential backoff;
  meanwhile :attr:`LibvirtClient.connected` is False and every call raises
  :class:`LibvirtUnavailable` (callers report "unknown"; nothing crashes).
- Callbacks run on the event loop, never on libvirt's threads.
- A gated call (``call(fn, gate=...)``, the S1 actions) is never queued: it
  waits on the event loop until a worker is free (calls abandoned by a
  deadline keep theirs), then checks its gate and hands the job to that
  worker with nothing in between, so libvirt starts it right after the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt

from .. import logsetup
from .base import ResourceError

log = logsetup.get("daemon.resources.libvirt")

T = TypeVar("T")
Opener = Callable[[str], Any]
EventHandler = Callable[[str, int, int], None]  # domain name, event, detail

_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None


class LibvirtUnavailable(ResourceError):
    """libvirt is not connected (or the connection broke during the call)."""


def _ignore_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; errors reach us as exceptions instead."""


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once per process).

    Must happen before the first connection is opened, or that connection
    gets no events and no keepalive.
    """
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        libvirt.registerErrorHandler(_ignore_error, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


class LibvirtClient:
    def __init__(self, uri: str, *, opener: Opener | None = None, workers: int = 8,
                 backoff_min: float = 0.5, backoff_max: float = 30.0,
                 on_event: EventHandler | None = None, on_change: Callable[[], None] | None = None) -> None:
        self.uri = uri
        self._opener: Opener = opener or libvirt.open
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="libvirt")
        self._in_flight: set[Future[Any]] = set()  # call() jobs, waited for by drain()
        self._upkeep: set[Future[Any]] = set()  # open, liveness checks, close: they hold workers too
        self._in_flight_lock = threading.Lock()  # done-callbacks run on the pool's threads
        self._freed = asyncio.Event()  # a worker became free
        self._backoff_min, self._backoff_max = backoff_min, backoff_max
        self.on_event = on_event
        self.on_change = on_change
        self._conn: Any = None
        self._event_id = -1  # the lifecycle callback registered on _conn
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._connected_evt = asyncio.Event()
        self.last_error: str | None = "not connected yet"
        self.reconnects = 0
        self._gen = 0  # which connection a close callback is about

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        ensure_event_loop()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._maintain(), name=f"libvirt {self.uri}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.wrap_future(self._submit(self._upkeep, _dispose, conn, self._event_id))
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._connected_evt.wait()
        return self.connected

    # ------------------------------------------------------------------ calls

    @property
    def workers(self) -> int:
        return self._workers

    async def call(self, fn: Callable[[Any], T], *, gate: Callable[[], None] | None = None) -> T:
        """Run ``fn(connection)`` in the libvirt thread pool. libvirtError passes through unless the connection broke.

        The job is submitted before this coroutine first yields, or, with
        ``gate``, as soon as a worker is free: then ``gate()`` runs first (it
        raises to refuse, e.g. GateStale) and the job goes straight to that
        worker. If the caller is cancelled (a deadline), a job not started
        yet never starts; one already running finishes in its thread, and
        :meth:`drain` waits for it.
        """
        if gate is not None:
            await self._free_worker()
            gate()
        conn = self._conn
        if conn is None:
            raise LibvirtUnavailable(f"libvirt ({self.uri}) is not connected: {self.last_error}")
        job = self._submit(self._in_flight, fn, conn)
        try:
            return await asyncio.wrap_future(job)
        except libvirt.libvirtError as e:
            if not await asyncio.wrap_future(self._submit(self._upkeep, _alive, conn)):
                self._lost(conn, str(e))
                raise LibvirtUnavailable(f"libvirt ({self.uri}) connection lost: {e}") from e
            raise

    def _submit(self, kind: set[Future[Any]], fn: Callable[..., T], *args: Any) -> Future[T]:
        job = self._pool.submit(fn, *args)
        with self._in_flight_lock:
            kind.add(job)
        job.add_done_callback(lambda j: self._job_done(kind, j))
        return job

    def _job_done(self, kind: set[Future[Any]], job: Future[Any]) -> None:
        with self._in_flight_lock:
            kind.discard(job)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._freed.set)

    def _busy(self) -> int:
        with self._in_flight_lock:
            return len(self._in_flight) + len(self._upkeep)

    async def _free_worker(self) -> None:
        """Return (without yielding after the last check) once a worker is free for a new job."""
        while self._busy() >= self._workers:
            self._freed.clear()
            if self._busy() < self._workers:
                return  # freed between the check and the clear
            await self._freed.wait()

    async def drain(self, timeout: float) -> bool:
        """Wait until no libvirt call is running (calls abandoned by a deadline included); False on timeout."""
        with self._in_flight_lock:
            jobs = list(self._in_flight)
        pending = [asyncio.wrap_future(j) for j in jobs]
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    # ------------------------------------------------------------------ connection upkeep

    async def _maintain(self) -> None:
        delay = self._backoff_min
        while True:
            if self._conn is None:
                self._gen += 1
                try:
                    conn, event_id = await asyncio.wrap_future(self._submit(self._upkeep, self._open, self._gen))
                except libvirt.libvirtError as e:
                    self.last_error = str(e)
                    log.warning("cannot connect to libvirt at %s (retry in %g s): %s", self.uri, delay, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff_max)
                    continue
                self._conn, self._event_id, self.last_error = conn, event_id, None
                self.reconnects += 1
                delay = self._backoff_min
                self._connected_evt.set()
                log.info("connected to libvirt at %s", self.uri)
                self._changed()
            self._wake.clear()
            await self._wake.wait()

    def _open(self, gen: int) -> tuple[Any, int]:
        conn = self._opener(self.uri)
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(5, 3)
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._closed_cb, gen)
        try:
            event_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event_cb, None)
        except libvirt.libvirtError:
            _dispose(conn, -1)
            raise
        return conn, int(event_id)

    def _lost(self, conn: Any, why: str) -> None:
        """On the loop: forget a broken connection and wake the reconnect task."""
        if self._conn is not conn:
            return
        self._conn, self.last_error = None, why
        self._connected_evt.clear()
        log.warning("lost the libvirt connection to %s: %s; VM states are unknown until it is back", self.uri, why)
        with contextlib.suppress(RuntimeError):  # the pool is already shut down
            self._submit(self._upkeep, _dispose, conn, self._event_id)
        self._wake.set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # Called on libvirt's event thread.
    def _closed_cb(self, _conn: Any, reason: int, gen: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._lost_by_callback, gen, reason)

    def _lost_by_callback(self, gen: int, reason: int) -> None:
        if self._conn is not None and gen == self._gen:
            self._lost(self._conn, f"connection closed by libvirt (reason {reason})")

    def _event_cb(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: object) -> None:
        loop, handler = self._loop, self.on_event
        if loop is None or handler is None or loop.is_closed():
            return
        try:
            name = dom.name()
        except libvirt.libvirtError:
            return
        loop.call_soon_threadsafe(handler, name, event, detail)


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _dispose(conn: Any, event_id: int) -> None:
    """Close a connection for good. Its callbacks hold references to it: while they are registered,
    close() leaves it (its socket, its wakeup eventfd) alive, one leak per reconnect."""
    with contextlib.suppress(libvirt.libvirtError):
        conn.domainEventDeregisterAny(event_id)
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
