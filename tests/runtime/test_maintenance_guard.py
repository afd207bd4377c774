"""`clevervm maintenance off` is refused while Pacemaker or Corosync runs on the node (DESIGN section 13).

The process scan is replaced here: starting a process named ``corosync`` on
this shared machine would disturb the `check` of every other test running.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from clever_cluster.daemon import checks, commands
from clever_cluster.daemon.control import Caller, ControlError


class NoChange:
    """A runtime whose intent must not be touched: any attribute but ``node`` is a failure."""

    node = "node1"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"maintenance off touched rt.{name} although it was refused")


def test_maintenance_off_is_refused_while_the_old_stack_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "cluster_stack_running", lambda: ["corosync (pid 4242)", "pacemakerd (pid 4243)"])
    cmds = commands.Commands(NoChange())  # type: ignore[arg-type]
    with pytest.raises(ControlError) as e:
        asyncio.run(cmds.maintenance({"on": False}, Caller(1, 0, 0)))
    assert "Pacemaker/Corosync run on node1 (corosync (pid 4242), pacemakerd (pid 4243))" in str(e.value)
    assert "still in maintenance" in str(e.value)


def test_maintenance_off_goes_through_when_the_old_stack_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "cluster_stack_running", lambda: [])
    changed: list[str] = []
    cmds = commands.Commands(types.SimpleNamespace(node="node1"))  # type: ignore[arg-type]
    monkeypatch.setattr(cmds, "_change", lambda caller, what, edit: changed.append(what) or "rec")
    monkeypatch.setattr(cmds, "_intent_answer", lambda rec, nxt: {"next": nxt})
    got = asyncio.run(cmds.maintenance({"on": False}, Caller(1, 0, 0)))
    assert changed == ["maintenance off"] and got["next"].startswith("maintenance off")
