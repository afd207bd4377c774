"""NodeLab: a complete two-node lab that comes up with one call and goes away without leftovers.

Topology (``sim.netns.two_nodes``): namespaces node1, node2, gw; hb0
10.0.1.1/30 <-> .2 (the replication link, where the DRBD simulators talk),
hb1 10.0.2.1/30 <-> .2, LAN 192.168.100.0/24 on a bridge in gw (gateway .1,
node1 .11, node2 .12, the floating address .50, node1's BMC .21, node2's
BMC .22, port 623). Per node (:class:`~.node.LabNode`): the DRBD simulator,
a private libvirtd serving the test driver plus a keeper holding its state,
the real ``clever-clusterd`` with its own generated configuration, and a
journal capture. One ext4 image with a loop device per node is the
replicated filesystem.

Faults: power (through a BMC like a fence, or direct; optionally the BMC
dies with its node), clean shutdown, daemon SIGKILL/SIGSTOP/SIGCONT,
network (:class:`~.network.Network`), fence device down, DRBD disk failure.
Every transition is logged (``transitions/``) and checked by
:meth:`NodeLab.check`.

The lab lives in a short private directory under /tmp (Unix socket paths
are limited to 107 bytes); :meth:`close` copies its logs, configurations and
transition log to ``logs_dir`` (when given) and removes it.

Invariants:
- :meth:`close` runs every cleanup step even when one fails or the lab is
  half built, and ends only processes the lab started (by PID, or by
  membership of the lab's own namespaces).
- :meth:`assert_nothing_left` proves it: no namespace, mount, loop device,
  process or socket directory of the lab remains.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clever_cluster.sim import configgen, netns
from clever_cluster.sim.drbd.lab import DrbdPair
from clever_cluster.sim.drbd.server import device_busy
from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.journal import Entry, JournalCapture
from clever_cluster.sim.libvirtd import PrivateLibvirtd

from . import nodeconfig, power, transitions
from .network import Network
from .node import LabNode, _pid_start, netns_pids, without_loop_mounts
from .watch import FdWatcher

BMC_PASSWORD = "lab-bmc-secret"
STALE_PREFIX = "ccnl"


def cleanup_stale(tmp: Path | None = None) -> list[Path]:
    """Remove what labs of dead processes left (loop devices on their image, their directory).

    Their namespaces, and every process inside, are removed by
    ``sim.netns.cleanup_stale``; their mounts died with those processes.
    """
    removed = []
    for d in (tmp or Path(tempfile.gettempdir())).glob(f"{STALE_PREFIX}*-*"):
        pid = d.name[len(STALE_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or netns._pid_alive(int(pid)) or not d.is_dir():
            continue
        r = subprocess.run(["losetup", "-n", "-l", "-O", "NAME,BACK-FILE"], capture_output=True, text=True, check=False)
        for line in r.stdout.splitlines():
            name, _, back = line.strip().partition(" ")
            if back.strip().startswith(str(d) + "/"):
                subprocess.run(["losetup", "-d", name], capture_output=True, check=False)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


class NodeLab:
    """Two nodes, their parts and their faults. Use as a context manager or through the ``nodelab`` fixture."""

    def __init__(self, logs_dir: Path | None = None, *, drbd_version: str = "9", drbd_conf: dict[str, Any] | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None, node_overrides: dict[int, dict[str, dict[str, Any]]] | None = None,
                 daemons: bool = True, bmc_modes: dict[int, str] | None = None, bmc_dies_with_node: tuple[int, ...] = (),
                 managed: tuple[str, ...] = ("plc1", "plc2"), unmanaged: tuple[str, ...] = ("tools",),
                 heartbeat_lan: bool = False, journal: bool = True, cluster: str = "labcluster", maintenance: bool = False) -> None:
        self.logs_dir = logs_dir
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{STALE_PREFIX}{os.getpid()}-"))
        self.transitions = self.workdir / "transitions"
        self.transitions.mkdir(exist_ok=True)
        self.drbd_version, self.drbd_conf = drbd_version, drbd_conf or {}
        self.overrides, self.node_overrides = overrides or {}, node_overrides or {}
        self.daemons = daemons
        self.bmc_modes = bmc_modes or {}
        self.bmc_dies_with_node = bmc_dies_with_node
        self.managed, self.unmanaged = managed, unmanaged
        self.heartbeat_lan, self.journal, self.cluster = heartbeat_lan, journal, cluster
        self.maintenance = maintenance  # the daemons start in maintenance mode: they observe, never act (tests of the lab itself)
        self.power_rec = transitions.Recorder(self.transitions / "harness.jsonl", "power")
        self.mount_rec = transitions.Recorder(self.transitions / "harness.jsonl", "mount")
        self.proc_rec = transitions.Recorder(self.transitions / "harness.jsonl", "proc")
        self.fault_rec = transitions.Recorder(self.transitions / "harness.jsonl", "lab")
        self.netlab = netns.Lab()
        self.watcher = FdWatcher()
        self.nodes: list[LabNode] = []
        self.bmcs: dict[int, subprocess.Popen[bytes] | None] = {}
        self.drbd: DrbdPair | None = None
        self.controller: power.PowerController | None = None
        self.topo: netns.TwoNodes
        self.net: Network
        self._tracked: list[tuple[int, str, str, str]] = []  # (pid, start time, what, node)
        self._threads: list[threading.Thread] = []
        self._loops: list[str] = []
        self._sock_dirs: list[Path] = []
        self._closed = False

    # ------------------------------------------------------------------ bring-up

    def __enter__(self) -> NodeLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 60.0) -> NodeLab:
        try:
            self._build()
            self._boot_all(timeout)
        except BaseException as e:
            try:
                self.close()
            except Exception as c:  # noqa: BLE001 - the first failure is the one to see
                e.add_note(f"and closing the half-built lab failed too: {c}")
            raise
        return self

    def _build(self) -> None:
        self.topo = netns.two_nodes(self.netlab)
        self.net = Network(self.topo, self.fault_rec)
        w = self.workdir
        key = configgen.write_key(w / "cluster.key")
        pw = w / "bmc.password"
        pw.write_text(BMC_PASSWORD + "\n")
        pw.chmod(0o600)
        self.controller = power.PowerController(w / "power.sock", self._power_request)
        # The installed `clevervm` entry point: DRBD's S9 check accepts only "[path/]clevervm [--config F] VERB".
        clevervm = shlex.quote(str(Path(sys.executable).with_name("clevervm")))
        handlers = {i: {"handlers": {verb: f"{clevervm} --config {shlex.quote(str(w / f'node{i}' / 'config.toml'))} {verb}"
                                     for verb in ("fence-peer", "unfence-peer")}} for i in (1, 2)}
        self.drbd = DrbdPair(w / "drbd", self.drbd_version, topo=self.topo, loop=True, conf=self.drbd_conf, node_conf=handlers,
                             transitions=self.transitions)
        self._loops = list(self.drbd.loops)
        parts = []
        for i in (1, 2):
            d = w / f"node{i}"
            d.mkdir(exist_ok=True)
            a, sim = self.topo.node(i), self.drbd.node(i)
            lvd = PrivateLibvirtd(d / "libvirtd")
            self._sock_dirs.append(lvd.sock_dir)
            parts.append(nodeconfig.NodeParts(
                name=f"node{i}", dir=d, hb0=a.hb0, hb1=a.hb1, lan=a.lan, bmc=a.bmc, machine_id=str(uuid.uuid4()),
                loop_device=self.drbd.loops[i - 1], drbdadm=sim.drbdadm, drbdsetup=sim.drbdsetup, proc_drbd=sim.proc_drbd,
                libvirt_uri=lvd.test_uri()))
            journal = self._journal(d) if self.journal else None
            node = LabNode(self, i, a, sim, parts[-1], lvd, journal)
            node.bmc_dies_with_node = i in self.bmc_dies_with_node
            self.nodes.append(node)
        for i in (1, 2):
            me, peer = parts[i - 1], parts[2 - i]
            ov = {**{k: dict(v) for k, v in self.overrides.items()}}
            for section, keys in self.node_overrides.get(i, {}).items():
                ov.setdefault(section, {}).update(keys)
            nodeconfig.write(self.node(i).config, me, peer, cluster=self.cluster, key_file=key, bmc_password_file=pw,
                             gateway=self.topo.gw_addr, drbd_version=self.drbd_version, heartbeat_lan=self.heartbeat_lan,
                             journal=self.journal, overrides=ov)
            if self.maintenance:
                nodeconfig.write_maintenance_intent(me)
        for i in (1, 2):
            self.bmc_start(i)

    def _journal(self, d: Path) -> JournalCapture:
        logf = d / "journal.log"
        lock = threading.Lock()

        def keep(e: Entry) -> None:
            fields = " ".join(f"{k}={v}" for k, v in e.items() if k.startswith("CLEVER_"))
            with lock, open(logf, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {e.get('PRIORITY', '?')} {e.get('MESSAGE', '')} {fields}".rstrip() + "\n")

        return JournalCapture(d, on_entry=keep)

    def _boot_all(self, timeout: float) -> None:
        errors: list[BaseException] = []

        def boot(n: LabNode) -> None:
            try:
                n.boot(start_daemon=self.daemons, wait=True)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        threads = [threading.Thread(target=boot, args=(n,), name=f"boot-{n.name}") for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        if errors:
            raise errors[0]
        if any(t.is_alive() for t in threads):
            raise TimeoutError(f"the nodes did not boot within {timeout:g} s")

    # ------------------------------------------------------------------ accessors

    def node(self, i: int) -> LabNode:
        return self.nodes[i - 1]

    @property
    def closed(self) -> bool:
        return self._closed

    def loop_devs(self) -> list[int]:
        return [os.stat(d).st_rdev for d in self._loops]

    def track(self, pid: int, what: str, node: str) -> None:
        self._tracked.append((pid, _pid_start(pid) or "", what, node))

    def records(self) -> list[transitions.Record]:
        self.watcher.sync()
        return transitions.load(self.transitions)

    def timeline(self, kinds: tuple[str, ...] | None = None) -> str:
        return transitions.timeline(self.records(), kinds=kinds)

    def mark(self, label: str, **fields: Any) -> float:
        """Record a moment of the scenario (``mark`` record); returns its monotonic time."""
        t: float = self.fault_rec.record("lab", "mark", label, **fields)["t"]
        return t

    def wait_record(self, pred: Callable[[transitions.Record], bool], timeout: float, what: str = "a record") -> transitions.Record:
        """The first record matching ``pred``, polling the log until ``timeout``."""
        def find() -> transitions.Record | None:
            return next((r for r in self.records() if pred(r)), None)

        found = wait_for(find, timeout, what, interval=0.05)
        assert found is not None
        return found

    def active(self, t: float | None = None) -> dict[str, list[str]]:
        """What each node holds at ``t`` (default: now), e.g. ``{"node1": ["role r0", "mount 212", "vm plc1"]}``."""
        at = transitions.active_at(self.records(), t, managed_names=self.managed)
        return {n.name: sorted(f"{i.kind} {i.key}" for i in at.get(n.name, [])) for n in self.nodes}

    def check(self, *, allow_lost_writes: bool = False) -> None:
        """Never two active, no acknowledged write lost; raises AssertionError with the evidence."""
        recs = self.records()
        problems = transitions.report(recs, managed_prefixes=("plc",), managed_names=self.managed, allow_lost_writes=allow_lost_writes)
        if problems:
            raise AssertionError("\n".join(problems) + "\n\ntimeline:\n" + transitions.timeline(recs))

    def wait_connected(self, timeout: float = 20.0) -> None:
        assert self.drbd is not None
        self.drbd.wait_connected(timeout)

    # ------------------------------------------------------------------ BMCs

    def bmc_start(self, i: int, mode: str | None = None) -> None:
        """Start node ``i``'s BMC (in the gateway namespace, on its LAN address); it reads the node's power."""
        if mode is not None:
            self.bmc_modes[i] = mode
        n = self.node(i)
        assert self.controller is not None
        argv = [sys.executable, "-m", "clever_cluster.sim.bmc", "--address", n.addrs.bmc, "--port", str(nodeconfig.BMC_PORT),
                "--user", nodeconfig.BMC_USER, "--password-file", str(self.workdir / "bmc.password"),
                "--uuid", n.parts.machine_id, "--mode", self.bmc_modes.get(i, "immediate"), "--power", n.power,
                "--events", str(n.dir / "bmc.events"), "--power-file", str(n.power_file),
                "--off-hook", shlex.join(power.hook_argv(sys.executable, self.controller.path, "off", n.name)),
                "--on-hook", shlex.join(power.hook_argv(sys.executable, self.controller.path, "on", n.name))]
        with open(n.dir / "bmc.log", "ab") as log:
            p = self.netlab.popen(self.topo.gw, without_loop_mounts(argv), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        self.bmcs[i] = p
        self.track(p.pid, "bmc", n.name)
        assert p.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        while not line.startswith(b"PORT"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{n.name}'s BMC did not start: {(n.dir / 'bmc.log').read_text(errors='replace')[-2000:]}")
            if select.select([p.stdout], [], [], 0.1)[0]:
                line = p.stdout.readline()
        p.stdout.close()
        self.fault_rec.record(n.name, "bmc", "up", mode=self.bmc_modes.get(i, "immediate"))

    def bmc_kill(self, i: int, reason: str = "fence device down") -> None:
        """The BMC process dies (SIGKILL): the fence device is unreachable."""
        p = self.bmcs.get(i)
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        self.bmcs[i] = None
        self.fault_rec.record(f"node{i}", "bmc", "down", reason=reason)

    def bmc_alive(self, i: int) -> bool:
        p = self.bmcs.get(i)
        return p is not None and p.poll() is None

    def ipmi(self, frm: int, target: int, *args: str, retries: int = 2, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``ipmitool ... ARGS`` against node ``target``'s BMC, run inside node ``frm`` (as its fence agent would reach it).

        Each try waits 1 s for an answer; a dead BMC costs about 2 s with ``retries=1``, 6 s with 2.
        """
        n = self.node(target)
        return self.netlab.run(self.node(frm).ns, "ipmitool", "-I", "lanplus", "-H", n.addrs.bmc, "-p", str(nodeconfig.BMC_PORT),
                            "-U", nodeconfig.BMC_USER, "-f", str(self.workdir / "bmc.password"), "-R", str(retries), "-N", "1",
                            *args, check=False, timeout=timeout)

    # ------------------------------------------------------------------ power

    def _power_request(self, op: str, node: str, via: str) -> str:
        """From a BMC's hook: 'off' returns once the node is off; 'on' once its power reads on."""
        i = {"node1": 1, "node2": 2}.get(node)
        if i is None or op not in ("on", "off"):
            return f"unknown request {op} {node}"
        if self._closed:
            return "the lab is closing"
        if op == "off":
            self.node(i).power_off(via)
            return ""
        powered = threading.Event()
        self._boot_in_background(i, powered)
        return "" if powered.wait(20) else "the node did not power on"

    def _boot_in_background(self, i: int, powered: threading.Event | None = None) -> threading.Thread:
        n = self.node(i)

        def boot() -> None:
            with contextlib.suppress(Exception):  # recorded in n.boot_error and the transition log
                n.boot(start_daemon=self.daemons, wait=False, powered=powered)

        t = threading.Thread(target=boot, name=f"boot-{n.name}", daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def power_off(self, i: int) -> None:
        """Direct power loss of node ``i`` (not through its BMC): links down, then all its processes die."""
        self.fault_rec.record(f"node{i}", "fault", "power loss")
        self.node(i).power_off("direct")

    def power_on(self, i: int, *, wait: bool = True) -> None:
        """Power returns to node ``i`` (its BMC first, if it died with the node); the node boots."""
        self.fault_rec.record(f"node{i}", "fault", "power on")
        if not self.bmc_alive(i):
            self.bmc_start(i)
        if wait:
            self.node(i).boot(start_daemon=self.daemons, wait=True)
        else:
            self._boot_in_background(i)

    def shutdown(self, i: int, timeout: float = 60.0) -> None:
        """A clean shutdown: the daemon stops (SIGTERM), DRBD goes down cleanly, then the power goes off."""
        n = self.node(i)
        self.fault_rec.record(n.name, "fault", "clean shutdown")
        n.stop_daemon(timeout)
        if n.power == "on" and n.sim.alive():
            n.drbdadm("disconnect", "r0")
        n.power_off("shutdown")

    def reboot(self, i: int, timeout: float = 60.0) -> None:
        self.shutdown(i, timeout)
        self.power_on(i)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Remove everything the lab made, even after a failure; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []

        def step(name: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - every step runs
                errors.append(f"{name}: {type(e).__name__}: {e}")

        for t in self._threads:
            t.join(30)
        for n in self.nodes:
            step(f"stop {n.name}", n.kill_all)
        for i in list(self.bmcs):
            step(f"stop bmc {i}", self.bmc_kill, i, "lab closed")
        step("watcher", self.watcher.close)
        if self.controller is not None:
            step("power controller", self.controller.close)
        for dev in self._loops:
            step(f"release {dev}", self._wait_free, dev)
        if self.drbd is not None:
            step("drbd", self.drbd.close)
        step("namespaces", self.netlab.close)
        for n in self.nodes:
            if n.journal is not None:
                step(f"journal {n.name}", n.journal.close)
        for d in self._sock_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.fault_rec.record("lab", "lab", "closed", errors=errors)
        if self.logs_dir is not None:
            step("keep the logs", self._keep_logs, self.logs_dir)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise RuntimeError("closing the lab: " + "; ".join(errors))

    def _keep_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.workdir.rglob("*"):
            if f.is_file() and (f.suffix in (".log", ".jsonl", ".toml", ".events", ".json", ".out") or f.name == "machine-id"):
                target = dest / f.relative_to(self.workdir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)

    @staticmethod
    def _wait_free(dev: str) -> None:
        wait_for(lambda: not device_busy(dev), 15, f"{dev} to be released")

    def leftovers(self) -> list[str]:
        """What the lab left behind (empty after a complete close())."""
        left = [f"namespace {ns}" for ns in netns.list_netns() if ns.startswith(self.netlab.prefix)]
        for ns in self.netlab.namespaces:
            left += [f"process {p} in {ns}" for p in netns_pids(ns)]
        for pid, start, what, node in self._tracked:
            if start and _pid_start(pid) == start:
                left.append(f"{node} {what} (pid {pid}) still running")
        r = subprocess.run(["losetup", "-n", "-l", "-O", "NAME,BACK-FILE"], capture_output=True, text=True, check=False)
        for line in r.stdout.splitlines():
            if str(self.workdir) in line:
                left.append(f"loop device {line.strip()}")
        devs = set(self._loops)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(f"/proc/{entry.name}/mountinfo").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                f = line.split(" ")
                if (len(f) > 4 and str(self.workdir) in f[4]) or any(f" - ext4 {d} " in line for d in devs):
                    left.append(f"mount in pid {entry.name}: {line}")
        left += [f"directory {d}" for d in [*self._sock_dirs, self.workdir] if d.exists()]
        return sorted(set(left))

    def assert_nothing_left(self) -> None:
        left = self.leftovers()
        if left:
            raise AssertionError("the lab left behind:\n  " + "\n  ".join(left))
