"""The stock fence agent wrapper: fake fence_* scripts, then the real
fence_ipmilan (Debian fence-agents) with ipmitool against the BMC emulator."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from clever_cluster.fencing.agent import DeviceConfigError
from clever_cluster.fencing.stock import StockAgent, StockParams, parse_metadata, read_secret_file
from clever_cluster.fencing.types import Deadline, Outcome, PowerState, Secret
from clever_cluster.sim.harness import wait_for

from .emulators import BMC_PASSWORD, BMC_USER, PEER_UUID

REPO = Path(__file__).resolve().parents[2]
FAKE = str(REPO / "sim" / "fence_agents" / "fence_fake")
SECRET = "hunter2-very-secret"


def fake(tmp_path: Path, behavior: dict | None = None, power: str = "on", options: dict | None = None,
         variant: str = "") -> tuple[StockAgent, Path]:
    state = tmp_path / "fake"
    state.mkdir(parents=True, exist_ok=True)
    exe = FAKE
    if variant:
        exe = str(tmp_path / f"fence_fake_{variant}")
        os.symlink(FAKE, exe)
    (state / "power").write_text(power)
    (state / "behavior.json").write_text(json.dumps(behavior or {}))
    opts = {"state": str(state), "ip": "192.0.2.7", **(options or {})}
    a = StockAgent("pdu", StockParams(exe, opts, {"password": Secret(SECRET.encode())}, PEER_UUID, "node2"), timeout=10, poll_interval=0.1)
    return a, state


def calls(state: Path) -> list[dict]:
    return [json.loads(x) for x in (state / "calls.jsonl").read_text().splitlines()]


async def test_off_then_independent_status_confirms(tmp_path: Path) -> None:
    a, state = fake(tmp_path)
    r = await a.off(Deadline.after(10))
    assert r.confirmed, r.evidence
    actions = [c["action"] for c in calls(state) if c["action"] not in ("metadata", "validate-all")]
    assert actions == ["off", "status"]
    assert (state / "power").read_text() == "off"


async def test_no_argv_options_on_stdin_and_a_scrubbed_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCMK_service", "pacemaker-fenced")
    monkeypatch.setenv("CLEVER_TEST_LEAK", "x")
    a, state = fake(tmp_path)
    assert (await a.status(Deadline.after(10))).state is PowerState.ON
    for c in calls(state):
        assert c["argv"] == [FAKE]
        assert "PCMK_service" not in c["env"] and "CLEVER_TEST_LEAK" not in c["env"]
        assert c["env"].get("LANG") == "C"
    status_call = next(c for c in calls(state) if c["action"] == "status")
    lines = status_call["stdin"].splitlines()
    assert f"password={SECRET}" in lines and "nodename=node2" in lines and lines[-1] == "action=status"


def test_the_fake_agent_refuses_argv_so_the_tests_above_can_fail(tmp_path: Path) -> None:
    import subprocess

    r = subprocess.run([FAKE, "-o", "status"], capture_output=True, text=True, input="", check=False)
    assert r.returncode == 1 and "refusing" in r.stderr


async def test_exit_codes(tmp_path: Path) -> None:
    a, _ = fake(tmp_path / "a", {"off_rc": 1})
    assert (await a.off(Deadline.after(10))).outcome is Outcome.FAILED
    b, _ = fake(tmp_path / "b", {"off_rc": 2})  # 2 means OFF only for status
    assert (await b.off(Deadline.after(10))).outcome is Outcome.FAILED
    c, _ = fake(tmp_path / "c", {"off_rc": 255})
    assert (await c.off(Deadline.after(10))).outcome is Outcome.FAILED
    d, _ = fake(tmp_path / "d", {"off_lies": True})  # exit 0, machine still on
    r = await d.off(Deadline.after(10))
    assert r.outcome is Outcome.CONTRADICTION and "contradicts" in r.message
    e, _ = fake(tmp_path / "e", {"status_rc": 1})  # off ok, status unknown until the deadline
    r = await e.off(Deadline.after(2))
    assert r.outcome is Outcome.TIMED_OUT and not r.confirmed
    f, _ = fake(tmp_path / "f", {"status_rc": 3})
    assert (await f.status(Deadline.after(5))).outcome is Outcome.FAILED


async def test_hanging_agent_is_killed_with_its_process_group(tmp_path: Path) -> None:
    a, state = fake(tmp_path, {"hang": ["off"]})
    t0 = time.monotonic()
    r = await a.off(Deadline.after(2))
    assert r.outcome is Outcome.TIMED_OUT and "process group was killed" in r.message
    assert time.monotonic() - t0 < 5
    child = int((state / "child.pid").read_text())
    agent_pid = next(c["pid"] for c in calls(state) if c["action"] == "off")

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    wait_for(lambda: gone(child) and gone(agent_pid), 5, "the agent and its SIGTERM-ignoring child to be gone")


def _command_lines() -> list[bytes]:
    seen = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                seen.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
    return seen


async def test_secret_is_never_on_a_command_line(tmp_path: Path) -> None:
    import asyncio

    a, state = fake(tmp_path, {"hang": ["off"]})
    task = asyncio.create_task(a.off(Deadline.after(3)))
    for _ in range(200):  # poll without blocking the loop that runs the agent
        if (state / "child.pid").exists():
            break
        await asyncio.sleep(0.05)
    assert (state / "child.pid").exists()
    seen = _command_lines()
    assert seen and not any(SECRET.encode() in c for c in seen)
    r = await task
    assert SECRET not in repr(r) and SECRET not in a.describe()


async def test_secret_is_redacted_from_agent_output(tmp_path: Path) -> None:
    # The fake prints its failure message; an agent echoing the password is redacted.
    a, _ = fake(tmp_path)
    assert a._redact(f"login with {SECRET} failed") == "login with *** failed"


async def test_metadata_checks(tmp_path: Path) -> None:
    a, _ = fake(tmp_path / "a", variant="garbage")
    problems = await a.validate(Deadline.after(10))
    assert problems and "not XML" in problems[0]
    r = await a.off(Deadline.after(10))
    assert r.outcome is Outcome.REFUSED
    b, _ = fake(tmp_path / "b", variant="no_off")
    assert any("no `off` action" in p for p in await b.validate(Deadline.after(10)))
    c, _ = fake(tmp_path / "c", options={"colour": "blue"})
    assert any("'colour' is not a parameter" in p for p in await c.validate(Deadline.after(10)))
    d, state = fake(tmp_path / "d", options={"method": "cycle"})
    assert any("method=cycle is refused" in p for p in await d.validate(Deadline.after(10)))
    assert (await d.off(Deadline.after(10))).outcome is Outcome.REFUSED
    assert not (state / "calls.jsonl").exists()  # nothing but metadata ran: no power action
    e, _ = fake(tmp_path / "e", options={"ipaddr": "192.0.2.8"})  # an obsoletes alias is fine
    assert await e.validate(Deadline.after(10)) == []


def test_parse_metadata_and_config_errors(tmp_path: Path) -> None:
    m = parse_metadata('<resource-agent name="x"><parameters><parameter name="ip" obsoletes="ipaddr"/></parameters>'
                       '<actions><action name="off"/><action name="status"/></actions></resource-agent>')
    assert m.names == {"ip", "ipaddr"} and {"off", "status"} <= m.actions
    with pytest.raises(DeviceConfigError, match="without arguments"):
        StockAgent("x", StockParams("fence_ipmilan -o off", {}, {}, PEER_UUID, "node2"))
    with pytest.raises(DeviceConfigError, match="not installed"):
        StockAgent("x", StockParams("fence_does_not_exist", {}, {}, PEER_UUID, "node2")).path()
    f = tmp_path / "s"
    f.write_bytes(b"# comment\npassword = abc=def\n\n")
    assert read_secret_file(f)["password"].reveal().strip() == b"abc=def"


FENCE_IPMILAN = "/usr/sbin/fence_ipmilan"


def ipmilan(port: int, password: str = BMC_PASSWORD) -> StockAgent:
    if not os.access(FENCE_IPMILAN, os.X_OK):
        pytest.fail("fence_ipmilan is missing: scripts/apt-packages.txt installs fence-agents (run make bootstrap)")
    opts = {"ip": "127.0.0.1", "ipport": str(port), "username": BMC_USER, "lanplus": "1", "power_wait": "0", "power_timeout": "8"}
    return StockAgent("ipmilan", StockParams("fence_ipmilan", opts, {"password": Secret(password.encode())}, PEER_UUID, "node2"),
                      timeout=20, poll_interval=0.5)


@pytest.mark.slow
async def test_real_fence_ipmilan_and_ipmitool_against_the_emulator(bmc_factory) -> None:
    b = bmc_factory("delay:1")
    a = ipmilan(b.port)
    assert await a.validate(Deadline.after(20)) == []
    h = await a.monitor(Deadline.after(20))
    assert h.ok and h.power is PowerState.ON
    r = await a.off(Deadline.after(20))
    assert r.confirmed, r.evidence
    assert "power_off" in b.names() and "off_applied" in b.names()
    assert (await a.status(Deadline.after(10))).state is PowerState.OFF


@pytest.mark.slow
async def test_real_fence_ipmilan_stuck_bmc_is_not_confirmed(bmc_factory) -> None:
    b = bmc_factory("stuck")
    a = ipmilan(b.port)
    r = await a.off(Deadline.after(6))
    assert not r.confirmed and r.outcome in (Outcome.TIMED_OUT, Outcome.FAILED)
