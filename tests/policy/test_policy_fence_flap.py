"""The decision stays put while nothing changes: a fence is repeated until it
shows in the facts, and a fenced peer that came back before its daemon did
does not make the decision alternate between probing and fencing.

The lab once showed (failover with ``fencing.after = "on"``): the survivor
fenced node2, the BMC powered it back on, DRBD reconnected to it while the
survivor's promotion waited in its own fence-peer call; the record was void
(confirmed before DRBD's last connection), the handler got 1, the promotion
rolled back, and then the decision went `peer_lost_fencing` /
`peer_lost_probing_gateway` on every step (an alert each time) because each
``FencePeer`` came back at once from a coordinator that already held a record
of that episode. ``drive`` below replays that sequence with a runtime that
answers probes and fences the way the daemon's does."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings

from clever_cluster.policy import (
    Alert,
    Code,
    Conn,
    Decision,
    Disk,
    Evidence,
    Facts,
    FenceAttempt,
    FencePeer,
    FenceRecord,
    Fencing,
    FreshProbe,
    Gateway,
    Link,
    Phase,
    PolicyState,
    ProbeGateway,
    Promote,
    Role,
    SequenceKind,
    SequenceResult,
    step,
)

from . import test_policy_table as TT
from .policy_build import BOOT, S, active_report, facts, state, with_vol
from .test_policy_properties import near

LOST = 100.0                        # node2 lost (its last heartbeat 1 s before)
CONFIRMED = LOST + 5.0              # the BMC read node2 OFF
RECONNECTED = CONFIRMED + 2.0       # powered back on (fencing.after = "on"); DRBD Connected again
ROLLED_BACK = RECONNECTED + 0.5     # the promotion's fence-peer call got 1: DRBD refused Primary (-7)


def returned_facts(now: float, fresh: FreshProbe | None, attempt: FenceAttempt) -> Facts:
    """node1 after the rollback: node2's daemon silent, its node back and Connected, a record now void."""
    return facts(
        active=False, now=now, age=now - (LOST - 1.0), peer=active_report(received_at=LOST - 1.0),
        drbd={"connection": Conn.CONNECTED, "peer_role": Role.SECONDARY, "peer_disk": Disk.UP_TO_DATE,
              "connected_since": RECONNECTED},
        gateway=Gateway(1, fresh),
        fencing=Fencing(records=(FenceRecord(TT.EP, Evidence.DEVICE, "uuid-node2", CONFIRMED),), attempt=attempt),
        last_result=SequenceResult(SequenceKind.PROMOTE, "episode:1", False, ROLLED_BACK),
    )


def drive(until: float, tick: float = 0.01) -> list[Decision]:
    """Step the policy like the loop does, answering its actions like the daemon's executor:
    a probe comes back reachable a moment later; a fence comes back at once, confirmed
    ("already fenced for this episode": the coordinator holds the record)."""
    st: PolicyState = with_vol(state(phase=Phase.SECONDARY, episode=TT.EP, episode_boot=BOOT),
                               lost_at=LOST, fence_not_before=LOST, last_code=Code.SEQUENCE_FAILED_WAITING.value)
    fresh: FreshProbe | None = FreshProbe(LOST + 2.0, 1)
    attempt = FenceAttempt(TT.EP, LOST + 2.0, False, CONFIRMED)
    out: list[Decision] = []
    now = ROLLED_BACK
    while now < until:
        d = step(st, returned_facts(now, fresh, attempt), S)
        out.append(d)
        st = d.state
        for a in d.actions:
            if isinstance(a, ProbeGateway):
                fresh = FreshProbe(now + tick / 2, 1)
            elif isinstance(a, FencePeer):
                attempt = FenceAttempt(a.episode, now, False, now + tick / 2)
        now += tick
    return out


def test_a_fenced_peer_that_came_back_does_not_make_the_decision_flap() -> None:
    ds = drive(until=LOST + S.silent_peer_grace + 5.0)
    codes = [d.reason.code for d in ds]
    changes = sum(1 for a, b in itertools.pairwise(codes) if a != b)
    assert changes <= 2, f"{changes} changes of decision: {sorted(set(codes))}"
    assert not any(isinstance(a, FencePeer | Promote) for d in ds for a in d.actions), \
        "a fence the coordinator answers from the old record, or a promotion without a valid record"
    alerts = [a for d in ds for a in d.actions if isinstance(a, Alert)]
    assert len(alerts) <= changes + 1
    assert codes[-1] is Code.FENCED_PEER_RETURNED
    assert ds[-1].phase is Phase.SECONDARY


def test_the_returned_peer_is_waited_for_only_while_its_record_is_void() -> None:
    """A record confirmed after DRBD's last connection is valid: promote as usual."""
    f = returned_facts(LOST + 20, FreshProbe(LOST + 19.9, 1), FenceAttempt(TT.EP, LOST + 2.0, False, CONFIRMED))
    f = dataclasses.replace(f, drbd=dataclasses.replace(f.drbd, connection=Conn.CONNECTING, peer_role=Role.UNKNOWN,
                                                        peer_disk=Disk.UNKNOWN, connected_since=CONFIRMED - 30),
                            last_result=None)
    st = with_vol(state(phase=Phase.SECONDARY, episode=TT.EP, episode_boot=BOOT), lost_at=LOST, fence_not_before=LOST)
    assert step(st, f, S).reason.code is Code.PROMOTE_AFTER_FENCE


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near())
def test_a_fence_is_repeated_until_it_shows_in_the_facts(sf: tuple[PolicyState, Facts]) -> None:
    """docs/policy.md: actions are repeated until their effect shows. With the same facts (the
    executor has not reported the attempt yet), the next step fences again, for the same reason."""
    s0, f = sf
    d1 = step(s0, f, S)
    if not any(isinstance(a, FencePeer) for a in d1.actions):
        return
    d2 = step(d1.state, f, S)
    assert d2.reason.code is d1.reason.code, (d1.reason, d2.reason)
    assert any(isinstance(a, FencePeer) for a in d2.actions), d2.reason
    assert not any(isinstance(a, Alert) and a.kind == "fencing" for a in d2.actions), "the fencing alert once, not per step"


def test_the_fence_is_repeated_with_the_exact_lab_facts() -> None:
    """The step that fenced in the lab, taken again before the executor reports the attempt."""
    f = dataclasses.replace(returned_facts(LOST + 3.0, FreshProbe(LOST + 2.9, 1), None),
                            drbd=dataclasses.replace(facts(active=False).drbd, connection=Conn.CONNECTING, peer_role=Role.UNKNOWN,
                                                     peer_disk=Disk.UNKNOWN),
                            fencing=Fencing(), last_result=None, peer=dataclasses.replace(
                                facts(active=False).peer, links=(Link("bond0", 4.0), Link("lan", 4.0)), report=active_report(received_at=LOST - 1.0)))
    st = with_vol(state(phase=Phase.FENCING, episode=TT.EP, episode_boot=BOOT), lost_at=LOST, fence_not_before=LOST,
                  probe_requested_at=LOST + 2.8)
    d1 = step(st, f, S)
    assert d1.reason.code is Code.PEER_LOST_FENCING
    d2 = step(d1.state, dataclasses.replace(f, now=f.now + 0.01), S)
    assert d2.reason.code is Code.PEER_LOST_FENCING, d2.reason
