"""Hypothesis properties of ``step``: total (no exception on any generated
state and facts), deterministic, and never an action that breaks S1-S9 as
judged by the simulator's independent oracle (``oracle.check_decision``)."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clever_cluster.policy import (
    Announcement,
    Ban,
    Conn,
    Disk,
    Drbd,
    Durable,
    Epoch,
    Evidence,
    Facts,
    FailCount,
    FenceAttempt,
    FencedIncarnation,
    FenceRecord,
    Fencing,
    FreshProbe,
    Gateway,
    Grant,
    GrantKind,
    ImageKind,
    ImageToken,
    Intent,
    Link,
    Local,
    LossEpisode,
    PeerFacts,
    PeerReport,
    Phase,
    PolicyState,
    Resources,
    Role,
    Sequence,
    SequenceKind,
    SequenceResult,
    Settings,
    StopCause,
    Suspended,
    TargetRole,
    Vm,
    VmState,
    step,
)
from clever_cluster.policy.model import BlockCause
from clever_cluster.policy.state import Block
from clever_cluster.sim.cluster.oracle import check_decision

from . import test_policy_table as TT

S = Settings(node="node1", peer="node2")
BOOTS = ("node1-boot1", "node1-boot2")
PBOOTS = ("node2-boot1", "node2-boot2")
small = st.floats(min_value=0, max_value=50, allow_nan=False)
times = st.floats(min_value=0, max_value=200, allow_nan=False)
epochs = st.builds(Epoch, st.integers(0, 4), st.sampled_from(["node1", "node2", ""]))
episodes = st.builds(LossEpisode, st.just("node2"), st.none() | st.integers(1, 2), st.none() | st.sampled_from(PBOOTS), st.integers(1, 3))
grants = st.builds(Grant, st.sampled_from(["g1", "g2"]), st.sampled_from(GrantKind), st.sampled_from(["node1", "node2"]),
                   st.sampled_from(["node1", "node2"]), st.integers(1, 2), epochs, st.none() | st.integers(1, 2))
tokens = st.builds(ImageToken, st.sampled_from(ImageKind), st.none() | st.sampled_from(["g1", "g2"]), epochs, st.sampled_from(["0A", "0B"]))
records = st.builds(FenceRecord, episodes, st.sampled_from(Evidence), st.just("uuid-node2"), times, st.booleans())

reports = st.builds(
    PeerReport, node=st.just("node2"), incarnation=st.integers(1, 2), boot_id=st.sampled_from(PBOOTS), machine_id=st.just("uuid-node2"),
    received_at=times, phase=st.sampled_from([p.value for p in Phase]), epoch=epochs, data_uuid=st.sampled_from(["0A", "0B"]),
    disk=st.sampled_from(Disk), drbd_primary=st.booleans(), mounted=st.booleans(), ip=st.booleans(), vms_running=st.integers(0, 2),
    gateway_score=st.none() | st.integers(0, 2), eligible=st.booleans(), grant=st.none() | grants,
    ack=st.none() | st.sampled_from(["g1", "g2"]), decline=st.none() | st.sampled_from(["g1", "g2"]), outdate_request=st.booleans(),
    leaving=st.booleans(), restarting_until=st.none() | times,
    fenced=st.lists(st.builds(FencedIncarnation, st.sampled_from(["node1", "node2"]), st.none() | st.integers(1, 2),
                              st.sampled_from(BOOTS + PBOOTS)), max_size=2).map(tuple),
    fail_counts=st.lists(st.tuples(st.sampled_from(["vm1", "vm2"]), st.integers(0, 4)), max_size=2).map(tuple),
    settings_fingerprint=st.sampled_from(["fp", "other"]),
)
facts_st = st.builds(
    Facts,
    now=times,
    local=st.builds(Local, st.just("node1"), st.integers(1, 2), st.sampled_from(BOOTS), st.just("uuid-node1"), st.booleans(), st.just("fp")),
    peer=st.builds(PeerFacts, st.lists(st.builds(Link, st.sampled_from(["bond0", "lan"]), st.none() | small), max_size=2).map(tuple),
                   st.none() | reports, st.booleans(), st.booleans()),
    gateway=st.builds(Gateway, st.none() | st.integers(0, 2), st.none() | st.builds(FreshProbe, times, st.none() | st.integers(0, 2))),
    drbd=st.builds(Drbd, st.sampled_from(Role), st.sampled_from(Role), st.sampled_from(Conn), st.sampled_from(Disk), st.sampled_from(Disk),
                   st.sampled_from(["0A", "0B"]), st.booleans(), st.sampled_from(Suspended), st.booleans(), st.none() | st.booleans(), st.just("")),
    resources=st.builds(Resources, st.booleans(), st.booleans(),
                        st.tuples(*[st.builds(Vm, st.just(n), st.sampled_from(VmState), st.sampled_from(StopCause), st.none() | tokens)
                                    for n in ("vm1", "vm2")])),
    intent=st.builds(Intent, st.integers(0, 3), st.sampled_from(TargetRole),
                     st.lists(st.builds(Ban, st.sampled_from(["node1", "node2"]), st.none() | times), max_size=2).map(tuple),
                     st.frozensets(st.sampled_from(["node1", "node2"])), st.booleans(), st.integers(0, 2), st.integers(0, 2)),
    fencing=st.builds(Fencing, st.lists(records, max_size=2).map(tuple),
                      st.none() | st.builds(FenceAttempt, episodes, times, st.booleans(), st.none() | times, st.just("x")),
                      st.integers(0, 3), st.booleans()),
    fail_counts=st.lists(st.builds(FailCount, st.sampled_from(["vm1", "vm2"]), st.integers(0, 5), times), max_size=2).map(tuple),
    sequence=st.none() | st.builds(Sequence, st.sampled_from(SequenceKind), st.sampled_from(["held", "grant:g1", "episode:1", "stop"]), times),
    last_result=st.none() | st.builds(SequenceResult, st.sampled_from(SequenceKind), st.sampled_from(["held", "stop_now"]), st.booleans(), times),
    stalled=st.booleans(),
    random_draw=st.floats(min_value=0, max_value=0.999),
)
durables = st.builds(
    Durable, epoch=epochs, peer_epoch_seen=epochs, episode_counter=st.integers(0, 3), episode=st.none() | episodes,
    episode_boot=st.none() | st.sampled_from(BOOTS), peer_heard_boot=st.none() | st.sampled_from(BOOTS),
    block=st.none() | st.builds(Block, st.sampled_from(BlockCause), st.just("x")), grant_counter=st.integers(0, 3),
    grant_out=st.none() | grants, grant_ack=st.none() | grants, declined=st.none() | st.sampled_from(["g1", "g2"]),
    carried_on=st.none() | st.sampled_from(["episode:1", "promote:grant:g1"]), unblock_seen=st.integers(0, 2), fence_seen=st.integers(0, 2),
)
states = st.builds(
    PolicyState, durable=durables, phase=st.sampled_from(Phase), lost_at=st.none() | times, fence_not_before=st.none() | times,
    probe_requested_at=st.none() | times, observe_until=times, gateway_lower_since=st.none() | times, operator_fence=st.booleans(),
    published=st.none() | st.builds(Announcement, st.sampled_from(Phase), epochs, st.booleans()), last_code=st.just(""),
)

PROFILE = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROFILE
@given(states, facts_st)
def test_step_is_total_and_deterministic(s0: PolicyState, f: Facts) -> None:
    d1 = step(s0, f, S)
    d2 = step(s0, f, S)
    assert d1 == d2
    assert d1.reason.sentence


@PROFILE
@given(states, facts_st)
def test_no_action_breaks_a_rule(s0: PolicyState, f: Facts) -> None:
    d = step(s0, f, S)
    ages = [ln.age for ln in f.peer.links if ln.age is not None]
    heard_now = f.peer.report is not None and bool(ages) and min(ages) < S.heartbeat_timeout
    heard_this_boot = s0.durable.peer_heard_boot == f.local.boot_id or heard_now
    assert check_decision(s0, f, S, d, heard_this_boot=heard_this_boot) == [], d.reason


# ---------------------------------------------------------------- situations near the decisions that matter
# Uniform random facts almost never reach a fence or a promotion; these start from situations that do
# (a lost peer, a confirmed fence, a grant, a lone boot) and perturb any subset of the inputs.


BASES = [(st_, f) for _, st_, f, _, _ in TT.CASES]
GRANTS_NEAR = st.sampled_from([TT.GRANT, TT.YIELD, TT.MY_GRANT, TT.MY_YIELD])


@st.composite
def near(draw: st.DrawFn) -> tuple[PolicyState, Facts]:
    s0, f = draw(st.sampled_from(BASES))
    maybe = lambda: draw(st.integers(0, 3)) == 0  # noqa: E731
    d = f.drbd
    if maybe():
        d = dataclasses.replace(d, disk=draw(st.sampled_from(Disk)))
    if maybe():
        d = dataclasses.replace(d, connection=draw(st.sampled_from(Conn)), peer_role=draw(st.sampled_from(Role)))
    if maybe():
        d = dataclasses.replace(d, split_brain=draw(st.booleans()), config_safe=draw(st.none() | st.booleans()))
    if maybe():
        d = dataclasses.replace(d, fence_peer_pending=draw(st.booleans()), suspended=draw(st.sampled_from(Suspended)))
    if maybe():
        d = dataclasses.replace(d, role=draw(st.sampled_from(Role)))
    f = dataclasses.replace(f, drbd=d)
    if maybe():
        f = dataclasses.replace(f, gateway=Gateway(draw(st.none() | st.integers(0, 2)),
                                                   draw(st.none() | st.builds(FreshProbe, st.floats(90, 100.5), st.none() | st.integers(0, 1)))))
    if maybe():
        age = draw(st.none() | st.floats(0, 30))
        f = dataclasses.replace(f, peer=dataclasses.replace(f.peer, links=(Link("bond0", age), Link("lan", age))))
    rep = f.peer.report
    if rep is not None and maybe():
        rep = dataclasses.replace(rep, phase=draw(st.sampled_from([p.value for p in Phase])), drbd_primary=draw(st.booleans()),
                                  mounted=draw(st.booleans()), epoch=draw(epochs), disk=draw(st.sampled_from(Disk)))
    if rep is not None and maybe():
        rep = dataclasses.replace(rep, grant=draw(st.none() | GRANTS_NEAR), ack=draw(st.none() | st.sampled_from(["node1-1-1", "node2-1-1"])),
                                  leaving=draw(st.booleans()), restarting_until=draw(st.none() | st.floats(90, 130)))
    f = dataclasses.replace(f, peer=dataclasses.replace(f.peer, report=rep))
    if maybe():
        f = dataclasses.replace(f, intent=Intent(bans=tuple(Ban(n) for n in draw(st.sets(st.sampled_from(["node1", "node2"])))),
                                                 maintenance=draw(st.booleans()), fence_seq=draw(st.integers(0, 1)),
                                                 standby=draw(st.frozensets(st.sampled_from(["node1", "node2"])))))
    if maybe():
        f = dataclasses.replace(f, fencing=Fencing(tuple(draw(st.lists(st.sampled_from([TT.DEV, TT.OPR, dataclasses.replace(TT.OPR, accept_data_loss=True)]) | records, max_size=2))),
                                                   draw(st.none() | st.builds(FenceAttempt, st.just(TT.EP), st.floats(80, 100), st.booleans(), st.none() | st.floats(80, 100), st.just("x"))),
                                                   draw(st.integers(0, 2)), draw(st.booleans())))
    if maybe():
        f = dataclasses.replace(f, stalled=draw(st.booleans()), now=draw(st.floats(95, 130)), random_draw=draw(st.floats(0, 0.999)))
    if maybe():
        f = dataclasses.replace(f, local=dataclasses.replace(f.local, boot_id=draw(st.sampled_from(BOOTS)), shutting_down=draw(st.booleans())))
    if maybe():
        s0 = dataclasses.replace(s0, lost_at=draw(st.none() | st.floats(70, 100)), fence_not_before=draw(st.none() | st.floats(70, 130)),
                                 probe_requested_at=draw(st.none() | st.floats(85, 101)), observe_until=draw(st.floats(0, 110)))
    if maybe():
        s0 = dataclasses.replace(s0, durable=dataclasses.replace(
            s0.durable, epoch=draw(epochs), peer_epoch_seen=draw(epochs), grant_ack=draw(st.none() | GRANTS_NEAR),
            grant_out=draw(st.none() | GRANTS_NEAR), peer_heard_boot=draw(st.none() | st.sampled_from(BOOTS)),
            episode=draw(st.sampled_from([s0.durable.episode, TT.EP, None]))))
    return s0, f


def oracle_ok(s0: PolicyState, f: Facts, **kw: object) -> list[str]:
    d = step(s0, f, S, **kw)  # type: ignore[arg-type]
    ages = [ln.age for ln in f.peer.links if ln.age is not None]
    heard_now = f.peer.report is not None and bool(ages) and min(ages) < S.heartbeat_timeout
    return check_decision(s0, f, S, d, heard_this_boot=s0.durable.peer_heard_boot == f.local.boot_id or heard_now)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near())
def test_no_action_breaks_a_rule_near_decisions(sf: tuple[PolicyState, Facts]) -> None:
    s0, f = sf
    assert oracle_ok(s0, f) == [], step(s0, f, S).reason
    assert step(s0, f, S) == step(s0, f, S)
