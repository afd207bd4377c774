"""Scenario folders: a command list run on the simulated cluster, giving a
decision log to compare line by line with ``expected.log``.

``commands`` holds one command per line (see :mod:`.script`), plus:
- ``<t> expect active <node>`` / ``<t> expect none-active``: who runs the
  whole group at time t;
- ``<t> expect phase <node> <PHASE>``; ``<t> expect code <node> <code>``
  (seen at or before t); ``<t> expect no-code <code>`` (never seen by t);
- ``<t> expect fences <n>``: fence attempts started so far;
- ``<t> expect said <node> <text>``: what the last operator command printed;
- ``<t> end``: stop the run.
The oracle's violations always fail the scenario.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clever_cluster.policy import Phase

from .config import DEFAULT_SETTINGS, LogLine
from .script import Command, apply, parse
from .world import World


@dataclasses.dataclass
class ScenarioResult:
    log: list[str]
    failures: list[str]
    world: World


def format_log(w: World) -> list[str]:
    return [f"{ln.t:7.2f} {ln.node} {ln.phase.value:<11} {ln.code:<32} {' '.join(ln.actions) or '-'} | {ln.sentence}"
            for ln in w.log]


def run_commands(cmds: list[Command], seed: int = 0) -> ScenarioResult:
    w = World(seed=seed, settings=DEFAULT_SETTINGS)
    failures: list[str] = []
    said: dict[str, str] = {}
    end = max((c.at for c in cmds), default=0.0)
    queue = sorted(enumerate(cmds), key=lambda ic: (ic[1].at, ic[0]))
    i = 0
    while True:
        while i < len(queue) and queue[i][1].at <= w.t + 1e-9:
            c = queue[i][1]
            i += 1
            if c.verb == "expect":
                _expect(w, c, failures, said)
            elif c.verb == "end":
                pass
            else:
                out = apply(w, c)
                if out != "ok":
                    said[c.args[0] if c.args else ""] = out
                    w.log.append(_note(w, c, out))
        if w.t >= end - 1e-9:
            break
        w.advance()
    failures += [str(v) for v in w.oracle.violations]
    return ScenarioResult(format_log(w), failures, w)


def _note(w: World, c: Command, out: str) -> LogLine:
    """An operator command that printed something other than ok, as a log line."""
    return LogLine(w.t, "operator", Phase.SECONDARY, f"{c.verb} {' '.join(c.args)}", out, ())


def _expect(w: World, c: Command, failures: list[str], said: dict[str, str]) -> None:
    a = c.args
    what = a[0]
    here = f"t={c.at:g} expect {' '.join(a)}"
    if what == "active":
        if w.service_up() != a[1]:
            failures.append(f"{here}: active is {w.service_up()}")
    elif what == "none-active":
        if w.service_up() is not None:
            failures.append(f"{here}: {w.service_up()} is active")
    elif what == "phase":
        got = w.nodes[a[1]].state.phase.value
        if got != a[2]:
            failures.append(f"{here}: phase is {got}")
    elif what == "code":
        if not any(ln.node == a[1] and ln.code == a[2] for ln in w.log):
            failures.append(f"{here}: never seen")
    elif what == "no-code":
        if any(ln.code == a[1] for ln in w.log):
            failures.append(f"{here}: seen")
    elif what == "fences":
        if w.fence_count != int(a[1]):
            failures.append(f"{here}: {w.fence_count} fence attempts")
    elif what == "said":
        got = said.get(a[1], "")
        if " ".join(a[2:]) not in got:
            failures.append(f"{here}: it said {got!r}")
    else:
        failures.append(f"{here}: unknown expectation")


def run_folder(folder: Path) -> ScenarioResult:
    return run_commands(parse((folder / "commands").read_text()))
