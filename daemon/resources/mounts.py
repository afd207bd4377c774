"""Reading the mount table and finding (and ending) the processes that use a mount.

- :func:`parse_mountinfo` reads ``/proc/self/mountinfo`` text (pure).
- :func:`find_users` lists the processes whose working directory, root,
  executable, open files or mapped files live on a filesystem, identified by
  its device number (``st_dev``), so a path that merely looks alike never
  matches.
- :func:`signal_user` signals one such process through a pidfd after
  checking again that it still uses the filesystem, so a recycled PID is
  never hit.

Invariants: this module never signals PID 1 or its own process, and never
signals a process it did not just see using the filesystem. Looking at a
process never waits for the filesystems it uses (device numbers come from
the kernel's cache, so an unrelated hung network mount cannot hang it).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import struct
from pathlib import Path

PROC = Path("/proc")


@dataclasses.dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str

    @property
    def dev(self) -> int:
        return os.makedev(self.major, self.minor)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Entries in kernel order (later entries are mounted on top of earlier ones). Malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        parts = line.split(" ")
        try:
            sep = parts.index("-", 6)
            major, minor = parts[2].split(":")
            entries.append(MountEntry(
                mount_id=int(parts[0]), parent_id=int(parts[1]), major=int(major), minor=int(minor),
                root=_unescape(parts[3]), mountpoint=_unescape(parts[4]), options=parts[5],
                fstype=parts[sep + 1], source=_unescape(parts[sep + 2]),
            ))
        except (ValueError, IndexError):
            continue
    return entries


def read_mountinfo(path: Path = PROC / "self" / "mountinfo") -> list[MountEntry]:
    return parse_mountinfo(Path(path).read_text())


# --------------------------------------------------------------------------- users of a mount


@dataclasses.dataclass(frozen=True)
class MountUser:
    pid: int
    comm: str
    how: str  # "cwd", "root", "exe", "open file", "mapped file"

    def __str__(self) -> str:
        return f"{self.comm}[{self.pid}] ({self.how})"


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_AT_STATX_DONT_SYNC = 0x4000
_STX_DEV = struct.Struct("<II")  # stx_dev_major, stx_dev_minor
_STX_DEV_OFFSET = 136
_STATX_SIZE = 256


def _dev_of(path: str) -> int:
    """``st_dev`` of what a /proc link points to, from what the kernel has cached.

    A plain stat asks the target's filesystem for fresh attributes: a process
    with a file open on a network filesystem whose server died would hang the
    search. statx with AT_STATX_DONT_SYNC never waits for it (the device
    number belongs to the mount, not to the attributes).
    """
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _libc.statx(_AT_FDCWD, os.fsencode(path), _AT_STATX_DONT_SYNC, 0, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    major, minor = _STX_DEV.unpack_from(buf, _STX_DEV_OFFSET)
    return os.makedev(major, minor)


def _uses(pid_dir: Path, dev: int) -> str | None:
    """How the process uses the filesystem ``dev``, or None. Raises OSError when the process is gone."""
    for link in ("cwd", "root", "exe"):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if _dev_of(str(pid_dir / link)) == dev:
                return link
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in os.scandir(pid_dir / "fd"):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                if _dev_of(fd.path) == dev:
                    return "open file"
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for line in (pid_dir / "maps").read_text().splitlines():
            fields = line.split(None, 5)
            if len(fields) >= 5 and fields[4] != "0" and fields[3] == want:
                return "mapped file"
    return None


def _comm(pid_dir: Path) -> str:
    try:
        return (pid_dir / "comm").read_text().strip()
    except OSError:
        return "?"


def find_users(dev: int, proc: Path = PROC) -> list[MountUser]:
    """Processes (visible in ``proc``) that use the filesystem whose ``st_dev`` is ``dev``."""
    users = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid_dir = Path(entry.path)
        try:
            how = _uses(pid_dir, dev)
        except OSError:
            continue
        if how is not None:
            users.append(MountUser(pid=int(entry.name), comm=_comm(pid_dir), how=how))
    return users


def signal_user(user: MountUser, dev: int, sig: signal.Signals, proc: Path = PROC) -> bool:
    """Send ``sig`` to ``user`` if it still uses ``dev``. Returns whether it was sent.

    The pidfd is opened before the re-check, so the signal goes to the process
    that was checked even if the PID is recycled in between.
    """
    if user.pid in (1, os.getpid()):
        return False
    try:
        pidfd = os.pidfd_open(user.pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        if _uses(proc / str(user.pid), dev) is None:
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except (ProcessLookupError, OSError):
        return False
    finally:
        os.close(pidfd)
