"""Fixtures for the resource tests: a real ext4 filesystem on a loop device (the replicated
filesystem stand-in), and libvirt clients that are always closed."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon.config import FilesystemConfig
from clever_cluster.daemon.resources.filesystem import Filesystem
from clever_cluster.daemon.resources.libvirtconn import LibvirtClient
from clever_cluster.daemon.resources.mounts import find_users, read_mountinfo
from tests.conftest import require_root


@dataclasses.dataclass
class Ext4:
    image: Path
    device: Path
    mountpoint: Path

    def config(self, **kw: Any) -> FilesystemConfig:
        return FilesystemConfig(device=self.device, mountpoint=self.mountpoint, **kw)

    def filesystem(self, **kw: Any) -> Filesystem:
        return Filesystem(self.config(**kw))

    def mount(self) -> None:
        subprocess.run(["mount", "-t", "ext4", str(self.device), str(self.mountpoint)], check=True)

    def umount(self) -> None:
        subprocess.run(["umount", str(self.mountpoint)], check=True)


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def make_ext4(tmp_path: Path, size: str = "64M", mount_dir: Path | None = None) -> Iterator[Ext4]:
    """An ext4 image on a fresh loop device, with an (unmounted) mountpoint; everything undone afterwards."""
    require_root()
    image = tmp_path / "replicated.img"
    _sh("truncate", "-s", size, str(image))
    device = _sh("losetup", "-f", "--show", str(image))
    mnt = (mount_dir or tmp_path) / "mnt"
    mnt.mkdir()
    try:
        # The read-only flag outlives a detach: a loop device that another test (or the DRBD
        # simulator) left with --setro would come back read-only.
        _sh("blockdev", "--setrw", device)
        _sh("mkfs.ext4", "-q", "-F", "-L", "ccrepl", device)
        yield Ext4(image=image, device=Path(device), mountpoint=mnt)
    finally:
        _unmount_below(mnt)
        subprocess.run(["losetup", "-d", device], check=False)


def _unmount_below(mnt: Path) -> None:
    """Unmount whatever a test left at or below ``mnt`` (deepest first), ending processes that hold it."""
    real = os.path.realpath(mnt)
    for _ in range(10):
        left = [e for e in read_mountinfo() if e.mountpoint == real or e.mountpoint.startswith(real + "/")]
        if not left:
            return
        e = left[-1]
        for u in find_users(e.dev):
            if u.pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(u.pid, 9)
        subprocess.run(["umount", e.mountpoint], check=False, capture_output=True)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Ext4]:
    yield from make_ext4(tmp_path)


@pytest.fixture
async def libvirt_clients() -> AsyncIterator[Callable[..., Any]]:
    made: list[LibvirtClient] = []

    async def make(uri: str, **kw: Any) -> LibvirtClient:
        c = LibvirtClient(uri, **kw)
        made.append(c)
        await c.start()
        assert await c.wait_connected(10), c.last_error
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.close()
