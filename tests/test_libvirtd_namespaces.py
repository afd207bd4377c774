"""The private libvirtd forgets a mount namespace once no process holds it.

Namespace inode numbers are reused as soon as a namespace is gone; a stop()
that still remembered a dead one ended whoever got its number next (another
test's lab, seen as its holder or libvirtd exiting with -15).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clever_cluster.sim.libvirtd import PrivateLibvirtd

pytestmark = pytest.mark.root


def test_a_namespace_with_no_process_left_is_forgotten(tmp_path: Path) -> None:
    d = PrivateLibvirtd(tmp_path / "lv")
    try:
        # A real namespace with a process in it, and the number of one that is gone.
        holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            def ns_of(pid: int) -> int:
                return os.stat(f"/proc/{pid}/ns/mnt").st_ino

            own = os.stat("/proc/self/ns/mnt").st_ino
            live = ns_of(holder.pid)
            for _ in range(100):
                if live != own:
                    break
                subprocess.run(["sleep", "0.02"], check=True)
                live = ns_of(holder.pid)
            assert live != own
            gone = max(live, own) + 1_000_000
            d._namespaces = {live, gone}
            d._forget_dead()
            assert d._namespaces == {live}
            assert holder.pid in d._namespace_pids()
        finally:
            holder.kill()
            holder.wait(5)
        d._forget_dead()
        assert d._namespaces == set()  # its last process ended: forgotten, whoever gets the number next
    finally:
        shutil.rmtree(d.sock_dir, ignore_errors=True)
