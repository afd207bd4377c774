"""The filesystem step on a real ext4 loop device: mount, unmount, busy mounts, what is never touched."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from clever_cluster.daemon.resources import intent
from clever_cluster.daemon.resources.base import ResourceError, StartRequest, StopRequest
from clever_cluster.daemon.resources.drbd import DrbdStep
from clever_cluster.daemon.resources.group import GroupExecutor
from clever_cluster.daemon.resources.mounts import parse_mountinfo
from tests.resources.conftest import Ext4
from tests.resources.helpers import Gate, HungFilesystem, SimDrbd

pytestmark = pytest.mark.root
T = TypeVar("T")

START = StartRequest(token="t", takeover="cold_start")


def run(aw: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(aw)


class Ctx:
    """A bare StepContext for driving one step directly."""

    def __init__(self, stale: bool = False) -> None:
        self.notes: list[str] = []
        self.stale = stale
        self.run_id = 1
        self.start = START
        self.stop = StopRequest(token=None)

    def check_gate(self) -> None:
        from clever_cluster.daemon.resources.base import GateStale

        if self.stale:
            raise GateStale("stale")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fail(self, resource: str, reason: str, vm: str | None = None) -> None:
        raise AssertionError("not expected here")


def test_parse_mountinfo_unescapes_and_keeps_order() -> None:
    text = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            "35 22 7:3 / /srv/my\\040vms rw,noatime - ext4 /dev/loop3 rw\n"
            "garbage line\n"
            "36 35 0:40 / /srv/my\\040vms rw - tmpfs tmpfs rw\n")
    entries = parse_mountinfo(text)
    assert [(e.mountpoint, e.source, e.dev) for e in entries] == [
        ("/", "/dev/sda1", os.makedev(8, 1)), ("/srv/my vms", "/dev/loop3", os.makedev(7, 3)), ("/srv/my vms", "tmpfs", os.makedev(0, 40))]


def test_mount_is_idempotent_and_unmount_too(ext4: Ext4) -> None:
    fs = ext4.filesystem()
    assert not fs.state().mounted and fs.replicated_dev() is None
    ctx = Ctx()
    run(fs.start(ctx))
    assert fs.state().mounted
    assert fs.replicated_dev() == os.stat(ext4.mountpoint).st_dev == os.stat(ext4.device).st_rdev
    (ext4.mountpoint / "data").write_text("vm disk")
    run(fs.start(ctx))
    assert ctx.notes[-1].endswith("already mounted")
    run(fs.stop(ctx))
    assert not fs.state().mounted and not (ext4.mountpoint / "data").exists()
    run(fs.stop(ctx))
    assert ctx.notes[-1].endswith("not mounted")
    run(fs.start(ctx))
    assert (ext4.mountpoint / "data").read_text() == "vm disk"


def test_mount_waits_for_a_valid_gate(ext4: Ext4) -> None:
    fs = ext4.filesystem()
    from clever_cluster.daemon.resources.base import GateStale

    with pytest.raises(GateStale):
        run(fs.start(Ctx(stale=True)))
    assert not fs.state().mounted


def _holder(path: Path, ignore_term: bool) -> subprocess.Popen[bytes]:
    code = ("import signal, sys, time\n"
            f"if {ignore_term}: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"f = open({str(path)!r})\nprint('ready', flush=True)\ntime.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    return p


def test_busy_mount_refused_without_force_and_ended_with_force(ext4: Ext4) -> None:
    ctx = Ctx()
    fs = ext4.filesystem(force_unmount=False)
    run(fs.start(ctx))
    (ext4.mountpoint / "disk.qcow2").write_text("x")
    polite = _holder(ext4.mountpoint / "disk.qcow2", ignore_term=False)
    stubborn = _holder(ext4.mountpoint / "disk.qcow2", ignore_term=True)
    worker = subprocess.Popen(["sleep", "600"], cwd=ext4.mountpoint)
    try:
        with pytest.raises(ResourceError, match=rf"busy, used by .*\[{polite.pid}\].*force_unmount is off"):
            run(fs.stop(ctx))
        assert fs.state().mounted
        assert polite.poll() is None and stubborn.poll() is None and worker.poll() is None

        fs = ext4.filesystem(force_unmount=True, kill_grace=0.5)
        run(fs.stop(ctx))
        assert not fs.state().mounted
        assert polite.wait(5) == -signal.SIGTERM
        assert worker.wait(5) == -signal.SIGTERM
        assert stubborn.wait(5) == -signal.SIGKILL  # ignored TERM, so KILL after kill_grace
        assert any("ended processes using" in n for n in ctx.notes)
    finally:
        for p in (polite, stubborn, worker):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_never_unmounts_anything_else(ext4: Ext4) -> None:
    ctx = Ctx()
    fs = ext4.filesystem()
    # Something else on the mountpoint: start refuses, stop leaves it alone.
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ext4.mountpoint)], check=True)
    with pytest.raises(ResourceError, match="not mounting over it"):
        run(fs.start(ctx))
    run(fs.stop(ctx))
    assert fs.state().top is not None and fs.state().top.fstype == "tmpfs"  # type: ignore[union-attr]
    subprocess.run(["umount", str(ext4.mountpoint)], check=True)
    # Ours, with another mount stacked on top, or one inside it: reported, not unmounted.
    run(fs.start(ctx))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ext4.mountpoint)], check=True)
    with pytest.raises(ResourceError, match="mounted on top"):
        run(fs.stop(ctx))
    subprocess.run(["umount", str(ext4.mountpoint)], check=True)
    (ext4.mountpoint / "sub").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ext4.mountpoint / "sub")], check=True)
    with pytest.raises(ResourceError, match="mounted inside"):
        run(fs.stop(ctx))
    assert fs.state().mounted and fs.state().inside == (str(ext4.mountpoint / "sub"),)
    subprocess.run(["umount", str(ext4.mountpoint / "sub")], check=True)
    run(fs.stop(ctx))


def test_mount_failure_rolls_back_the_drbd_step(ext4: Ext4) -> None:
    log: list[tuple[str, str]] = []
    drbd = SimDrbd(log)
    fs = ext4.filesystem(fstype="xfs")  # the device holds ext4: mount fails
    ex = GroupExecutor([DrbdStep(drbd, 5), fs], Gate())
    rec = run(ex.start(START))
    assert rec.outcome == "rolled_back"
    assert log == [("promote", "drbd"), ("demote", "drbd")] and drbd.current == "Secondary"
    assert "mounting" in (rec.error or "") and str(ext4.device) in (rec.error or "")
    assert [(f.resource, f.action) for f in ex.failures] == [("filesystem", "start")]
    assert not fs.state().mounted


def test_fsck_before_mount_when_configured(ext4: Ext4) -> None:
    ctx = Ctx()
    fs = ext4.filesystem(fsck=True)
    run(fs.start(ctx))
    assert fs.state().mounted and any(n.startswith("fsck exit 0") for n in ctx.notes)


def test_admin_intent_copy_only_on_the_mounted_filesystem(ext4: Ext4) -> None:
    fs = ext4.filesystem()
    with pytest.raises(ResourceError, match="not mounted"):
        intent.write_intent_copy(fs, {"version": 3, "target": "node1"})
    assert not (ext4.mountpoint / intent.INTENT_DIR).exists()  # nothing written on the root filesystem
    ext4.mount()
    assert intent.read_intent_copy(fs) is None
    path = intent.write_intent_copy(fs, {"version": 3, "target": "node1", "bans": []})
    assert path.parent.parent == ext4.mountpoint
    assert intent.read_intent_copy(fs) == {"version": 3, "target": "node1", "bans": []}
    path.write_text("{not json")
    with pytest.raises(ResourceError, match="not valid JSON"):
        intent.read_intent_copy(fs)
    intent.write_intent_copy(fs, {"version": 4})
    ext4.umount()
    with pytest.raises(ResourceError, match="not mounted"):
        intent.read_intent_copy(fs)
    ext4.mount()
    assert intent.read_intent_copy(fs) == {"version": 4}


def test_force_unmount_ends_nobody_while_the_device_is_also_mounted_elsewhere(ext4: Ext4, tmp_path: Path) -> None:
    """Regression (red team): users were found by device number, so with the replicated device also
    mounted elsewhere (a bind mount of one of its directories), a busy unmount sent TERM and KILL to
    processes that used only that other mount; and the unmount could not free DRBD anyway."""
    ctx = Ctx()
    fs = ext4.filesystem(force_unmount=True, kill_grace=0.5)
    run(fs.start(ctx))
    (ext4.mountpoint / "iso").mkdir()
    other = tmp_path / "isos"
    other.mkdir()
    subprocess.run(["mount", "--bind", str(ext4.mountpoint / "iso"), str(other)], check=True)
    vm = subprocess.Popen(["sleep", "600"], cwd=ext4.mountpoint)  # keeps our mount busy
    bystander = subprocess.Popen(["sleep", "600"], cwd=other)  # uses only the other mount
    try:
        with pytest.raises(ResourceError, match=rf"also mounted on {other}"):
            run(fs.stop(ctx))
        assert bystander.poll() is None, "a process that only used the other mount was signalled"
        assert vm.poll() is None
        assert fs.state().mounted
    finally:
        for p in (vm, bystander):
            p.kill()
            p.wait()
        subprocess.run(["umount", str(other)], check=False)


def test_a_mount_hidden_under_the_replicated_filesystem_does_not_block_its_unmount(ext4: Ext4) -> None:
    """Regression (red team): something mounted at a path below the mountpoint *before* the
    replicated filesystem was mounted over it (a leftover on the standby) is hidden, not inside it,
    and does not keep it busy; it was taken for a mount inside, so every stop failed and the node
    could never give its resources up."""
    ctx = Ctx()
    hidden = ext4.mountpoint / "save"
    hidden.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(hidden)], check=True)
    fs = ext4.filesystem()
    run(fs.start(ctx))
    assert fs.state().mounted and fs.state().inside == ()
    run(fs.stop(ctx))
    assert fs.state().ours is None
    # A mount really inside it still stops the unmount.
    run(fs.start(ctx))
    (ext4.mountpoint / "sub").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ext4.mountpoint / "sub")], check=True)
    assert fs.state().inside == (str(ext4.mountpoint / "sub"),)
    with pytest.raises(ResourceError, match="mounted inside"):
        run(fs.stop(ctx))


def test_busy_unmount_is_not_hung_by_another_process_on_a_hung_filesystem(ext4: Ext4, tmp_path: Path) -> None:
    """Regression (red team): finding the users of a busy mount stat'ed every open file of every
    process; one process with a file open on an unrelated filesystem that stopped answering (a dead
    NFS server) hung that search, and each retry left one more thread stuck in the default pool
    until the daemon's worker threads ran out."""
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    hung = HungFilesystem(nfs)
    code = (f"import os, time\nfd = os.open({str(nfs)!r}, os.O_PATH)\n"  # O_PATH: no request to the server
            "print('ready', flush=True)\ntime.sleep(600)\n")
    bystander = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    ctx = Ctx()
    fs = ext4.filesystem(force_unmount=True, kill_grace=0.5, unmount_timeout=2.0)
    run(fs.start(ctx))
    vm = subprocess.Popen(["sleep", "600"], cwd=ext4.mountpoint)
    safety = threading.Timer(30, hung.release)  # the test ends even if the search hangs
    safety.start()
    try:
        assert bystander.stdout is not None and bystander.stdout.readline() == b"ready\n"

        async def stop() -> None:
            async with asyncio.timeout(20):
                await fs.stop(ctx)

        run(stop())
        assert not hung.released, "the search for users waited for the hung filesystem"
        assert vm.wait(5) == -signal.SIGTERM and bystander.poll() is None
        assert fs.state().ours is None
    finally:
        safety.cancel()
        for p in (vm, bystander):
            p.kill()
            p.wait()
        hung.close()
