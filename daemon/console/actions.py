"""The operator actions the console offers, and what each confirmation says will happen.

Each action is one control command of the daemon (``daemon/commands.py``),
sent with the same arguments ``clevervm`` sends for the same verb, so the
daemon applies the same checks (the migrate pre-flight, node names) and
answers with the same ``next`` sentence or the same refusal.

The confirmation is written here, from what the console's latest status
says (which node is active): the daemon has no side-effect-free "what
would this do" command, and the console never sends an action's command
before the operator confirmed it. What the daemon then answers, its
``next`` sentence or its refusal, is what the page shows.

Invariant: nothing in this module but :func:`run` sends a command that
changes anything, and :func:`run` is called only by a confirmed action.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .daemonlink import DaemonLink

NodeChoice = Literal["none", "any", "local"]


@dataclasses.dataclass(frozen=True)
class Action:
    name: str
    label: str
    command: str
    node: NodeChoice  # "local": acts on the console's own node (the daemon's); "any": the operator picks a node
    sentence: str     # {node} and {other} are filled in
    extra: tuple[tuple[str, Any], ...] = ()
    sentence_passive: str = ""  # when ``node`` is not the active node, if that changes what happens

    def args(self, node: str | None) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        if self.node == "any":
            out["node"] = node
        return out


ACTIONS: tuple[Action, ...] = (
    # `migrate` bans the node whose daemon receives it (as `clevervm migrate` on that node): this console's node.
    Action("migrate", "Migrate", "migrate", "local",
           "{node} is banned, so the resources move to {other} by handover: the VMs are saved on {node} and restored on "
           "{other}. The daemon first runs the pre-flight ({other} heard, UpToDate, eligible; save space) and refuses, "
           "changing nothing, if it fails. The ban stays until Unmigrate.",
           (("lifetime", None), ("force", False)),  # as clevervm migrate sends it; --force stays on the command line
           sentence_passive="{node} is banned; it does not hold the resources, so nothing moves. The ban stays until Unmigrate."),
    Action("unmigrate", "Unmigrate", "unmigrate", "none",
           "Every ban is lifted. Nothing moves now: stickiness keeps the resources where they are."),
    Action("standby", "Standby", "standby", "any",
           "{node} goes into standby and may not hold the resources: they move to {other} by handover (if {other} can take them).",
           sentence_passive="{node} goes into standby: it will not take the resources. Nothing moves now."),
    Action("unstandby", "Unstandby", "unstandby", "any",
           "{node} leaves standby and may hold the resources again. Nothing moves now (stickiness)."),
    Action("maintenance_on", "Maintenance on", "maintenance", "none",
           "Maintenance on: both daemons only observe and alert. Nothing is started, stopped or moved and no node is fenced "
           "until maintenance is turned off; what runs keeps running.", (("on", True),)),
    Action("maintenance_off", "Maintenance off", "maintenance", "none",
           "Maintenance off: the daemons act again, adopt what runs and bring the cluster to its target state.", (("on", False),)),
    Action("cleanup", "Cleanup", "cleanup", "none",
           "Fail counts and failure records are cleared on both nodes, so a VM stopped after too many failures may start again. "
           "A safety block is never lifted by this."),
    Action("forcestart", "Force start", "forcestart", "none",
           "The target role becomes started: the active node starts (or restores) the VMs."),
    Action("forcestop", "Force stop", "forcestop", "none",
           "The target role becomes stopped: the VMs are saved and kept stopped; storage and the floating IP stay with the active node."),
)
BY_NAME = {a.name: a for a in ACTIONS}


class ActionRefused(Exception):
    """The request names no valid action or node (the operator's input, not the daemon's answer)."""


def resolve(name: Any, node: Any, nodes: list[str]) -> tuple[Action, str | None]:
    """The action and the node it acts on (``nodes[0]`` is the console's own), or ActionRefused saying why."""
    action = BY_NAME.get(name) if isinstance(name, str) else None
    if action is None:
        raise ActionRefused(f"unknown action {name!r}")
    if action.node == "none":
        return action, None
    if action.node == "local":
        local = nodes[0] if nodes else None
        if local is None:
            raise ActionRefused(f"{action.label}: the daemon has not said which node it is")
        if node is not None and node != local:
            raise ActionRefused(f"{action.label} acts on the node this console runs on ({local}), not on {node}: "
                                f"use {node}'s console, or Standby {node}")
        return action, local
    if not isinstance(node, str) or node not in nodes:
        raise ActionRefused(f"{action.label}: choose one of the nodes {', '.join(nodes)}")
    return action, node


def fixed_sentence(action: Action, node: str | None, nodes: list[str], active: str | None) -> str:
    other = next((n for n in nodes if n != node), "the other node")
    text = action.sentence_passive if action.sentence_passive and node != active else action.sentence
    return text.format(node=node or "", other=other)


def confirmation(action: Action, node: str | None, nodes: list[str], active: str | None) -> str:
    """What the confirmation says will happen (the daemon's own answer comes after the operator confirms)."""
    return fixed_sentence(action, node, nodes, active)


async def run(link: DaemonLink, action: Action, node: str | None) -> str:
    """Carry out the action; the daemon's answer as a sentence. Raises CommandFailed or DaemonUnreachable."""
    got = await link.call(action.command, timeout=30.0, **action.args(node))
    # Every intent command answers ``next``, which clevervm prints ("done" if it is missing).
    nxt = got.get("next") if isinstance(got, dict) else None
    return nxt if isinstance(nxt, str) and nxt else "done"
