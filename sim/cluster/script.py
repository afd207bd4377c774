"""The command language of scenarios and fault schedules.

One command per line: ``<time> <verb> <args...>`` (time in virtual
seconds). Verbs change the world (faults) or act as an operator would; a few
(``expect ...``) are assertions checked by the scenario runner. ``apply``
never raises on a verb the world cannot honour: it returns what happened,
as the CLI would print it.
"""

from __future__ import annotations

import dataclasses
import shlex

from clever_cluster.policy import Ban, TargetRole
from clever_cluster.policy.preflight import migrate_preflight

from .fencedev import Mode
from .world import World


@dataclasses.dataclass(frozen=True)
class Command:
    at: float
    verb: str
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.at:g} {self.verb} {' '.join(self.args)}".rstrip()


def parse(text: str) -> list[Command]:
    out: list[Command] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = shlex.split(line)
        try:
            at = float(parts[0])
        except ValueError:
            raise ValueError(f"line {lineno}: expected '<time> <verb> ...', got {raw!r}") from None
        if len(parts) < 2:
            raise ValueError(f"line {lineno}: no verb")
        out.append(Command(at, parts[1], tuple(parts[2:])))
    return out


def apply(w: World, c: Command) -> str:
    a = c.args
    match c.verb:
        case "power-off":
            w.power_off(a[0])
        case "power-on":
            w.power_on(a[0])
        case "crash":
            w.crash_daemon(a[0])
        case "hang":
            w.hang_daemon(a[0], float(a[1]))
        case "restart":
            w.restart_daemon(a[0])
        case "reboot":
            w.clean_reboot(a[0])
        case "shutdown":
            w.clean_reboot(a[0], power_on=False)
        case "cut":
            w.cut(a[0], a[2] if len(a) > 2 and a[1] == "from" else None)
        case "heal":
            w.heal(a[0] if a else None)
        case "loss":
            w.set_loss(None if a[0] == "all" else a[0], float(a[1]))
        case "burst":
            w.burst(None if a[0] == "all" else a[0], float(a[1]))
        case "gateway-down":
            w.gateway_up[a[0]] = False
        case "gateway-up":
            w.gateway_up[a[0]] = True
        case "device":
            w.set_device(a[0], int(a[1]) - 1, Mode(a[2]))
        case "migrate":
            n = w.nodes[a[0]]
            if not n.alive:
                return "refused: daemon not running"
            problems = migrate_preflight(w.observe(n), w.settings[a[0]])
            if problems and "--force" not in a:
                return "refused: " + "; ".join(problems)
            w.set_intent(bans=(*tuple(b for b in w.intent.bans if b.node != a[0]), Ban(a[0])))
        case "unmigrate":
            w.set_intent(bans=tuple(b for b in w.intent.bans if b.node != a[0]))
        case "standby":
            w.set_intent(standby=w.intent.standby | {a[0]})
        case "unstandby":
            w.set_intent(standby=w.intent.standby - {a[0]})
        case "forcestop":
            w.set_intent(target_role=TargetRole.STOPPED)
        case "forcestart":
            w.set_intent(target_role=TargetRole.STARTED)
        case "maintenance":
            w.set_intent(maintenance=a[0] == "on")
        case "unblock":
            w.set_intent(unblock_seq=w.intent.unblock_seq + 1)
        case "fence":
            w.set_intent(fence_seq=w.intent.fence_seq + 1)
        case "cleanup":
            for n in w.nodes.values():
                n.fail_counts.clear()
        case "confirm-fenced":
            return w.operator_confirm(w._other(a[0]), "--accept-data-loss" in a)
        case "fail-step":
            # the next step of this kind in a sequence on that node fails (drbd_primary, mount, ip, vm_start, umount, ...)
            w.step_failures[a[0]].add(a[1])
        case "vm-crash":
            w.vm_crash(a[0], a[1])
        case "vm-stop-outside":
            w.vm_stop_outside(a[0], a[1])
        case "proto":
            w.nodes[a[0]].proto = int(a[1])
        case "key":
            w.nodes[a[0]].keys = tuple(a[1:])
        case "write-outside":
            # an operator forces DRBD Primary by hand on a disconnected node and writes
            n = w.nodes[a[0]]
            dn = w.drbd.n[a[0]]
            dn.head = w.tree.add(dn.head, app=True)
            del n
        case "config-unsafe":
            w.drbd.n[a[0]].config_safe = False
        case "config-safe":
            w.drbd.n[a[0]].config_safe = True
        case "disk-fail":
            from clever_cluster.policy import Disk
            w.drbd.n[a[0]].disk = Disk.FAILED
        case "heal-all":
            heal_all(w)
        case _:
            raise ValueError(f"unknown verb {c.verb!r}")
    return "ok"


def heal_all(w: World) -> None:
    """Every fault repaired and every operator restriction lifted (the end of a random schedule)."""
    w.heal()
    for name, n in w.nodes.items():
        w.gateway_up[name] = True
        for lvl in w.devices[name]:
            for dev in lvl:
                dev.mode = Mode.OK
        if not n.powered:
            w.power_on(name)
        elif n.daemon == "hung":
            n.hang_until = w.t
        n.proto = 5
        n.keys = ("k1",)
        w.step_failures[name].clear()
    w.set_intent(bans=(), standby=frozenset(), maintenance=False, target_role=TargetRole.STARTED)
