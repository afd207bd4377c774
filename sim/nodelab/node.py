"""One simulated machine of the lab: what runs on it, how it boots, and how it dies.

A node is its network namespace plus a *holder*: a process started with
``ip netns exec`` whose mount namespace is the node's (rid of the copies of
loop-device mounts it inherited from the host, which would keep other
tests' devices busy). Every process of the
node joins both namespaces (``nsenter -t HOLDER -m -n``): the DRBD
simulator, the node's private libvirtd (its own mount namespace, a slave of
the node's, so it sees the replicated filesystem mounted), the libvirt
keeper, the daemon and ``clevervm``. In the node's mount namespace, the
directory holding the mountpoint is a shared mount (mounts below it reach
libvirtd) and, with a journal capture, ``/run/systemd/journal/socket`` is
that capture's socket.

Invariants:
- :meth:`LabNode.kill_all` leaves no process in the node's network
  namespace (the harness's own process excepted), reaps the children it
  started, and returns only once the node's mount namespace is gone, so
  its mounts are released (the loop device is free).
- Power state changes only under :attr:`LabNode.lock`; the lab calls
  :meth:`boot` and :meth:`power_off`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clever_cluster.daemon.control import ControlClient, socket_path
from clever_cluster.sim.drbd.lab import SimNode
from clever_cluster.sim.drbd.server import device_busy
from clever_cluster.sim.harness import DaemonProcess, run_cli, wait_for
from clever_cluster.sim.journal import Entry, JournalCapture
from clever_cluster.sim.libvirtd import PrivateLibvirtd
from clever_cluster.sim.netns import NodeAddrs

from . import nodeconfig
from .transitions import Recorder
from .watch import MountWatch

if TYPE_CHECKING:
    from .lab import NodeLab

KEEPER = Path(__file__).with_name("vmkeeper.py")
LINKS = ("hb0", "hb1", "eth0")
# A new mount namespace starts as a copy of the host's, including loop devices that other tests
# have mounted there at this moment; host mounts do not propagate here, so our copy would keep
# their device busy after they unmount it. Every long-lived process the lab starts from the host
# namespace drops those copies first (lazily: only the copy goes).
DROP_LOOP_MOUNTS = ("grep '^/dev/loop' /proc/self/mounts | cut -d' ' -f2 | sort -r | "
                    "while read -r m; do umount -l \"$m\" 2>/dev/null || true; done")


def without_loop_mounts(argv: list[str]) -> list[str]:
    """``argv`` run after dropping the inherited loop-device mounts (use right after ``ip netns exec``)."""
    return ["sh", "-c", DROP_LOOP_MOUNTS + '; exec "$@"', "sh", *argv]


HOLDER_SCRIPT = """set -e
FS="$1"; JSOCK="$2"; READY="$3"; BOOT_ID="$4"
""" + DROP_LOOP_MOUNTS + """
mount --bind "$BOOT_ID" /proc/sys/kernel/random/boot_id
mount --bind "$FS" "$FS"
mount --make-shared "$FS"
if [ -d /run/mount ]; then mount -t tmpfs -o mode=0755 cc-node /run/mount; fi
if [ -n "$JSOCK" ]; then
  mkdir -p /run/systemd
  mount -t tmpfs -o mode=0755 cc-node /run/systemd
  mkdir -p /run/systemd/journal
  touch /run/systemd/journal/socket
  mount --bind "$JSOCK" /run/systemd/journal/socket
fi
echo $$ > "$READY"
exec sleep infinity
"""


def _pid_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), to tell a PID from a recycled one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def netns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit() and int(p) != os.getpid()]


class LabNode:
    """One node; built and driven by :class:`~clever_cluster.sim.nodelab.lab.NodeLab`."""

    def __init__(self, lab: NodeLab, index: int, addrs: NodeAddrs, sim: SimNode, parts: nodeconfig.NodeParts,
                 lvd: PrivateLibvirtd, journal: JournalCapture | None) -> None:
        self.lab = lab
        self.index = index
        self.name = f"node{index}"
        self.addrs = addrs
        self.ns = addrs.ns
        self.sim = sim
        self.parts = parts
        self.dir = parts.dir
        self.config = self.dir / "config.toml"
        self.lvd = lvd
        self.journal = journal
        self.lock = threading.RLock()
        self.power = "off"
        self.holder: subprocess.Popen[bytes] | None = None
        self.keeper: subprocess.Popen[bytes] | None = None
        self.daemon: DaemonProcess | None = None
        self.mounts: MountWatch | None = None
        self.started: list[tuple[int, str, str]] = []  # (pid, start time, what) of every process started for this node
        self.boot_error: str | None = None
        self.bmc_dies_with_node = False
        self.daemon_env: dict[str, str] = {}  # added to the daemon's environment at each start (e.g. to run another build)
        self.power_file = self.dir / "power"
        self.power_file.write_text("off\n")
        self.boot_id_file = self.dir / "boot_id"

    # ------------------------------------------------------------------ small helpers

    @property
    def rec(self) -> Recorder:
        return self.lab.power_rec

    def prefix(self) -> list[str]:
        """argv prefix that runs a command on this node (its network and mount namespaces)."""
        if self.holder is None or self.holder.poll() is not None:
            raise RuntimeError(f"{self.name} is not running (power {self.power})")
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--"]

    def _track(self, pid: int, what: str) -> None:
        self.started.append((pid, _pid_start(pid) or "", what))
        self.lab.track(pid, what, self.name)

    def run(self, *argv: str, timeout: float = 60.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command on this node, capturing its output."""
        return subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, timeout=timeout, check=check)

    def drbdadm(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.sim.drbdadm), *args, timeout=timeout)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``clevervm --config <this node's> ARGS`` run on this node."""
        return run_cli(self.config, *args, timeout=timeout, argv_prefix=self.prefix())

    def status(self) -> dict[str, Any]:
        """``clevervm status --json`` on this node, parsed (raises with its stderr on a non-zero exit)."""
        r = self.cli("status", "--json")
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: clevervm status exited {r.returncode}: {r.stderr.strip()}")
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def control(self, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
        """One request on the daemon's control socket, from the harness (no process started)."""
        with ControlClient(socket_path(self.parts.runtime_dir), timeout=timeout) as c:
            return c.call(cmd, **args)

    def metrics_text(self, timeout: float = 5.0) -> str:
        """The daemon's Prometheus page, fetched inside the node's network namespace."""
        url = f"http://127.0.0.1:{nodeconfig.METRICS_PORT}/metrics"
        with self.lab.netlab.enter(self.ns), urllib.request.urlopen(url, timeout=timeout) as resp:  # the socket stays in the node
            body: bytes = resp.read()
        return body.decode()

    def metrics(self) -> dict[str, float]:
        """Samples of the Prometheus page as ``{'name{label="v",...}': value}`` (parsed with prometheus-client)."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(self.metrics_text()):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
        return out

    def journal_entries(self) -> list[Entry]:
        return self.journal.snapshot() if self.journal is not None else []

    @contextlib.contextmanager
    def libvirt(self) -> Iterator[Any]:
        """A libvirt connection to this node's libvirtd (from the harness; Unix socket)."""
        import libvirt

        conn = libvirt.open(self.parts.libvirt_uri)
        try:
            yield conn
        finally:
            conn.close()

    def vm_states(self) -> dict[str, bool]:
        """Domain name -> active, read from this node's libvirtd."""
        with self.libvirt() as conn:
            return {d.name(): bool(d.isActive()) for d in conn.listAllDomains()}

    def write(self, kib: int = 4, timeout: float = 5.0) -> dict[str, Any]:
        """A write by the VM on this node through DRBD (acknowledged writes are checked after the scenario)."""
        return self.sim.write(kib, timeout)

    def fail_disk(self) -> dict[str, Any]:
        self.lab.fault_rec.record(self.name, "fault", "disk failure")
        return self.sim.fail_disk()

    def pids(self) -> list[int]:
        return netns_pids(self.ns)

    # ------------------------------------------------------------------ the daemon

    def start_daemon(self, wait: bool = True, timeout: float = 30.0) -> DaemonProcess:
        d = DaemonProcess(self.config, log_path=self.dir / "daemon.log", argv_prefix=self.prefix(),
                          env={"NOTIFY_SOCKET": "", "CLEVER_CLUSTER_CONFIG": str(self.config), **self.daemon_env})
        d.start()
        self.daemon = d
        self._track(d.pid, "daemon")
        self.lab.watcher.watch_exit(d.pid, self.lab.proc_rec, self.name, "daemon")
        if wait:
            self.wait_daemon(timeout)
        return d

    def wait_daemon(self, timeout: float = 30.0) -> None:
        def answers() -> bool:
            d = self.daemon
            if d is None or not d.alive():
                raise RuntimeError(f"{self.name}: the daemon is not running:\n{d.log()[-3000:] if d else ''}")
            try:
                self.control("ping", timeout=2.0)
            except Exception:  # noqa: BLE001 - not answering yet
                return False
            return True

        wait_for(answers, timeout, f"{self.name}'s daemon to answer", interval=0.05)

    def stop_daemon(self, timeout: float = 30.0) -> int | None:
        """Clean stop (SIGTERM, as systemd does); returns the exit code."""
        self.lab.fault_rec.record(self.name, "fault", "daemon SIGTERM")
        return self.daemon.stop(timeout) if self.daemon is not None else None

    def kill_daemon(self) -> None:
        self.lab.fault_rec.record(self.name, "fault", "daemon SIGKILL")
        if self.daemon is not None:
            self.daemon.kill()

    def hang_daemon(self) -> None:
        self.lab.fault_rec.record(self.name, "fault", "daemon SIGSTOP")
        if self.daemon is not None:
            self.daemon.signal(signal.SIGSTOP)

    def resume_daemon(self) -> None:
        self.lab.fault_rec.record(self.name, "fault", "daemon SIGCONT")
        if self.daemon is not None:
            self.daemon.signal(signal.SIGCONT)

    # ------------------------------------------------------------------ boot

    def boot(self, *, start_daemon: bool = True, wait: bool = True, powered: threading.Event | None = None) -> None:
        """Power on: links up, then the node's processes as a booting machine starts them.

        ``powered`` is set as soon as the power reads on (before the boot is done).
        """
        with self.lock:
            if self.power == "on":
                if powered is not None:
                    powered.set()
                return
            self.boot_error = None
            self.rec.record(self.name, "power", "on")
            self.power = "on"
            self.power_file.write_text("on\n")
            if powered is not None:
                powered.set()
            try:
                self._links_up()
                self._start_holder()
                self.sim.launcher = self.prefix
                self.sim.start()
                assert self.sim.proc is not None
                self._track(self.sim.proc.pid, "drbd simulator")
                self.lab.watcher.watch_exit(self.sim.proc.pid, self.lab.proc_rec, self.name, "drbd simulator")
                self._start_libvirt()
                if start_daemon:
                    self.start_daemon(wait=wait)
            except Exception as e:
                self.boot_error = f"{type(e).__name__}: {e}"
                self.lab.fault_rec.record(self.name, "fault", "boot failed", error=self.boot_error)
                raise

    def _links_up(self) -> None:
        cmds = [f"link set dev {ifname} up" for ifname in LINKS]
        cmds.append(f"route replace default via {self.lab.topo.gw_addr}")
        self._ip_batch(cmds)

    def _ip_batch(self, cmds: list[str]) -> None:
        r = subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input="\n".join(cmds) + "\n", capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: ip -batch failed: {r.stderr.strip()}")

    def _spawn(self, argv: list[str], what: str, log_name: str, ready: Path, timeout: float) -> subprocess.Popen[bytes]:
        """Start a node process that writes ``ready`` once it serves; watched, tracked, logged to ``log_name``."""
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        with open(self.dir / log_name, "ab") as log:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self._track(p.pid, what)
        self.lab.watcher.watch_exit(p.pid, self.lab.proc_rec, self.name, what)

        def up() -> bool:
            if p.poll() is not None:
                raise RuntimeError(f"{self.name}: the {what} exited {p.returncode}: "
                                   f"{(self.dir / log_name).read_text(errors='replace')[-2000:]}")
            return ready.exists()

        wait_for(up, timeout, f"{self.name}'s {what}")
        return p

    def _start_holder(self) -> None:
        fs = self.parts.mountpoint.parent
        fs.mkdir(parents=True, exist_ok=True)
        self.parts.mountpoint.mkdir(exist_ok=True)
        jsock = str(self.journal.path) if self.journal is not None else ""
        ready = self.dir / "holder.ready"
        # Every boot of a lab node is a new boot of its "kernel": a fresh boot id, seen at
        # /proc/sys/kernel/random/boot_id inside the node (as systemd-nspawn does for containers).
        self.boot_id_file.write_text(str(uuid.uuid4()) + "\n")
        self.holder = self._spawn(["ip", "netns", "exec", self.ns, "sh", "-c", HOLDER_SCRIPT, "holder", str(fs), jsock, str(ready),
                                   str(self.boot_id_file)], "holder", "holder.log", ready, 10)
        self.mounts = MountWatch(self.lab.watcher, self.lab.mount_rec, self.name, self.holder.pid, self.lab.loop_devs())

    def _start_libvirt(self) -> None:
        assert self.holder is not None
        base = os.stat(f"/proc/{self.holder.pid}/ns/mnt").st_ino
        self.lvd.start(30.0, argv_prefix=self.prefix(), base_mntns=base)
        if self.lvd.proc is not None:
            self._track(self.lvd.proc.pid, "libvirtd")
            self.lab.watcher.watch_exit(self.lvd.proc.pid, self.lab.proc_rec, self.name, "libvirtd")
        ready = self.dir / "keeper.ready"
        argv = [*self.prefix(), sys.executable, str(KEEPER), "--uri", self.parts.libvirt_uri, "--node", self.name,
                "--log", str(self.lab.transitions / f"{self.name}.libvirt.jsonl"), "--ready", str(ready),
                "--managed", ",".join(self.lab.managed), "--unmanaged", ",".join(self.lab.unmanaged)]
        self.keeper = self._spawn(argv, "libvirt keeper", "keeper.log", ready, 30)

    # ------------------------------------------------------------------ death

    def links_down(self) -> None:
        self._ip_batch([f"link set dev {ifname} down" for ifname in LINKS])

    def kill_all(self, timeout: float = 15.0) -> None:
        """SIGKILL every process of the node, reap our children, wait until its mounts are released."""
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes survive SIGKILL: {pids}")
            time.sleep(0.01)
        for p in (self.holder, self.keeper, self.sim.proc, self.lvd.proc, self.daemon.proc if self.daemon else None):
            if p is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.1, deadline - time.monotonic()))
        self.lvd.stop(5.0)
        self.sim.module_gone()  # /proc/drbd goes with the module
        if self.mounts is not None and not self.mounts.closed.wait(max(0.1, deadline - time.monotonic())):
            raise RuntimeError(f"{self.name}: the mount namespace is still held after its processes died")
        dev = self.parts.loop_device
        while device_busy(dev):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {dev} is still in use after the node died")
            time.sleep(0.01)

    def reset_network(self) -> None:
        """What a booting machine has: the static addresses only (a floating address dies with the power)."""
        a = self.addrs
        static = {"hb0": f"{a.hb0}/30", "hb1": f"{a.hb1}/30", "eth0": f"{a.lan}/{self.lab.topo.lan_prefix}"}
        cmds = []
        for ifname, cidr in static.items():
            cmds += [f"addr flush dev {ifname}", f"addr add {cidr} dev {ifname}"]
        self._ip_batch(cmds)

    def power_off(self, via: str) -> None:
        """Links down first, then every process dies; returns once the node is off."""
        with self.lock:
            if self.power == "off":
                return
            self.rec.record(self.name, "power", "off requested", via=via)
            self.links_down()
            self.rec.record(self.name, "power", "links_down", via=via)
            if self.bmc_dies_with_node and via != "bmc":
                self.lab.bmc_kill(self.index, reason="dies with its node")
            self.kill_all()
            self.reset_network()
            self.holder = self.keeper = None
            self.mounts = None
            self.power = "off"
            self.power_file.write_text("off\n")
            self.rec.record(self.name, "power", "off", via=via)

    def cleanup_files(self) -> None:
        shutil.rmtree(self.lvd.sock_dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for f in ("daemon.log", "journal.log", "keeper.log", "holder.log"):
            with contextlib.suppress(OSError):
                text = (self.dir / f).read_text(errors="replace")
                if text.strip():
                    parts.append(f"--- {self.name} {f}\n{text[-chars:]}")
        parts.append(f"--- {self.name} drbdsim.log\n{self.sim.log()[-chars:]}")
        return "\n".join(parts)
