"""Fault sequences from the red team of the last policy changes (run step by step, facts as they come).

- A fenced peer that came back (DRBD connected after the fence record) and went away again before its
  daemon was heard is a new loss: within the hour something happens (a fence, or the handler answered),
  never an endless wait.
- With a hardware watchdog, one lost probe round (the dampened gateway score still 1) never resets an
  active node whose standby is gone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from clever_cluster.policy import (
    AnswerFencePeer,
    Conn,
    Decision,
    Disk,
    Evidence,
    FenceAttempt,
    FencePeer,
    FenceRecord,
    Fencing,
    FreshProbe,
    Gateway,
    Phase,
    ProbeGateway,
    Promote,
    Role,
    SelfFence,
    step,
)
from clever_cluster.policy.model import Suspended

from .policy_build import BOOT, S, active_report, facts, report, state, with_vol
from .test_policy_table import EP

LOST, CONFIRMED, RECONNECTED, GONE_AGAIN = 100.0, 105.0, 107.0, 130.0
Make = Callable[[float, FreshProbe | None, FenceAttempt], Any]


def run(st: Any, make: Make, start: float, until: float, tick: float = 0.5) -> list[Decision]:
    """Step the policy from ``start`` to ``until``, answering probes (gateway up) and fence requests (no record yet)."""
    out: list[Decision] = []
    now, fresh, attempt = start, None, FenceAttempt(EP, LOST + 2.0, False, CONFIRMED)
    while now < until:
        d = step(st, make(now, fresh, attempt), S)
        out.append(d)
        st = d.state
        for a in d.actions:
            if isinstance(a, ProbeGateway):
                fresh = FreshProbe(now + 0.1, 1)
            if isinstance(a, FencePeer):
                attempt = FenceAttempt(a.episode, now, False, now + 0.1)
        now += tick
    return out


def returned_facts(*, active: bool, **drbd: Any) -> Make:
    def make(now: float, fresh: FreshProbe | None, attempt: FenceAttempt) -> Any:
        peer = report(received_at=LOST - 1.0) if active else active_report(received_at=LOST - 1.0)
        return facts(active=active, now=now, age=now - (LOST - 1.0), peer=peer,
                     drbd={"connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN, "peer_disk": Disk.UNKNOWN,
                           "connected_since": RECONNECTED, **drbd},
                     gateway=Gateway(1, fresh),
                     fencing=Fencing(records=(FenceRecord(EP, Evidence.DEVICE, "uuid-node2", CONFIRMED),), attempt=attempt))
    return make


def test_a_standby_whose_returned_peer_dies_again_fences_it_anew() -> None:
    st = with_vol(state(phase=Phase.SECONDARY, episode=EP, episode_boot=BOOT), lost_at=LOST, fence_not_before=LOST)
    out = run(st, returned_facts(active=False), GONE_AGAIN, GONE_AGAIN + 3600)
    fences = [a for d in out for a in d.actions if isinstance(a, FencePeer)]
    assert fences and all(a.episode != EP for a in fences), "an hour: no fence of the new loss"
    assert not any(isinstance(a, Promote) for d in out for a in d.actions)  # no record of the new episode here


def test_an_active_whose_returned_peer_dies_again_is_not_frozen_for_ever() -> None:
    st = with_vol(state(phase=Phase.PRIMARY, episode=EP, episode_boot=BOOT), lost_at=LOST, fence_not_before=LOST)
    out = run(st, returned_facts(active=True, fence_peer_pending=True, suspended=Suspended.FENCING), GONE_AGAIN, GONE_AGAIN + 3600)
    assert any(isinstance(a, (FencePeer, AnswerFencePeer)) for d in out for a in d.actions), "an hour frozen"


def test_one_lost_probe_round_never_resets_an_active_with_a_watchdog() -> None:
    s = dataclasses.replace(S, self_fence_when_isolated=True)
    now = LOST + s.gateway_dampen + 300
    att = FenceAttempt(EP, now - 100, False, now - 99.9, detail="bmc unreachable")
    f = facts(active=True, now=now, age=now - LOST + 1, peer=report(received_at=LOST - 1),
              drbd={"connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN, "peer_disk": Disk.UNKNOWN},
              gateway=Gateway(1, FreshProbe(now - 0.05, 0)),  # one failed fresh round; the dampened score is still 1
              fencing=dataclasses.replace(Fencing(attempt=att), failures=5))
    st = with_vol(state(phase=Phase.FENCING, episode=EP, episode_boot=BOOT), lost_at=LOST, fence_not_before=LOST,
                  probe_requested_at=now - 0.1)
    d = step(st, f, s)
    assert not any(isinstance(a, SelfFence) for a in d.actions), (d.reason, d.actions)
