"""Event-driven observers of the lab's nodes: mount tables and process exits, in one thread.

:class:`FdWatcher` polls file descriptors in one thread and stamps every
wake-up with one ``time.monotonic()``, so that an unmount and a mount seen in
the same wake-up never look overlapping (intervals are half-open).

- :class:`MountWatch` follows the mount table of one node's mount namespace
  through ``/proc/<holder>/mountinfo`` (the kernel flags it with POLLPRI
  on every change: no sampling) and records mounts of the lab's loop devices
  (``mount`` records). A pidfd of the holder tells when the namespace's
  last process died: the open mountinfo file pins the namespace (and so the
  mount and the loop device), so it is closed at once, and only then are
  the remaining mounts recorded as gone.
- :func:`FdWatcher.watch_exit` records when a node process ended (``exit``
  records), from a pidfd.

Stamps are taken when the change is observed, microseconds to milliseconds
after the system call: an unmount is recorded late (the interval looks
longer, the safe side), a mount too (the interval looks shorter by that lag;
DRBD roles, stamped in the simulator, bound the mounts).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from clever_cluster.daemon.resources.mounts import MountEntry, parse_mountinfo

from .transitions import Recorder

Callback = Callable[[int, float], bool]  # (revents, t) -> keep watching?


class FdWatcher:
    """One thread polling registered descriptors; callbacks run in that thread."""

    def __init__(self) -> None:
        self._rd, self._wr = os.pipe()
        os.set_blocking(self._wr, False)
        self._poll = select.poll()
        self._poll.register(self._rd, select.POLLIN)
        self._callbacks: dict[int, Callback] = {}
        self._pending: list[tuple[str, int, int, Callback | None]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._idle = threading.Condition(self._lock)
        self._returned = 0  # poll() calls that returned
        self._finished = 0  # the last of them whose ready descriptors were all handled
        self._thread = threading.Thread(target=self._run, name="nodelab-watch", daemon=True)
        self._thread.start()

    def add(self, fd: int, events: int, callback: Callback) -> None:
        """Watch ``fd`` (owned by the watcher from now on: it closes it when the callback returns False)."""
        with self._lock:
            self._pending.append(("add", fd, events, callback))
        self._wake()

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until everything that was ready before this call has been handled.

        The next poll() to return does so after the wake-up below (at once if
        the thread is not polling), and it sees everything ready by then.
        """
        with self._lock:
            target = self._returned + 1
        self._wake()
        with self._lock:
            self._idle.wait_for(lambda: self._finished >= target or self._stop, timeout)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wr, b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
                stop = self._stop
            for _op, fd, events, cb in pending:
                assert cb is not None
                self._callbacks[fd] = cb
                self._poll.register(fd, events)
            if stop:
                break
            ready = self._poll.poll(1000)
            t = time.monotonic()
            with self._lock:
                self._returned += 1
                returned = self._returned
            for fd, revents in ready:
                if fd == self._rd:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._rd, 4096)
                    continue
                cb = self._callbacks.get(fd)
                if cb is None:
                    continue
                keep = True
                try:
                    keep = cb(revents, t)
                except Exception as e:  # noqa: BLE001 - one observer's bug must not blind the others
                    print(f"nodelab watcher: callback for fd {fd} failed: {e!r}", flush=True)
                    keep = False
                if not keep:
                    self._drop(fd)
            with self._lock:
                self._finished = returned
                self._idle.notify_all()
        for fd in list(self._callbacks):
            self._drop(fd)
        with self._lock:
            self._idle.notify_all()

    def drop(self, fd: int) -> None:
        """Stop watching ``fd`` and close it. Only from a callback (the watcher's thread owns the descriptors)."""
        assert threading.current_thread() is self._thread, "drop() runs in the watcher thread only"
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        self._callbacks.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def close(self) -> None:
        """Stop the thread and close every descriptor it owns."""
        with self._lock:
            self._stop = True
        self._wake()
        self._thread.join(10)
        for fd in (self._rd, self._wr):
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------------ process exits

    def watch_exit(self, pid: int, recorder: Recorder, node: str, name: str, on_exit: Callable[[float], None] | None = None) -> None:
        """Record an ``exit`` record when ``pid`` ends (it must be our child or otherwise still exist)."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            recorder.record(node, "exit", name, pid=pid, seen="already gone")
            return

        def ended(_revents: int, t: float) -> bool:
            recorder.record(node, "exit", name, t=t, pid=pid)
            if on_exit is not None:
                on_exit(t)
            return False

        self.add(pidfd, select.POLLIN, ended)


class MountWatch:
    """Mounts of the lab's devices in one node's mount namespace (see the module docstring)."""

    def __init__(self, watcher: FdWatcher, recorder: Recorder, node: str, holder_pid: int, devices: Iterable[int]) -> None:
        self.watcher = watcher
        self.node = node
        self.recorder = recorder
        self.devices = set(devices)
        self.current: dict[int, MountEntry] = {}
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._mi_fd: int | None = os.open(f"/proc/{holder_pid}/mountinfo", os.O_RDONLY)
        try:
            pidfd = os.pidfd_open(holder_pid)
        except BaseException:
            os.close(self._mi_fd)
            raise
        self._scan(time.monotonic(), initial=True)
        watcher.add(self._mi_fd, select.POLLPRI | select.POLLERR, self._changed)
        watcher.add(pidfd, select.POLLIN, self._holder_gone)

    def _read(self) -> str:
        assert self._mi_fd is not None
        os.lseek(self._mi_fd, 0, os.SEEK_SET)
        chunks = []
        while True:
            b = os.read(self._mi_fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode(errors="replace")

    def _scan(self, t: float, initial: bool = False) -> None:
        now = {e.mount_id: e for e in parse_mountinfo(self._read()) if e.dev in self.devices}
        for mid in sorted(set(self.current) - set(now)):
            e = self.current[mid]
            self.recorder.record(self.node, "mount", "unmounted", t=t, mount_id=mid, source=e.source, target=e.mountpoint)
        for mid in sorted(set(now) - set(self.current)):
            e = now[mid]
            self.recorder.record(self.node, "mount", "mounted", t=t, mount_id=mid, source=e.source, target=e.mountpoint,
                                 options=e.options.split(",")[0], **({"seen": "at start"} if initial else {}))
        self.current = now

    def _changed(self, revents: int, t: float) -> bool:
        with self._lock:
            if self._mi_fd is None:
                return False
            try:
                self._scan(t)
            except OSError:
                return True  # the holder is dying; its pidfd tells
            return True

    def _holder_gone(self, _revents: int, _t: float) -> bool:
        with self._lock:
            if self._mi_fd is not None:
                # Closing releases the namespace, its mounts and the loop device: only then are they gone.
                self.watcher.drop(self._mi_fd)
                self._mi_fd = None
            t = time.monotonic()
            for mid, e in sorted(self.current.items()):
                self.recorder.record(self.node, "mount", "unmounted", t=t, mount_id=mid, source=e.source, target=e.mountpoint,
                                     reason="mount namespace gone")
            self.current = {}
        self.closed.set()
        return False

    def mounted(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"mount_id": m, "source": e.source, "target": e.mountpoint, "options": e.options} for m, e in self.current.items()]
