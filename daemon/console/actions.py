"""The operator actions the console offers, and what each confirmation says will happen.

Each action is one control command of the daemon (the same one ``clevervm``
uses). Before asking for confirmation the console asks the daemon what the
command would do, with the read-only control command ``preview`` (``{"command":
..., "args": ...}`` → ``{"next": sentence, "problems": [...], "allowed": bool}``).
A daemon without ``preview`` gets the fixed sentence written here instead.

Invariant: a preview can never carry out the action. It is a different
control command, so a daemon that does not know it refuses it
(``unknown_command``); the action's own command is never sent with a
"dry run" flag that an older daemon might ignore.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ..control import CommandFailed, DaemonUnreachable
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
           "{other}, once the pre-flight passes ({other} online, UpToDate, eligible; save space). The ban stays until Unmigrate.",
           sentence_passive="{node} is banned; it does not hold the resources, so nothing moves. The ban stays until Unmigrate."),
    Action("unmigrate", "Unmigrate", "unmigrate", "none",
           "Every ban is lifted. Nothing moves now: stickiness keeps the resources where they are."),
    Action("standby", "Standby", "standby", "any",
           "{node} goes into standby and may not hold the resources; if it holds them now they move to {other} by handover."),
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


async def preview(link: DaemonLink, action: Action, node: str | None, nodes: list[str], active: str | None) -> dict[str, Any]:
    """What will happen next: the daemon's own answer where it offers one, else the fixed sentence."""
    fixed = fixed_sentence(action, node, nodes, active)
    try:
        got = await link.call("preview", command=action.command, args=action.args(node))
    except CommandFailed as e:
        if e.code == "unknown_command":
            return {"sentence": fixed, "source": "fixed", "problems": [], "allowed": True}
        return {"sentence": fixed, "source": "fixed", "problems": [f"the daemon's preview failed: {e}"], "allowed": True}
    except DaemonUnreachable as e:
        return {"sentence": fixed, "source": "fixed", "problems": [str(e)], "allowed": False}
    sentence = got.get("next") if isinstance(got, dict) else None
    if not isinstance(sentence, str) or not sentence:
        return {"sentence": fixed, "source": "fixed", "problems": [], "allowed": True}
    problems = [str(p) for p in got.get("problems", []) if isinstance(p, str | int | float)] if isinstance(got.get("problems"), list) else []
    allowed = got.get("allowed")
    return {"sentence": sentence, "source": "daemon", "problems": problems, "allowed": allowed if isinstance(allowed, bool) else not problems}


async def run(link: DaemonLink, action: Action, node: str | None) -> str:
    """Carry out the action; the daemon's answer as a sentence. Raises CommandFailed or DaemonUnreachable."""
    got = await link.call(action.command, timeout=30.0, **action.args(node))
    if isinstance(got, dict):
        for key in ("next", "message", "sentence"):
            if isinstance(got.get(key), str) and got[key]:
                return str(got[key])
    if isinstance(got, str) and got:
        return got
    return f"{action.label}: done"
