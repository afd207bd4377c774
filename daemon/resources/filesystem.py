"""The filesystem step: mount the replicated filesystem, and unmount it (only it).

State comes from ``/proc/self/mountinfo``: the filesystem is *mounted* when
the top-most mount at ``filesystem.mountpoint`` is ``filesystem.device``
(compared by device number, not by name). :meth:`Filesystem.replicated_dev`
gives the device number other parts check before they write to the
replicated filesystem (save images, the admin-intent copy), so nothing ever
lands on the root filesystem under an empty mountpoint.

Invariants:
- Only ``filesystem.mountpoint`` is ever unmounted, and only while the
  top-most mount there is ``filesystem.device``. Something mounted on top of
  it or inside it is reported, never unmounted; no lazy unmount.
- Processes using the mount are ended (TERM, then KILL after
  ``kill_grace``) only when ``force_unmount`` is on; otherwise a busy mount
  is a failure that names them. Nobody is ended while the device is also
  mounted elsewhere (users are found by device number, which cannot tell
  the two mounts apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import stat
from pathlib import Path

from .. import logsetup
from ..config import FilesystemConfig
from .base import ResourceError, StepContext
from .mounts import MountEntry, MountUser, find_users, read_mountinfo, signal_user

log = logsetup.get("daemon.resources.filesystem")


@dataclasses.dataclass(frozen=True)
class MountState:
    mounted: bool  # our device is the top-most mount at the mountpoint
    ours: MountEntry | None  # our device's mount at the mountpoint, even if covered
    top: MountEntry | None  # whatever is mounted on top at the mountpoint
    inside: tuple[str, ...]  # mounts on our mount, below the mountpoint (they keep it busy; one it hides does not)
    elsewhere: tuple[str, ...]  # other mountpoints of our device


@dataclasses.dataclass(frozen=True)
class CommandResult:
    rc: int
    out: str
    err: str

    def why(self) -> str:
        return (self.err or self.out).strip().replace("\n", " ") or f"exit code {self.rc}"


async def run_command(argv: list[str], timeout: float) -> CommandResult:
    """Run a command with a deadline; on the deadline its process group is killed and ResourceError raised."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise ResourceError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return CommandResult(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


class Filesystem:
    """Mount state and the start/stop step of the replicated filesystem."""

    name = "filesystem"

    def __init__(self, cfg: FilesystemConfig, *, mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
        self.cfg = cfg
        self._mountinfo = mountinfo
        self.mountpoint = Path(os.path.realpath(cfg.mountpoint))

    @property
    def stop_attempts(self) -> int:
        return self.cfg.unmount_retries

    def start_budget(self) -> float:
        return self.cfg.mount_timeout

    def stop_budget(self) -> float:
        return 2 * self.cfg.unmount_timeout + self.cfg.kill_grace + 10.0

    # ------------------------------------------------------------------ state

    def device_number(self) -> int:
        try:
            st = os.stat(self.cfg.device)
        except OSError as e:
            raise ResourceError(f"cannot use filesystem.device {self.cfg.device}: {e.strerror}") from None
        if not stat.S_ISBLK(st.st_mode):
            raise ResourceError(f"filesystem.device {self.cfg.device} is not a block device")
        return st.st_rdev

    def state(self) -> MountState:
        dev = self.device_number()
        mp = str(self.mountpoint)
        entries = read_mountinfo(self._mountinfo)
        here = [e for e in entries if e.mountpoint == mp]
        ours = next((e for e in reversed(here) if e.dev == dev), None)
        top = here[-1] if here else None
        below = _descendants(entries, ours.mount_id) if ours is not None else set()
        inside = tuple(e.mountpoint for e in entries
                       if e.mount_id in below and e.mountpoint.startswith(mp.rstrip("/") + "/"))
        elsewhere = tuple(e.mountpoint for e in entries if e.dev == dev and e.mountpoint != mp)
        return MountState(mounted=top is not None and top is ours, ours=ours, top=top, inside=inside, elsewhere=elsewhere)

    def replicated_dev(self) -> int | None:
        """The replicated filesystem's ``st_dev`` while it is mounted here, else None."""
        try:
            st = self.state()
        except (ResourceError, OSError):
            return None
        return st.ours.dev if st.mounted and st.ours is not None else None

    def on_replicated(self, path: Path) -> bool:
        """Whether ``path`` (which must exist) is on the mounted replicated filesystem, by device number."""
        dev = self.replicated_dev()
        if dev is None:
            return False
        try:
            return os.stat(path).st_dev == dev
        except OSError:
            return False

    # ------------------------------------------------------------------ start

    async def start(self, ctx: StepContext) -> None:
        st = self.state()
        if st.mounted:
            ctx.note(f"{self.mountpoint} already mounted")
            return
        if st.top is not None:
            raise ResourceError(f"{st.top.source} ({st.top.fstype}) is mounted on {self.mountpoint}, not {self.cfg.device}; not mounting over it")
        if not self.mountpoint.is_dir():
            self.mountpoint.mkdir(parents=True, exist_ok=True)
        if self.cfg.fsck:
            r = await run_command(["fsck", "-T", "-t", self.cfg.fstype, "-p", str(self.cfg.device)], self.cfg.mount_timeout)
            if r.rc >= 4:
                raise ResourceError(f"fsck of {self.cfg.device} found errors it could not fix (exit {r.rc}): {r.why()}")
            ctx.note(f"fsck exit {r.rc}")
        argv = ["mount", "-t", self.cfg.fstype]
        if self.cfg.options:
            argv += ["-o", self.cfg.options]
        argv += [str(self.cfg.device), str(self.mountpoint)]
        ctx.check_gate()
        r = await run_command(argv, self.cfg.mount_timeout)
        if r.rc != 0:
            raise ResourceError(f"mounting {self.cfg.device} on {self.mountpoint} failed: {r.why()}")
        if not self.state().mounted:
            raise ResourceError(f"mount returned success but {self.cfg.device} is not mounted on {self.mountpoint}")
        ctx.note(f"mounted {self.cfg.device} on {self.mountpoint}")

    # ------------------------------------------------------------------ stop

    async def stop(self, ctx: StepContext) -> None:
        """One unmount attempt (the executor retries ``unmount_retries`` times)."""
        st = self.state()
        if st.ours is None:
            self._check_elsewhere(st)
            ctx.note(f"{self.mountpoint} not mounted")
            return
        if not st.mounted and st.top is not None:
            raise ResourceError(f"{st.top.source} is mounted on top of {self.mountpoint}; clever-cluster does not unmount it")
        if st.inside:
            raise ResourceError(f"{', '.join(st.inside)} mounted inside {self.mountpoint} keeps it busy; clever-cluster does not unmount it")
        r = await run_command(["umount", str(self.mountpoint)], self.cfg.unmount_timeout)
        if r.rc != 0:
            # Users are found by device number, which cannot tell our mount from another mount of the
            # device; with one, ending them could hit processes that use only that one, and DRBD could
            # not be demoted anyway.
            self._check_elsewhere(st)
            users = await asyncio.to_thread(find_users, st.ours.dev)
            if not users:
                raise ResourceError(f"unmounting {self.mountpoint} failed: {r.why()}")
            who = ", ".join(map(str, users))
            if not self.cfg.force_unmount:
                raise ResourceError(f"{self.mountpoint} is busy, used by {who}; filesystem.force_unmount is off, so they keep running")
            ctx.note(f"ended processes using {self.mountpoint}: {who}")
            log.warning("%s is busy; ending the processes that use it: %s", self.mountpoint, who)
            await self._end_users(st.ours.dev)
            r = await run_command(["umount", str(self.mountpoint)], self.cfg.unmount_timeout)
            if r.rc != 0:
                left = await asyncio.to_thread(find_users, st.ours.dev)
                raise ResourceError(f"unmounting {self.mountpoint} failed after ending its users: {r.why()}"
                                    + (f"; still used by {', '.join(map(str, left))}" if left else ""))
        st = self.state()
        if st.ours is not None:
            raise ResourceError(f"umount returned success but {self.cfg.device} is still mounted on {self.mountpoint}")
        self._check_elsewhere(st)
        ctx.note(f"unmounted {self.mountpoint}")

    def _check_elsewhere(self, st: MountState) -> None:
        if st.elsewhere:
            raise ResourceError(f"{self.cfg.device} is also mounted on {', '.join(st.elsewhere)} (not by clever-cluster); "
                                "DRBD cannot be demoted until that is unmounted")

    async def _end_users(self, dev: int) -> None:
        """TERM every user, KILL those left after ``kill_grace``, and wait until they are gone."""
        await self._signal_all(dev, signal.SIGTERM)
        if await self._wait_unused(dev, self.cfg.kill_grace):
            return
        await self._signal_all(dev, signal.SIGKILL)
        await self._wait_unused(dev, 5.0)

    @staticmethod
    async def _signal_all(dev: int, sig: signal.Signals) -> list[MountUser]:
        users = await asyncio.to_thread(find_users, dev)
        return [u for u in users if await asyncio.to_thread(signal_user, u, dev, sig)]

    @staticmethod
    async def _wait_unused(dev: int, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if not await asyncio.to_thread(find_users, dev):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)


def _descendants(entries: list[MountEntry], root: int) -> set[int]:
    """Mount ids of every mount made on ``root`` or, in turn, on those (by parent id, not by path)."""
    ids, changed = {root}, True
    while changed:
        changed = False
        for e in entries:
            if e.parent_id in ids and e.mount_id not in ids:
                ids.add(e.mount_id)
                changed = True
    ids.discard(root)
    return ids
