"""`make demo` runs the main job end to end on the two-node lab and leaves nothing behind.

The demo runs as a subprocess, as `make demo` starts it; its output is the
contract for a newcomer: the handover and failover timelines with their
phases, the rejoin as standby, the safety check, the end. The leftovers are
looked up independently of the demo's own check, by the names its lab uses
(``sim.netns`` namespaces ``cc<pid>_*``, the lab directory
``/tmp/ccnl<pid>-*`` that every configuration, loop device and mount of the
lab lives under).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clever_cluster.sim import netns
from clever_cluster.sim.nodelab import lab as nodelab
from tests.conftest import require_root

DEMO = [sys.executable, "-m", "clever_cluster.sim.demo"]


def leftovers(pid: int) -> list[str]:
    """What the demo process ``pid`` left behind: namespaces, its lab directory, loop devices, mounts, processes."""
    tag = f"/{nodelab.STALE_PREFIX}{pid}-"
    left = [f"namespace {ns}" for ns in netns.list_netns() if ns.startswith(f"cc{pid}_")]
    left += [f"directory {d}" for d in Path(tempfile.gettempdir()).glob(f"{nodelab.STALE_PREFIX}{pid}-*")]
    r = subprocess.run(["losetup", "-n", "-l", "-O", "NAME,BACK-FILE"], capture_output=True, text=True, check=False)
    left += [f"loop device {line.strip()}" for line in r.stdout.splitlines() if tag in line]
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            mounts = Path(entry.path, "mountinfo").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        left += [f"mount in pid {entry.name}: {m}" for m in mounts.splitlines() if tag in m]
        if tag in cmdline:
            left.append(f"process {entry.name}: {cmdline}")
    return sorted(set(left))


@pytest.mark.root
@pytest.mark.slow
def test_demo_hands_over_fails_over_rejoins_and_leaves_nothing() -> None:
    require_root()
    p = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        p.terminate()  # the demo cleans up on SIGTERM
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        err += "\n(the demo did not finish within 600 s)"
    left = leftovers(p.pid)
    if left:  # clean the machine for the next tests, then fail
        netns.cleanup_stale()
        nodelab.cleanup_stale()
    assert p.returncode == 0, out + err
    assert not left, "the demo left behind:\n" + "\n".join(left)
    # The handover: its timeline from `clevervm history` with per-phase times, VMs restored from their save images.
    handover = out[out.index("== 3. Planned handover"):out.index("== 4. Failover")]
    assert re.search(r"Timeline handover_out started .*: handed over, \d+\.\d+ s", handover), handover
    assert re.search(r"handover_decided -> demote_started: \d+\.\d{3} s", handover), handover
    assert re.search(r"Timeline handover_in started .*: active here", handover), handover
    assert "plc1: restored from its save image" in handover
    # The failover: a fence phase between the loss and the promotion, VMs cold-booted.
    failover = out[out.index("== 4. Failover"):out.index("== 5.")]
    assert re.search(r"Timeline failover started .*: active here, \d+\.\d+ s", failover), failover
    assert re.search(r"peer_lost -> fence_started: \d+\.\d{3} s", failover), failover
    assert re.search(r"fence_started -> fence_confirmed: \d+\.\d{3} s", failover), failover
    assert re.search(r"fence_confirmed -> promote_started: \d+\.\d{3} s", failover), failover
    assert "plc1: cold-booted" in failover
    # The fenced node is back, as the standby, with the survivor active.
    rejoin = out[out.index("== 5."):out.index("== 6.")]
    survivor = re.search(r"Fence record on (node\d)", failover)
    assert survivor is not None
    assert re.search(r"Node node\d: phase SECONDARY", rejoin) and f"Active node: {survivor.group(1)}" in rejoin, rejoin
    assert "Check passed: never two active, no acknowledged write lost" in out
    assert "Nothing is left" in out
    assert re.search(r"== demo finished in \d+ s\s*$", out), out[-2000:]


def test_demo_refuses_qemu_mode_it_cannot_run_with_a_clear_message() -> None:
    if os.geteuid() != 0:
        pytest.skip("the root check comes first")
    r = subprocess.run(DEMO, capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "DEMO_QEMU": "1"})
    assert r.returncode == 2 and "DEMO_QEMU=1 is not supported" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_demo_refuses_to_run_without_root_with_a_clear_message() -> None:
    argv = DEMO
    if os.geteuid() == 0:  # drop to nobody, if nobody can read this checkout and its .venv
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *DEMO]
        probe = subprocess.run([*argv[:-2], "-c", "import clever_cluster.sim.demo"], capture_output=True, timeout=60, check=False)
        if probe.returncode != 0:
            pytest.skip("user nobody cannot read this checkout")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "the demo needs root" in r.stderr and "sudo make demo" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
