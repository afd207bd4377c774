"""The lab's power line: BMC emulators switch a node's power through the harness.

A BMC emulator (``sim/bmc.py``) runs its ``--off-hook``/``--on-hook`` before
its power state changes; the lab makes that hook this file, run by path::

    python power.py SOCKET off|on NODE

which asks the harness's :class:`PowerController` (a Unix socket served by
a thread of the test process) to do it and waits for the answer. The harness
owns every process of the lab, so the one implementation of a power loss
(links down, then every process of the node killed, then the node declared
off) serves the BMCs and the tests' direct power faults alike.

- ``off`` answers only once the node is off (the BMC then reads off: a
  fence is confirmed only by a dead node).
- ``on`` answers at once and the node boots in the background, as a real
  machine does after a power-on command.

Standard library only: the hook runs inside the BMC's request handler.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[str, str, str], str]  # (op, node, via) -> "" when done, else an error


class PowerController:
    """Serves power requests on a Unix socket; each request runs in its own thread."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nodelab-power", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), name="nodelab-power-req", daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                req = json.loads(conn.makefile("rb").readline())
                op, node = str(req["op"]), str(req["node"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"ok": False, "error": f"bad request: {e}"}).encode() + b"\n")
                return
            try:
                err = self.handler(op, node, str(req.get("via", "bmc")))
            except Exception as e:  # noqa: BLE001 - the BMC must get an answer
                err = f"{type(e).__name__}: {e}"
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"ok": not err, "error": err}).encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def hook_argv(python: str, sock: Path, op: str, node: str) -> list[str]:
    return [python, str(Path(__file__).resolve()), str(sock), op, node]


def request(sock: Path | str, op: str, node: str, via: str = "bmc", timeout: float = 60.0) -> str:
    """Ask the controller; returns "" on success, else the error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(json.dumps({"op": op, "node": node, "via": via}).encode() + b"\n")
        line = s.makefile("rb").readline()
    reply = json.loads(line) if line else {"ok": False, "error": "no answer"}
    return "" if reply.get("ok") else str(reply.get("error") or "failed")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("off", "on"):
        print("usage: power.py SOCKET off|on NODE", file=sys.stderr)
        return 2
    try:
        err = request(argv[0], argv[1], argv[2])
    except (OSError, ValueError) as e:
        err = f"power controller unreachable: {e}"
    if err:
        print(f"power {argv[1]} {argv[2]}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
