"""A private libvirtd for tests: its own mount namespace, its own sockets, started and stopped by PID.

Several libvirtds (one per simulated node, and those of other tests running
at the same time) must not share ``/run/libvirt``, ``/var/lib/libvirt`` or
the pid files there (reference/lab.md section 3). Each one runs under
``unshare -m`` with:

- an overlay on ``/etc`` (the lower layer is the host's, read-only) holding
  its ``libvirt/qemu.conf`` and a ``passwd``/``group`` with the
  ``libvirt-qemu`` user the QEMU driver insists on resolving before it reads
  qemu.conf (Debian's libvirt-daemon-system would create it; we do not);
- an overlay on ``/var`` (its ``lib/libvirt``, ``log/libvirt``) and a tmpfs
  on ``/run``;
- ``/var/cache/libvirt`` bound to a persistent cache directory, so QEMU's
  capability probe (several seconds) happens once per machine, not per test;
- its sockets in a short private directory (``unix_sock_dir``), reachable
  from the host as ``qemu+unix:///system?socket=...``.

Nothing is written to the host's /etc, /var or /run. qemu.conf runs QEMU as
root with no security driver, no cgroups and console output straight to
files (no virtlogd): fine for a lab, not for production.

Mount propagation: the host's mounts are private on this machine, so a
filesystem mounted *after* a libvirtd started is not visible to it (or to its
QEMU processes). Mount what the guests need first, then start libvirtd.

Invariant: :meth:`PrivateLibvirtd.stop` ends the libvirtd it started and
every process left in its mount namespace (QEMU), by PID, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .guest import cache_dir

QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
swtpm_user = "root"
swtpm_group = "root"
"""

SCRIPT = """set -e
W="$1"; C="$2"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$W/etc-up,workdir=$W/etc-work" /etc
mount -t overlay overlay -o "lowerdir=/var,upperdir=$W/var-up,workdir=$W/var-work" /var
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /var/cache/libvirt
mount --bind "$C" /var/cache/libvirt
exec libvirtd -f "$W/libvirtd.conf" -p "$W/libvirtd.pid"
"""

QEMU_USER = "libvirt-qemu"


class LibvirtdError(RuntimeError):
    pass


class PrivateLibvirtd:
    def __init__(self, workdir: Path, cache: Path | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        for forbidden in ("/etc", "/var", "/run"):
            if str(self.workdir).startswith(forbidden + "/"):
                raise ValueError(f"workdir must not be under {forbidden} (it holds that overlay's upper layer)")
        self.cache = (cache or cache_dir()) / "libvirt"
        # Unix socket paths are limited to 107 bytes: keep the socket directory short.
        self.sock_dir = Path(tempfile.mkdtemp(prefix="cclv"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._mntns: int | None = None
        self._base_mntns: int | None = None
        # Mount namespaces of every run, so a killed one's QEMUs are ended too. A namespace's inode
        # number is reused once the namespace is gone: one with no process left is forgotten at once
        # (see _forget_dead), or stop() would end whoever got that number next (another test's lab).
        self._namespaces: set[int] = set()

    @property
    def socket(self) -> Path:
        return self.sock_dir / "libvirt-sock"

    @property
    def qemu_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    def test_uri(self, node_file: Path | None = None) -> str:
        path = str(Path(node_file).resolve()) if node_file else "/default"
        return f"test+unix://{path}?socket={self.socket}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "libvirtd.log"

    def __enter__(self) -> PrivateLibvirtd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    # ------------------------------------------------------------------ setup

    def _prepare(self) -> None:
        w = self.workdir
        for d in ("etc-up/libvirt", "etc-work", "var-up", "var-work"):
            (w / d).mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        (w / "etc-up/libvirt/qemu.conf").write_text(QEMU_CONF)
        for name, line in (("group", f"{QEMU_USER}:x:64055:\n"),
                           ("passwd", f"{QEMU_USER}:x:64055:64055:libvirt qemu:/var/lib/libvirt:/usr/sbin/nologin\n")):
            host = Path("/etc", name).read_text()
            if f"\n{QEMU_USER}:" not in "\n" + host:
                host += ("" if host.endswith("\n") else "\n") + line
            (w / "etc-up" / name).write_text(host)
        (w / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.sock_dir}"\nlisten_tcp = 0\nlisten_tls = 0\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.log_file}"\n')

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 90.0, *, argv_prefix: Sequence[str] = (), base_mntns: int | None = None) -> None:
        """Start libvirtd; ``argv_prefix`` (e.g. ``nsenter -t PID -m -n --``) runs it inside another node's namespaces.

        Its private mount namespace is then a slave of the namespace it was
        started in, whose inode ``base_mntns`` must name (default: ours), so
        that it is told apart from libvirtd's own and never taken for it.
        """
        if self.proc is not None and self.proc.poll() is None:
            raise LibvirtdError("already running")
        self._forget_dead()
        self._prepare()
        self._mntns = None
        self._base_mntns = base_mntns if base_mntns is not None else os.stat("/proc/self/ns/mnt").st_ino
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        out = open(self.workdir / "libvirtd.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([*argv_prefix, "unshare", "-m", "--propagation", "slave", "sh", "-c", SCRIPT, "sh",
                                          str(self.workdir), str(self.cache)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        finally:
            out.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors come as exceptions
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LibvirtdError(f"libvirtd exited with {self.proc.returncode}: {self._tail()}")
            if self._mntns is None:
                with contextlib.suppress(OSError):
                    ns = os.stat(f"/proc/{self.proc.pid}/ns/mnt").st_ino
                    if ns not in (self._base_mntns, os.stat("/proc/self/ns/mnt").st_ino):
                        self._mntns = ns
                        self._namespaces.add(ns)
            if self.socket.exists():
                with contextlib.suppress(libvirt.libvirtError):
                    libvirt.open(self.test_uri()).close()
                    return
            if time.monotonic() >= deadline:
                raise LibvirtdError(f"libvirtd did not answer within {timeout:g} s: {self._tail()}")
            time.sleep(0.1)

    def _tail(self) -> str:
        texts = []
        for f in (self.workdir / "libvirtd.out", self.log_file):
            with contextlib.suppress(OSError):
                texts.append(f.read_text(errors="replace")[-800:])
        return " | ".join(t.strip() for t in texts if t.strip()) or "no output"

    def _namespace_pids(self) -> list[int]:
        return [pid for pid, _ns in self._namespace_members()]

    def _namespace_members(self) -> list[tuple[int, int]]:
        if not self._namespaces:
            return []
        members = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    ns = os.stat(f"/proc/{entry.name}/ns/mnt").st_ino
                    if ns in self._namespaces:
                        members.append((int(entry.name), ns))
        return members

    def _forget_dead(self) -> None:
        """Drop the namespaces no process holds any more: they are gone, and their numbers are free."""
        alive = {ns for _pid, ns in self._namespace_members()}
        if self._mntns is not None and self.proc is not None and self.proc.poll() is None:
            alive.add(self._mntns)
        self._namespaces &= alive

    def stop(self, timeout: float = 15.0) -> None:
        """End libvirtd (TERM, then KILL), then whatever is left in its mount namespace (QEMU)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._forget_dead()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._namespace_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _alive(p)]
                time.sleep(0.05)
        self.proc = None
        self._mntns = None
        self._namespaces.clear()

    def kill(self) -> None:
        """Kill libvirtd abruptly (a crash): its socket goes away, its namespace's QEMUs stay."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._forget_dead()

    def info(self) -> dict[str, Any]:
        return {"pid": self.proc.pid if self.proc else None, "socket": str(self.socket), "workdir": str(self.workdir)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def shared_mount(path: Path) -> Iterator[Path]:
    """Make ``path`` a shared mount point (a bind of itself) for the duration of the block.

    A private libvirtd started afterwards (its namespace is a slave of this
    one) then sees filesystems mounted below ``path`` later, and their
    unmounting, as libvirtd on a systemd host does. Whatever is still
    mounted below ``path`` at the end is the caller's to unmount first.
    """
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
