"""The server side of every `clevervm` verb (issue 8), over the control socket.

Read verbs: ``status``, ``why``, ``history``, ``check``. Verbs that change the
admin intent go through ``heartbeat.change_intent`` (persisted, replicated,
acknowledged by the peer; they work from either node): ``migrate``,
``unmigrate``, ``standby``, ``unstandby``, ``maintenance``, ``forcestart``,
``forcestop``, ``cleanup``, ``unblock``, ``fence``. Direct verbs:
``start``/``stop`` (the VMs on this node, through the resource group, which
waits for a sequence in flight; refused on the standby), ``confirm-fenced``
(through the fencing coordinator), ``split-brain``. Every changing verb
answers ``next``: what happens now, in a sentence.

Invariants:
- A refusal is a ``ControlError`` with a sentence and a code, never a
  traceback; nothing is changed by a refused command.
- No verb decides: the policy does, from the intent and the facts; the
  verbs that wait (``unblock``, ``fence``) only wait to report its answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from clever_cluster import policy as P
from clever_cluster.fencing.manual import ConfirmRefused
from clever_cluster.policy import view as V
from clever_cluster.policy.preflight import migrate_preflight

from . import checks, logsetup, status
from .control import Caller, ControlError, Handler
from .drbd import errors as drbd_errors
from .drbd.adapter import SplitBrainVictim
from .heartbeat import AdminIntent, Ban, Cleanup
from .mapping import episode_to_fencing
from .resources.base import ImageToken as ResImageToken
from .resources.base import StartRequest, StopRequest

if TYPE_CHECKING:
    from .runtime import Runtime

log = logsetup.get("daemon.commands")

ANSWER_WAIT = 3.0
MAX_LIFETIME = 365 * 86400.0


def _str(args: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    v = args.get(key, default)
    if v is not None and not isinstance(v, str):
        raise ControlError(f"{key} must be a string", "bad_request")
    return v


def _bool(args: Mapping[str, Any], key: str) -> bool:
    v = args.get(key, False)
    if not isinstance(v, bool):
        raise ControlError(f"{key} must be true or false", "bad_request")
    return v


class Commands:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def handlers(self) -> dict[str, Handler]:
        return {
            "ping": self.ping, "status": self.status, "why": self.why, "history": self.history, "check": self.check,
            "reload": self.reload, "shutdown": self.shutdown,
            "migrate": self.migrate, "unmigrate": self.unmigrate, "standby": self.standby, "unstandby": self.unstandby,
            "maintenance": self.maintenance, "forcestart": self.forcestart, "forcestop": self.forcestop,
            "cleanup": self.cleanup, "unblock": self.unblock, "fence": self.fence,
            "start": self.start, "stop": self.stop, "confirm-fenced": self.confirm_fenced, "split-brain": self.split_brain,
        }

    # ------------------------------------------------------------------ helpers

    def _facts(self) -> P.Facts:
        return self.rt.facts_now()

    def _change(self, caller: Caller, what: str, edit: Callable[[AdminIntent], AdminIntent]) -> AdminIntent:
        try:
            rec = self.rt.heartbeat.change_intent(edit)
        except OSError as e:
            raise ControlError(f"cannot persist the admin intent: {e.strerror or e}; nothing changed", "failed") from None
        log.info("%s by %s: admin intent version %d: %s", what, caller.describe(), rec.version, rec.describe(),
                 extra={"fields": {"CLEVER_REASON": "intent_changed", "CLEVER_ACTION": what}})
        self.rt.world.touch()
        return rec

    def _intent_answer(self, rec: AdminIntent, next_: str, **extra: Any) -> dict[str, Any]:
        return {"intent": {"version": rec.version, "summary": rec.describe()}, "next": next_,
                "replicated": f"sent to {self.rt.peer}; `clevervm status` shows when it acknowledged", **extra}

    def _node_arg(self, args: Mapping[str, Any], key: str = "node") -> str:
        node = _str(args, key) or self.rt.node
        if node not in (self.rt.node, self.rt.peer):
            raise ControlError(f"unknown node {node!r}: this cluster has {self.rt.node} and {self.rt.peer}", "bad_request")
        return node

    async def _await_decision(self, done: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + ANSWER_WAIT
        while time.monotonic() < deadline:
            if done():
                return True
            await asyncio.sleep(0.05)
        return done()

    # ------------------------------------------------------------------ read verbs

    async def ping(self, args: Mapping[str, Any], caller: Caller) -> Any:
        return {"pong": True}

    async def status(self, args: Mapping[str, Any], caller: Caller) -> Any:
        return await status.document(self.rt)

    async def why(self, args: Mapping[str, Any], caller: Caller) -> Any:
        return status.why(self.rt)

    async def history(self, args: Mapping[str, Any], caller: Caller) -> Any:
        n = args.get("decisions", 50)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 200:
            raise ControlError("decisions must be an integer from 1 to 200", "bad_request")
        return {"schema": status.SCHEMA, "node": self.rt.node, **self.rt.history.to_json(n)}

    async def check(self, args: Mapping[str, Any], caller: Caller) -> Any:
        lines = await checks.run_checks(self.rt)
        return {"ok": not any(ln.severity == "fail" for ln in lines), "lines": [ln.to_json() for ln in lines],
                "predicted_failover": status.predicted_failover(self.rt)}

    async def reload(self, args: Mapping[str, Any], caller: Caller) -> Any:
        ok, problems = self.rt.reload()
        if not ok:
            raise ControlError("reload refused; the old configuration stays in force", "reload_failed", problems)
        return {"reloaded": True}

    async def shutdown(self, args: Mapping[str, Any], caller: Caller) -> Any:
        restart = _bool(args, "restart")
        self.rt.request_stop(restart=restart)
        log.info("%s requested by %s", "daemon restart" if restart else "daemon stop", caller.describe())
        a = self.rt.announce
        return {"stopping": True, "announce": a.kind, "expected": a.expected}

    # ------------------------------------------------------------------ intent

    async def migrate(self, args: Mapping[str, Any], caller: Caller) -> Any:
        lifetime = args.get("lifetime")
        if lifetime is not None and (not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool)
                                     or not 0 < lifetime <= MAX_LIFETIME):
            raise ControlError("lifetime must be a number of seconds (at most a year)", "bad_request")
        force = _bool(args, "force")
        facts = self._facts()
        me, peer = self.rt.node, self.rt.peer
        held = V.holds(facts)
        problems = migrate_preflight(facts, self.rt.settings)
        if held:
            problems += await self._save_space_problem()
        if problems and not force:
            raise ControlError(f"migrate refused: {'; '.join(problems)} (add --force to ban {me} anyway)", "preflight_failed", problems)
        until = None if lifetime is None else time.time() + float(lifetime)
        rec = self._change(caller, "migrate", lambda r: dataclasses.replace(
            r, bans=(*(b for b in r.bans if b.node != me), Ban(node=me, until=until, reason="migrate"))))
        expiry = "" if until is None else f" for {float(lifetime or 0):g}s"
        if not held:
            nxt = f"{me} is banned{expiry}; it does not hold the resources, so nothing moves (they stay on {peer})"
        elif problems:
            nxt = (f"{me} is banned{expiry} although the pre-flight failed ({'; '.join(problems)}): the resources stay here "
                   f"until {peer} can take them over (see clevervm why)")
        else:
            nxt = (f"{me} is banned{expiry}: the resources move to {peer} by handover now: VMs are saved here, the IP removed, "
                   f"the filesystem unmounted, DRBD Secondary; then {peer} promotes and restores them. Follow with clevervm history")
        return self._intent_answer(rec, nxt, preflight=problems)

    async def _save_space_problem(self) -> list[str]:
        try:
            lines = await checks._save_space(self.rt)
        except Exception as e:  # noqa: BLE001 - not knowing is a problem worth saying
            return [f"save space unknown: {e}"]
        return [ln.text for ln in lines if ln.severity == "fail"]

    async def unmigrate(self, args: Mapping[str, Any], caller: Caller) -> Any:
        rec0 = self.rt.heartbeat.view().intent
        if not rec0.bans:
            raise ControlError("no node is banned: nothing to lift", "nothing_to_do")
        rec = self._change(caller, "unmigrate", lambda r: dataclasses.replace(r, bans=()))
        facts = self._facts()
        where = self.rt.node if V.holds(facts) else self.rt.peer
        lifted = ", ".join(b.node for b in rec0.bans)
        return self._intent_answer(rec, f"ban of {lifted} lifted; stickiness keeps the resources where they are ({where}); "
                                        "use clevervm migrate on that node to move them")

    async def standby(self, args: Mapping[str, Any], caller: Caller) -> Any:
        node = self._node_arg(args)
        rec = self._change(caller, f"standby {node}", lambda r: dataclasses.replace(r, standby=tuple(sorted({*r.standby, node}))))
        other = self.rt.peer if node == self.rt.node else self.rt.node
        facts = self._facts()
        holds_here = V.holds(facts)
        active = self.rt.node if holds_here else (self.rt.peer if facts.peer.report and facts.peer.report.holds else None)
        nxt = (f"{node} is in standby: the resources move to {other} by handover (if {other} can take them)" if active == node
               else f"{node} is in standby: it will not take the resources; nothing moves now")
        return self._intent_answer(rec, nxt)

    async def unstandby(self, args: Mapping[str, Any], caller: Caller) -> Any:
        node = self._node_arg(args)
        rec = self._change(caller, f"unstandby {node}", lambda r: dataclasses.replace(r, standby=tuple(n for n in r.standby if n != node)))
        return self._intent_answer(rec, f"{node} may run the resources again; stickiness keeps them where they are")

    async def maintenance(self, args: Mapping[str, Any], caller: Caller) -> Any:
        on = args.get("on")
        if not isinstance(on, bool):
            raise ControlError("maintenance needs on (true) or off (false)", "bad_request")
        rec = self._change(caller, f"maintenance {'on' if on else 'off'}", lambda r: dataclasses.replace(r, maintenance=on))
        nxt = ("maintenance on (both nodes): the cluster only observes and alerts; it neither starts, stops nor fences anything"
               if on else "maintenance off: the cluster manages the resources again from what it observes now (see clevervm why)")
        return self._intent_answer(rec, nxt)

    async def forcestart(self, args: Mapping[str, Any], caller: Caller) -> Any:
        rec = self._change(caller, "forcestart", lambda r: dataclasses.replace(r, target_role="started"))
        return self._intent_answer(rec, "target role started: the active node starts (or restores) the VMs")

    async def forcestop(self, args: Mapping[str, Any], caller: Caller) -> Any:
        rec = self._change(caller, "forcestop", lambda r: dataclasses.replace(r, target_role="stopped"))
        return self._intent_answer(rec, "target role stopped: the active node saves the VMs and keeps them stopped; "
                                        "storage and IP stay with it (clevervm forcestart restores them)")

    async def cleanup(self, args: Mapping[str, Any], caller: Caller) -> Any:
        vm = _str(args, "vm")
        names = [v.name for v in self.rt.world.vms.vms]
        if vm is not None and vm not in names:
            raise ControlError(f"{vm} is not a managed VM here ({', '.join(names) or 'none'})", "bad_request")
        now = time.time()

        def edit(r: AdminIntent) -> AdminIntent:
            serial = max((c.serial for c in r.cleanups), default=0) + 1
            return dataclasses.replace(r, cleanups=(*r.cleanups, Cleanup(serial=serial, at=now, resource=vm, node=None)))

        rec = self._change(caller, "cleanup", edit)
        return self._intent_answer(rec, f"fail counts of {vm or 'every VM'} cleared on both nodes; a VM that stayed stopped after "
                                        "its failures may start again (this never clears a safety block: see clevervm unblock)")

    async def unblock(self, args: Mapping[str, Any], caller: Caller) -> Any:
        dur = self.rt.loop.state.durable
        block = dur.block
        facts = self._facts()
        checked = _block_checks(block, facts)
        rec = self._change(caller, "unblock", lambda r: dataclasses.replace(r, unblock_seq=max(r.unblock_seq, dur.unblock_seen) + 1))
        seq = rec.unblock_seq
        await self._await_decision(lambda: self.rt.loop.state.durable.unblock_seen >= seq)
        d = self.rt.loop.decision
        now_blocked = self.rt.loop.state.durable.block
        if block is None:
            nxt = "this node was not blocked; nothing changes here (the request reaches the peer too)"
        elif now_blocked is None:
            nxt = f"unblocked: {block.cause} is gone; the cluster decides normally again ({d.reason.sentence if d else ''})"
        else:
            nxt = f"still blocked: {now_blocked.detail}; fix that first"
        return self._intent_answer(rec, nxt, checked=checked, blocked=None if now_blocked is None else now_blocked.detail)

    async def fence(self, args: Mapping[str, Any], caller: Caller) -> Any:
        node = _str(args, "node")
        if node != self.rt.peer:
            raise ControlError(f"clevervm fence NODE fences the peer: type its name ({self.rt.peer})"
                               + (", not this node" if node == self.rt.node else ""), "bad_request")
        facts = self._facts()
        status_ = P.peer_status(facts, self.rt.settings)
        if status_ is P.PeerStatus.HEARD:
            raise ControlError(f"{node} is heard on a heartbeat link: it is alive and answering; the cluster does not fence "
                               "a peer it hears (use clevervm migrate or standby to move resources)", "refused")
        rec = self._change(caller, f"fence {node}", lambda r: dataclasses.replace(r, fence_seq=r.fence_seq + 1))
        return self._intent_answer(rec, f"{node} is {status_}: this node fences it now through its fence devices, without the "
                                        "priority delay and even if it could not take over (S8 overridden); "
                                        "follow with clevervm status / history")

    # ------------------------------------------------------------------ direct

    def _refuse_on_standby(self, verb: str) -> P.Facts:
        facts = self._facts()
        if facts.drbd.role is not P.Role.PRIMARY:
            raise ControlError(f"{verb} refused: {self.rt.node} is not the active node (DRBD {facts.drbd.role}); run it on the "
                               "active node, or use clevervm forcestart/forcestop, which work from either node", "refused")
        return facts

    async def start(self, args: Mapping[str, Any], caller: Caller) -> Any:
        facts = self._refuse_on_standby("start")
        req = StartRequest(token="held", takeover="restart", data_uuid=facts.drbd.data_uuid or None)
        log.warning("clevervm start by %s: starting the VMs directly, bypassing the cluster", caller.describe(),
                    extra={"fields": {"CLEVER_REASON": "operator_start"}})
        rec = await self.rt.group.executor.start(req)
        self.rt.sequence_done(rec)
        if rec.outcome != "succeeded":
            raise ControlError(f"start {rec.outcome.replace('_', ' ')}: {rec.error}", "failed", [p.detail for p in rec.phases if p.detail])
        target = self.rt.heartbeat.view().intent.target_role
        warn = ("" if target == "started" else
                "WARNING: the target role is stopped: the cluster saves them again; use clevervm forcestart to keep them running")
        return {"run": rec.to_json(), "next": "the VMs run here. " + (warn or "The cluster brings them back to the target role "
                "(started) whatever happens; clevervm forcestart/forcestop are the right tools to change it")}

    async def stop(self, args: Mapping[str, Any], caller: Caller) -> Any:
        facts = self._refuse_on_standby("stop")
        e = self.rt.loop.state.durable.epoch
        image = ResImageToken(origin="forcestop", id=f"stop-{int(time.time())}", epoch=f"{e.counter}:{e.node}",
                              data_uuid=facts.drbd.data_uuid or "?")
        log.warning("clevervm stop by %s: saving the VMs directly, bypassing the cluster", caller.describe(),
                    extra={"fields": {"CLEVER_REASON": "operator_stop"}})
        rec = await self.rt.group.executor.stop(StopRequest(token=None, mode="save", image=image, until="vms"))
        self.rt.sequence_done(rec)
        if rec.outcome != "succeeded":
            raise ControlError(f"stop {rec.outcome.replace('_', ' ')}: {rec.error}", "failed", [p.detail for p in rec.phases if p.detail])
        target = self.rt.heartbeat.view().intent.target_role
        nxt = ("the VMs are saved. WARNING: the target role is started, so the cluster restores them again at once "
               "(logged, not counted as a failure); use clevervm forcestop to keep them stopped" if target == "started"
               else "the VMs are saved and the target role is stopped: they stay stopped")
        return {"run": rec.to_json(), "next": nxt}

    async def confirm_fenced(self, args: Mapping[str, Any], caller: Caller) -> Any:
        typed = _str(args, "node") or ""
        accept = _bool(args, "accept_data_loss")
        preview = _bool(args, "preview")
        rt = self.rt
        facts = self._facts()
        dur = rt.loop.state.durable
        evidence = _data_loss_evidence(rt, facts)
        if preview:
            return {"evidence": evidence, "next": f"type the node name ({rt.peer}) to confirm it is powered off"}
        if typed != rt.peer:
            raise ControlError(f"the node name typed ({typed!r}) is not the peer's ({rt.peer!r}); nothing recorded", "refused")
        ep = dur.episode
        if ep is None:
            raise ControlError(f"{rt.peer} is not lost (no loss episode is open here): nothing to confirm", "refused")
        coord = rt.coordinator
        if coord is None:
            raise ControlError("the fencing configuration is being reloaded; retry in a moment", "busy")
        try:
            rec = await coord.confirm_fenced(episode_to_fencing(ep), ep.peer_incarnation or 0, typed, caller.describe(),
                                             peer_heard=P.peer_status(facts, rt.settings) is P.PeerStatus.HEARD,
                                             drbd_connected=facts.drbd.connection is P.Conn.CONNECTED, accept_data_loss=accept)
        except ConfirmRefused as e:
            raise ControlError(f"confirm-fenced refused: {e}", "refused") from None
        rt.world.touch()
        log.warning("operator %s confirmed %s off for %s%s", caller.describe(), rt.peer, ep, " and accepted data loss" if accept else "",
                    extra={"fields": {"CLEVER_REASON": "confirm_fenced", "CLEVER_PEER": rt.peer}})
        blocker = None if facts.drbd.disk is P.Disk.UP_TO_DATE or accept else \
            f"local disk is {facts.drbd.disk}: promotion also needs --accept-data-loss"
        nxt = (f"recorded: {rt.peer} is off for {ep} (by {rec.operator}); " +
               (blocker or "this node now promotes, mounts, adds the IP and starts the VMs (see clevervm history)"))
        return {"record": {"episode": rec.episode.key(), "operator": rec.operator, "confirmed_at": rec.confirmed,
                           "accept_data_loss": rec.accept_data_loss}, "evidence": evidence if accept else None, "next": nxt}

    async def split_brain(self, args: Mapping[str, Any], caller: Caller) -> Any:
        evidence = await checks.split_brain_evidence(self.rt)
        if not _bool(args, "resolve"):
            return evidence
        victim = _str(args, "victim")
        if victim not in (self.rt.node, self.rt.peer):
            raise ControlError(f"--victim must be {self.rt.node} or {self.rt.peer}", "bad_request")
        if _str(args, "confirm") != victim:
            raise ControlError(f"type the victim's name ({victim}) to confirm: its changes since the split are discarded", "refused")
        if not evidence["split_brain"]:
            raise ControlError("DRBD reports no split brain: nothing to resolve", "refused")
        drbd = self.rt.drbd
        try:
            if victim == self.rt.node:
                if self.rt.world.mounted or self.rt.world.drbd.role.value == "Primary":
                    raise ControlError(f"{victim} still holds the resources: stop them first (clevervm standby {victim})", "refused")
                await drbd.discard_my_data_and_connect(SplitBrainVictim(caller.describe(), "clevervm split-brain --resolve"))
                ran = [f"drbdadm disconnect {drbd.cfg.resource}", f"drbdadm connect --discard-my-data {drbd.cfg.resource}"]
                nxt = f"{victim} reconnects discarding its changes; run the survivor's part on {self.rt.peer}, then clevervm unblock on both"
            else:
                await drbd.disconnect()
                await drbd.connect()
                ran = [f"drbdadm disconnect {drbd.cfg.resource}", f"drbdadm connect {drbd.cfg.resource}"]
                nxt = (f"this node ({self.rt.node}) waits as the survivor; on {victim} run "
                       f"clevervm split-brain --resolve --victim {victim}, then clevervm unblock on both")
        except drbd_errors.DrbdError as e:
            raise ControlError(f"split-brain recovery failed: {e}", "failed") from None
        log.warning("split-brain recovery by %s: victim %s; ran %s", caller.describe(), victim, "; ".join(ran),
                    extra={"fields": {"CLEVER_REASON": "split_brain_resolve"}})
        return {**evidence, "ran": ran, "next": nxt}


def _block_checks(block: P.Block | None, facts: P.Facts) -> list[str]:
    """What `unblock` looked at, in the policy's terms (it decides; this only reports)."""
    if block is None:
        return ["no block on this node"]
    out = [f"block: {block.cause} ({block.detail})"]
    match block.cause:
        case P.BlockCause.SPLIT_BRAIN:
            out.append("DRBD split brain: " + ("still reported" if facts.drbd.split_brain else "gone"))
        case P.BlockCause.UNSAFE_DRBD_CONFIG:
            out.append("DRBD configuration: " + ("safe now" if facts.drbd.config_safe is True else
                                                 f"still not safe ({facts.drbd.config_problem or 'not checked'})"))
        case P.BlockCause.MISFENCE:
            out.append("mis-fence: the operator's unblock is the acknowledgement that the fence devices were checked")
    return out


def _data_loss_evidence(rt: Runtime, facts: P.Facts) -> dict[str, Any]:
    dur = rt.loop.state.durable
    view = rt.heartbeat.view()
    rep = view.report
    peer_uuid = rep.resources.drbd.data_uuid if rep is not None else None
    here = facts.drbd.data_uuid or None
    lost = []
    if facts.drbd.disk is not P.Disk.UP_TO_DATE:
        lost.append(f"this node's disk is {facts.drbd.disk}: writes {rt.peer} acknowledged after this node last replicated "
                    "are not here and are lost if this node promotes")
    if V.epoch_behind(dur):
        lost.append(f"this node's epoch {dur.epoch} is behind {rt.peer}'s {dur.peer_epoch_seen}: {rt.peer} promoted since; "
                    "its data is newer")
    if peer_uuid and here and peer_uuid != here:
        lost.append(f"data UUIDs differ ({here} here, {peer_uuid} on {rt.peer} when last heard): the two disks diverged")
    return {"epoch_here": str(dur.epoch), "epoch_peer_seen": str(dur.peer_epoch_seen), "data_uuid_here": here,
            "data_uuid_peer_last_heard": peer_uuid, "disk_here": facts.drbd.disk.value,
            "peer_last_heard_seconds_ago": None if view.silent_for is None else round(view.silent_for, 1),
            "may_be_lost": lost or ["nothing known: the disk is UpToDate and the epochs agree"]}
