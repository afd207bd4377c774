"""A tiny QEMU guest for the save/restore proof: Debian's kernel and a busybox initramfs.

The guest's init prints ``GUEST-BOOTED`` once, then ``tick N UPTIME`` every
second on the serial console. A guest restored from a save image carries on
counting; a guest that cold-boots prints ``GUEST-BOOTED`` again and starts
at ``tick 1``. So the console log shows whether the memory survived.

Artifacts are cached (``CLEVER_CACHE_DIR`` or ``<repo>/.cache``, git-ignored):
the kernel is taken from the ``linux-image-*-amd64`` package that
``linux-image-amd64`` depends on (``apt-get download`` and unpacked, never
installed: no initramfs-tools, no postinst), the initramfs is rebuilt when
its init script or busybox changes. A lock file keeps concurrent test runs
from building the same files twice.

Needs Debian's ``busybox-static`` and ``cpio`` (scripts/apt-packages.txt).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "sleep", "mount", "cat")

INIT = """#!/bin/sh
mount -t proc proc /proc
echo GUEST-BOOTED
i=0
while true; do
  i=$((i+1))
  read up _ < /proc/uptime
  echo "tick $i $up"
  sleep 1
done
"""


class GuestBuildError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    cmdline: str = "console=ttyS0 quiet panic=-1"


def cache_dir() -> Path:
    env = os.environ.get("CLEVER_CACHE_DIR")
    if env:
        return Path(env)
    if (REPO / "pyproject.toml").exists():
        return REPO / ".cache"
    return Path.home() / ".cache" / "clever-cluster"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def kernel_package() -> str:
    """The versioned kernel package behind ``linux-image-amd64`` (refreshing apt's lists once if needed)."""
    for attempt in range(2):
        r = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=False)
        m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\b", r.stdout)
        if m:
            return m.group(1)
        if attempt == 0:
            _run(["apt-get", "update", "-qq"])
    raise GuestBuildError("apt knows no linux-image-amd64 package (is a Debian mirror configured?)")


def _kernel(cache: Path) -> Path:
    existing = sorted(cache.glob("vmlinuz-*"))
    if existing:
        return existing[-1]
    pkg = kernel_package()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt user downloads into it when it can
        _run(["apt-get", "download", "-q", pkg], cwd=Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise GuestBuildError(f"apt-get download {pkg} left no .deb")
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
        extract = subprocess.run(["tar", "-x", "-C", tmp, "--wildcards", "./boot/vmlinuz-*"], stdin=tar.stdout,
                                 capture_output=True, check=False)
        if tar.stdout is not None:
            tar.stdout.close()
        if tar.wait() != 0 or extract.returncode != 0:
            raise GuestBuildError(f"unpacking the kernel from {debs[0].name} failed: {extract.stderr.decode().strip()}")
        found = list((Path(tmp) / "boot").glob("vmlinuz-*"))
        if not found:
            raise GuestBuildError(f"{debs[0].name} holds no /boot/vmlinuz-*")
        target = cache / found[0].name
        shutil.move(found[0], target)
    return target


def _initrd(cache: Path) -> Path:
    if not BUSYBOX.exists():
        raise GuestBuildError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    st = BUSYBOX.stat()
    key = hashlib.sha256(f"{INIT}|{APPLETS}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache / f"initrd-{key}.gz"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "proc", "dev"):
            (root / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for applet in APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                                 input=("\n".join([".", *names]) + "\n").encode(), capture_output=True, check=False)
        if archive.returncode != 0:
            raise GuestBuildError(f"cpio failed: {archive.stderr.decode().strip()}")
        partial = Path(tmp) / "initrd.gz"
        partial.write_bytes(gzip.compress(archive.stdout, compresslevel=1))
        os.replace(partial, target)
    return target


def build_guest(cache: Path | None = None) -> Guest:
    """The kernel and initramfs, built on first use and cached."""
    cache = (cache or cache_dir()) / "guest"
    with _locked(cache):
        return Guest(kernel=_kernel(cache), initrd=_initrd(cache))


def domain_xml(name: str, uuid: str, guest: Guest, console_log: Path, memory_mib: int = 128, disk: Path | None = None) -> str:
    """A libvirt domain for the guest under QEMU's software emulation (TCG), console to a file.

    The console file is appended to (``append='on'``), so the log of a
    restored guest continues the log of the saved one. ``disk`` attaches a
    raw file as a virtio disk (the guest does not use it; QEMU opens it, as
    it would a real VM's disk on the replicated filesystem).
    """
    log = escape(str(console_log))
    disk_xml = (f"    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{escape(str(disk))}'/>"
                "<target dev='vda' bus='virtio'/></disk>\n") if disk else ""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(str(guest.kernel))}</kernel>
    <initrd>{escape(str(guest.initrd))}</initrd>
    <cmdline>{escape(guest.cmdline)}</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{disk_xml}    <serial type='file'><source path='{log}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{log}' append='on'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def ticks(console_log: Path) -> list[int]:
    """The tick numbers of the complete lines printed so far, in order.

    A save can freeze the guest in the middle of a line; that line counts
    once it is complete (after the restore), never as a shorter number.
    """
    try:
        text = console_log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [int(m.group(1)) for m in re.finditer(r"^tick (\d+) [0-9.]+\r?\n", text, re.M)]


def boots(console_log: Path) -> int:
    try:
        return console_log.read_text(errors="replace").count("GUEST-BOOTED")
    except FileNotFoundError:
        return 0
