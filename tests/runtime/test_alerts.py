"""Alert hooks run a real program with the event in its environment, off the loop."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from clever_cluster.daemon.alerts import AlertDispatcher
from clever_cluster.daemon.config import AlertConfig

RECORDER = """#!/bin/sh
env | grep -E '^(CLEVER_ALERT_|PATH=|HOME=|NOTIFY_SOCKET=)' | sort > "{out}/$CLEVER_ALERT_SEQUENCE.env"
"""


def recorder(tmp_path: Path, body: str = RECORDER) -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    prog = tmp_path / "hook.sh"
    prog.write_text(body.format(out=out))
    prog.chmod(0o755)
    return prog


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


async def test_hook_receives_event_environment(tmp_path: Path) -> None:
    prog = recorder(tmp_path)
    d = AlertDispatcher([AlertConfig(name="rec", program=prog)], "c1", "node1", "node2")
    d.start()
    os.environ["NOTIFY_SOCKET"] = "/should/not/leak"
    try:
        ev = d.raise_alert("peer_lost", "peer_lost_fencing", "no heartbeat on bond0, lan for 1.04 s", 1_700_000_000.25)
        await d.stop()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    env = read_env(tmp_path / "out" / f"{ev.sequence}.env")
    assert env["CLEVER_ALERT_KIND"] == "peer_lost"
    assert env["CLEVER_ALERT_REASON"] == "peer_lost_fencing"
    assert env["CLEVER_ALERT_MESSAGE"] == "no heartbeat on bond0, lan for 1.04 s"
    assert env["CLEVER_ALERT_NODE"] == "node1" and env["CLEVER_ALERT_PEER"] == "node2" and env["CLEVER_ALERT_CLUSTER"] == "c1"
    assert env["CLEVER_ALERT_TIMESTAMP"] == "2023-11-14T22:13:20.250Z"
    assert env["CLEVER_ALERT_TIMESTAMP_EPOCH"] == "1700000000.250"
    assert env["CLEVER_ALERT_HOOK"] == "rec"
    assert "NOTIFY_SOCKET" not in env and "HOME" not in env
    assert d.stats()["rec"].runs == 1 and d.stats()["rec"].failures == 0


async def test_kinds_filter_and_order(tmp_path: Path) -> None:
    prog = recorder(tmp_path)
    d = AlertDispatcher([AlertConfig(name="rec", program=prog, kinds=("fenced", "split_brain"))], "c1", "n1", "n2")
    d.start()
    kinds = ["peer_lost", "fenced", "gateway_lost", "split_brain"]
    events = [d.raise_alert(k, "r", "m", time.time()) for k in kinds]
    await d.stop()
    written = sorted((tmp_path / "out").iterdir(), key=lambda p: int(p.stem))
    assert [read_env(p)["CLEVER_ALERT_KIND"] for p in written] == ["fenced", "split_brain"]
    assert [int(p.stem) for p in written] == [events[1].sequence, events[3].sequence]


async def test_hanging_hook_is_killed_and_loop_keeps_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    prog = recorder(tmp_path, f"#!/bin/sh\necho $$ > {pidfile}\nsleep 600 &\nwait\n")
    d = AlertDispatcher([AlertConfig(name="slow", program=prog, timeout=1.0)], "c", "n1", "n2")
    d.start()
    d.raise_alert("fenced", "r", "m", time.time())
    # The loop stays responsive while the hook hangs.
    ticks = 0
    while not pidfile.exists() or ticks < 5:
        await asyncio.sleep(0.01)
        ticks += 1
    await d.stop(drain_timeout=10)
    assert d.stats()["slow"].timeouts == 1
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


async def test_failing_and_missing_programs_are_counted(tmp_path: Path) -> None:
    bad = recorder(tmp_path, "#!/bin/sh\necho oops >&2\nexit 3\n")
    d = AlertDispatcher([AlertConfig(name="bad", program=bad), AlertConfig(name="gone", program=tmp_path / "nope")], "c", "n1", "n2")
    d.start()
    d.raise_alert("blocked", "r", "m", time.time())
    await d.stop()
    assert d.stats()["bad"].failures == 1 and d.stats()["gone"].failures == 1


async def test_flood_drops_oldest_not_memory(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    prog = recorder(tmp_path, f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n" + RECORDER.split("\n", 1)[1])
    d = AlertDispatcher([AlertConfig(name="rec", program=prog, timeout=30)], "c", "n1", "n2")
    d.start()
    events = [d.raise_alert("peer_lost", "r", json.dumps(i), time.time()) for i in range(250)]
    gate.touch()
    await d.stop(drain_timeout=60)
    st = d.stats()["rec"]
    assert st.dropped == 250 - 100 - 1 or st.dropped == 250 - 100  # one may already be running
    seqs = sorted(int(p.stem) for p in (tmp_path / "out").iterdir())
    assert seqs[-1] == events[-1].sequence  # the newest survive
