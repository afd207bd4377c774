"""Two real clever-clusterd daemons in a namespace lab, for heartbeat tests and benchmarks.

:class:`DaemonPair` builds :func:`~clever_cluster.sim.netns.two_nodes`,
writes both configurations with :mod:`configgen` (heartbeat links ``hb0``
and ``hb1``, a distinct machine id per node), runs each daemon inside its
node's namespace and reads ``clevervm status --json`` over the control
socket (a Unix socket, reachable from outside the namespace).

Invariant: :meth:`DaemonPair.close` stops both daemons (resuming a stopped
one first) even when a test failed; the lab's own ``close`` removes the
namespaces.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from . import configgen
from .harness import DaemonProcess, run_cli, wait_for
from .netns import Lab, TwoNodes, two_nodes

LINKS = ("hb0", "hb1")


class DaemonPair:
    def __init__(self, lab: Lab, workdir: Path, *, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.lab = lab
        self.t: TwoNodes = two_nodes(lab)
        n1, n2 = self.t.n1, self.t.n2
        self.config = dict(zip((1, 2), configgen.write_pair(
            workdir, overrides=overrides, links=[("hb0", n1.hb0, n2.hb0), ("hb1", n1.hb1, n2.hb1)]), strict=True))
        self.daemons: dict[int, DaemonProcess] = {}

    def ns(self, i: int) -> str:
        return self.t.node(i).ns

    def start(self, *which: int) -> None:
        for i in which or (1, 2):
            self.daemons[i] = DaemonProcess(self.config[i], argv_prefix=["ip", "netns", "exec", self.ns(i)]).start()

    def status(self, i: int, timeout: float = 10.0) -> dict[str, Any] | None:
        """The daemon's ``status --json``, or None when it does not answer."""
        r = run_cli(self.config[i], "status", "--json", timeout=timeout)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def hb(self, i: int) -> dict[str, Any]:
        st = self.status(i)
        if st is None:
            raise AssertionError(f"node{i} does not answer:\n{self.daemons[i].log()[-2000:]}")
        return dict(st["heartbeat"])

    def peer_state(self, i: int) -> str | None:
        st = self.status(i)
        return None if st is None else str(st["heartbeat"]["state"])

    def wait_alive(self, timeout: float = 20.0) -> None:
        wait_for(lambda: self.peer_state(1) == "alive" and self.peer_state(2) == "alive", timeout, "both daemons to hear each other")

    def cut(self, i: int = 1, links: tuple[str, ...] = LINKS) -> tuple[float, float]:
        """Drop everything on ``links`` of node ``i``; returns monotonic (before, after) the cut."""
        before = time.monotonic()
        self.lab.blackout(self.ns(i), links)
        return before, time.monotonic()

    def heal(self, i: int = 1) -> None:
        self.lab.end_blackout(self.ns(i))

    def events(self, i: int, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.hb(i)["events"] if e["kind"] == kind]

    def close(self) -> None:
        for d in self.daemons.values():
            d.signal(signal.SIGCONT)
            d.stop()
