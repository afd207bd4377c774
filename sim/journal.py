"""Capture what a process sends to journald, without touching the host's journal.

The test binds a datagram socket in a temporary directory and runs the
process under :func:`wrap_argv`: a private mount namespace (``unshare -m``)
with a tmpfs over ``/run/systemd`` and that socket bind-mounted at
``/run/systemd/journal/socket``. systemd-python inside then speaks the native
journal protocol to the test, which parses it:

- ``KEY=value\\n`` for single-line values;
- ``KEY\\n<64-bit little-endian length><bytes>\\n`` for values with newlines;
- a whole entry passed as a sealed memfd (SCM_RIGHTS) when it is too big for
  one datagram.

The host's ``/run/systemd`` is never modified (the tmpfs exists only inside
the child's mount namespace).
"""

from __future__ import annotations

import array
import contextlib
import os
import shlex
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

Entry = dict[str, str]


def parse_entry(data: bytes) -> Entry:
    """One native-protocol datagram (or memfd content) → fields."""
    out: Entry = {}
    i = 0
    n = len(data)
    while i < n:
        nl = data.find(b"\n", i)
        if nl < 0:
            raise ValueError("truncated journal entry")
        line = data[i:nl]
        eq = line.find(b"=")
        if eq >= 0:
            out[line[:eq].decode()] = line[eq + 1:].decode(errors="replace")
            i = nl + 1
            continue
        key = line.decode()
        (size,) = struct.unpack_from("<Q", data, nl + 1)
        start = nl + 1 + 8
        out[key] = data[start:start + size].decode(errors="replace")
        i = start + size + 1  # skip the trailing newline
    return out


class JournalCapture:
    """A fake journald socket; collects parsed entries in a background thread."""

    def __init__(self, directory: Path | None = None, on_entry: Callable[[Entry], None] | None = None) -> None:
        """``on_entry`` is called (in the capture's thread) with each entry, e.g. to keep a readable log."""
        self._dir = Path(directory or tempfile.mkdtemp(prefix="cc-journal-"))
        self._on_entry = on_entry
        self.path = self._dir / "journal.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o666)
        self.entries: list[Entry] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="journal-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        fd_size = array.array("i").itemsize
        while not self._stop:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fd_size * 4))
            except TimeoutError:
                continue
            except OSError:
                return
            fds: list[int] = []
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(cdata[: len(cdata) - (len(cdata) % fd_size)])
                    fds.extend(a)
            try:
                if fds:
                    for fd in fds:
                        with os.fdopen(fd, "rb") as f:
                            data = f.read()
                entry = parse_entry(data)
            except (ValueError, struct.error, OSError):
                continue
            with self._lock:
                self.entries.append(entry)
            if self._on_entry is not None:
                self._on_entry(entry)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def snapshot(self) -> list[Entry]:
        with self._lock:
            return list(self.entries)

    def find(self, pred: Callable[[Entry], bool]) -> list[Entry]:
        return [e for e in self.snapshot() if pred(e)]

    def wait_for(self, pred: Callable[[Entry], bool], timeout: float) -> Entry:
        deadline = time.monotonic() + timeout
        while True:
            hits = self.find(pred)
            if hits:
                return hits[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching journal entry within {timeout:g} s; got {len(self.entries)} entries")
            time.sleep(0.02)

    def wrap_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in a private mount namespace whose journald socket is this capture."""
        script = (
            "set -e; mkdir -p /run/systemd; mount -t tmpfs -o mode=0755 cc-journal /run/systemd; "
            "mkdir -p /run/systemd/journal; touch /run/systemd/journal/socket; "
            f"mount --bind {shlex.quote(str(self.path))} /run/systemd/journal/socket; "
            'exec "$@"'
        )
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "journal-wrap", *argv]
