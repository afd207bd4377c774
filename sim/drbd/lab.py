"""Build a simulated DRBD resource on two nodes for tests and the demo.

:class:`DrbdPair` writes each node's simulator configuration, the
``drbdadm``/``drbdsetup`` wrappers (``<node>/bin``; point ``drbd.drbdadm``,
``drbd.drbdsetup`` and ``drbd.proc_drbd`` there) and optionally one ext4
image with a loop device per node, then starts one simulator process per
node, inside the node's network namespace when a :class:`TwoNodes` lab is
given (the replication link is ``hb0``). With ``transitions`` (a directory),
each simulator appends its role changes and acknowledged writes to
``<node>.drbd.jsonl`` there (``sim.nodelab.transitions``).

Invariant: ``close()`` ends the simulator processes it started (by PID),
makes the loop devices writable again and detaches them, and removes the
image, even after a failed test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..harness import wait_for
from ..netns import TwoNodes

FRONTEND = Path(__file__).with_name("frontend.py")
INITIAL_UUID = "6B3A1F4C2D8E9A70"


@dataclasses.dataclass
class SimNode:
    name: str
    node_id: int
    dir: Path
    ns: str | None
    cfg: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    # argv prefix that runs the simulator on its node (default: ``ip netns exec NS`` when ns is set)
    launcher: Callable[[], list[str]] | None = None

    @property
    def socket(self) -> Path:
        return Path(self.cfg["socket"])

    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    @property
    def drbdadm(self) -> Path:
        return self.bin / "drbdadm"

    @property
    def drbdsetup(self) -> Path:
        return self.bin / "drbdsetup"

    @property
    def proc_drbd(self) -> Path:
        return Path(self.cfg["proc_drbd"])

    @property
    def loop_device(self) -> str | None:
        dev: str | None = self.cfg.get("loop_device")
        return dev

    @property
    def log_path(self) -> Path:
        return self.dir / "drbdsim.log"

    def write_files(self) -> None:
        self.bin.mkdir(parents=True, exist_ok=True)
        (self.dir / "sim.json").write_text(json.dumps(self.cfg, indent=1))
        for prog in ("drbdadm", "drbdsetup"):
            p = self.bin / prog
            p.write_text(f"#!/bin/sh\nDRBDSIM_SOCKET='{self.socket}' exec '{sys.executable}' -S '{FRONTEND}' {prog} \"$@\"\n")
            p.chmod(0o755)

    def start(self, timeout: float = 15.0) -> None:
        ready = Path(str(self.socket) + ".ready")
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        argv = [sys.executable, "-m", "clever_cluster.sim.drbd.server", str(self.dir / "sim.json")]
        if self.launcher is not None:
            argv = [*self.launcher(), *argv]
        elif self.ns is not None:
            argv = ["ip", "netns", "exec", self.ns, *argv]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"drbd simulator of {self.name} exited:\n{self.log()}")
            return ready.exists()

        wait_for(up, timeout, f"the DRBD simulator of {self.name}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Power loss: the simulator dies at once (no goodbye to the peer)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.module_gone()

    def module_gone(self) -> None:
        # /proc/drbd exists only while the module is loaded; a stale copy would lie.
        with contextlib.suppress(FileNotFoundError):
            self.proc_drbd.unlink()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.module_gone()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run(self, prog: str, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        exe = self.drbdadm if prog == "drbdadm" else self.drbdsetup
        return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, **(env or {})})

    def api(self, **req: Any) -> Any:
        timeout = float(req.get("timeout", 5.0)) + 10.0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket))
            s.sendall(json.dumps({"api": req.pop("what"), **req}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("the simulator closed the connection")
                data += chunk
        return json.loads(data)["r"]

    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = self.api(what="state")
        return st

    def write(self, kib: int = 4, timeout: float = 5.0) -> dict[str, Any]:
        """The VM on this node wrote ``kib`` KiB (blocks while DRBD has I/O frozen, up to ``timeout``).

        An acknowledged write answers ``{"ok": True, "id": ...}``; the id is in
        the transition log and in the set of writes the disk holds (:meth:`held`).
        """
        r: dict[str, Any] = self.api(what="write", kib=kib, timeout=timeout)
        return r

    def held(self) -> dict[str, list[list[int]]]:
        """The writes this node's disk holds (``sim.nodelab.transitions.WriteSet`` ranges)."""
        r: dict[str, list[list[int]]] = self.api(what="held")
        return r

    def disconnect_abruptly(self) -> dict[str, Any]:
        """This node drops the connection to its twin with no goodbye and stays StandAlone: to the twin it
        looks like a cut link (a Primary freezes and runs fence-peer), unlike ``drbdadm disconnect``."""
        r: dict[str, Any] = self.api(what="disconnect_abruptly")
        return r

    def fail_disk(self) -> dict[str, Any]:
        """The backing disk fails: DRBD detaches it (disk Failed, then Diskless; it stays so across restarts)."""
        r: dict[str, Any] = self.api(what="fail_disk")
        return r

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0, what: str = "state") -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.state()
            return st if pred(st) else None
        try:
            found = wait_for(check, timeout, f"{self.name}: {what}", interval=0.05)
            assert found is not None
            return found
        except AssertionError:
            raise AssertionError(f"{self.name}: timed out waiting for {what}; state {self.brief()}\n{self.log()[-3000:]}") from None

    def brief(self) -> str:
        try:
            s = self.state()
        except OSError as e:
            return f"(unreachable: {e})"
        return (f"role {s['role']}/{s['peer_role']} disk {s['disk']}/{s['peer_disk']} conn {s['conn']} repl {s['repl']} "
                f"susp {s['susp']} oos {s['oos_kib']}")


def _free_port(addrs: list[str]) -> int:
    for _ in range(200):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
        ok = True
        for a in addrs:
            with socket.socket() as s:
                try:
                    s.bind((a, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free TCP port")


class DrbdPair:
    """Two simulated nodes of one resource (``node1`` id 0, ``node2`` id 1)."""

    def __init__(self, workdir: Path, version: str = "9", *, topo: TwoNodes | None = None, loop: bool = False,
                 conf: dict[str, Any] | None = None, node_conf: dict[int, dict[str, Any]] | None = None,
                 handler_env: dict[str, str] | None = None, resource: str = "r0", size_mib: int = 32,
                 transitions: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.image: Path | None = None
        self.loops: list[str] = []
        if loop:
            self._make_disk(size_mib)
        nss: list[str | None]
        if topo is not None:
            addrs, port, nss = [topo.n1.hb0, topo.n2.hb0], 7789, [topo.n1.ns, topo.n2.ns]
        else:
            addrs = ["127.0.0.11", "127.0.0.12"]
            port, nss = _free_port(addrs), [None, None]
        names = ["node1", "node2"]
        self.nodes: list[SimNode] = []
        for i in range(2):
            d = self.workdir / names[i]
            d.mkdir(parents=True, exist_ok=True)
            cfg: dict[str, Any] = {
                "version": version, "resource": resource, "minor": 0, "volume": 0,
                "node": names[i], "node_id": i, "peer": names[1 - i], "peer_node_id": 1 - i,
                "local_addr": addrs[i], "peer_addr": addrs[1 - i], "port": port,
                "socket": str(d / "drbdsim.sock"), "meta_file": str(d / "meta.json"), "proc_drbd": str(d / "proc_drbd"),
                "loop_device": self.loops[i] if self.loops else None, "initial_uuid": INITIAL_UUID,
                "size_kib": size_mib * 1024, "handler_env": handler_env or {},
                "drbd_conf": {**(conf or {}), **((node_conf or {}).get(i + 1, {}))},
                "transitions": str(Path(transitions) / f"{names[i]}.drbd.jsonl") if transitions is not None else None,
            }
            n = SimNode(names[i], i, d, nss[i], cfg)
            n.write_files()
            self.nodes.append(n)

    def node(self, i: int) -> SimNode:
        return self.nodes[i - 1]

    def _make_disk(self, size_mib: int) -> None:
        self.image = self.workdir / "replicated.img"
        with open(self.image, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "ccdata", str(self.image)], check=True, capture_output=True)
        for _ in range(2):
            r = subprocess.run(["losetup", "-f", "--show", str(self.image)], check=True, capture_output=True, text=True)
            self.loops.append(r.stdout.strip())

    def start(self) -> DrbdPair:
        for n in self.nodes:
            n.start()
        return self

    def wait_connected(self, timeout: float = 15.0) -> None:
        for n in self.nodes:
            n.wait(lambda s: s["conn"] == "Connected" and s["repl"] == "Established" and s["disk"] == "UpToDate",
                   timeout, "Connected and UpToDate")

    def close(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.kill()
        for dev in self.loops:
            # The read-only flag the simulator set outlives losetup -d: the next user of /dev/loopN
            # (another test on this machine) would get a write-protected device.
            subprocess.run(["blockdev", "--setrw", dev], capture_output=True, check=False)
            for _ in range(20):
                if subprocess.run(["losetup", "-d", dev], capture_output=True, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        self.loops.clear()
        if self.image is not None:
            with contextlib.suppress(FileNotFoundError):
                self.image.unlink()

    def __enter__(self) -> DrbdPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
