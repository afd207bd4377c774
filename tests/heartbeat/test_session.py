"""The protocol state machine driven directly, two sessions wired in memory on a test clock."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import itertools
import json
import shutil
import tempfile
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clever_cluster.daemon.heartbeat import model
from clever_cluster.daemon.heartbeat.facts import PeerState
from clever_cluster.daemon.heartbeat.model import AdminIntent, Announce, Ban, NodeReport
from clever_cluster.daemon.heartbeat.session import Session
from clever_cluster.daemon.heartbeat.wire import MAX_DATAGRAM, Drop, Envelope, Heartbeat, encode_body, seal

from .conftest import Pair, exchange, make_pair, make_session
from .test_wire import MSGPACK_VALUES

T0 = 1000.0


def connected(pair: Pair, inc1: int = 100, inc2: int = 200, **kw: object) -> tuple[Session, Session]:
    a, b = make_session(pair.cfg1, inc1, **kw), make_session(pair.cfg2, inc2)  # type: ignore[arg-type]
    exchange(a, b, T0)
    exchange(a, b, T0)
    assert a.state is b.state is PeerState.ALIVE
    return a, b


def kinds(s: Session) -> list[str]:
    return [e.kind for e in s.events]


# --------------------------------------------------------------------------- liveness


def test_handshake_needs_each_side_to_echo_the_others_incarnation(pair: Pair) -> None:
    a, b = make_session(pair.cfg1, 100), make_session(pair.cfg2, 200)
    b.receive(0, a.datagram(0, T0), T0)
    assert b.state is PeerState.UNSEEN and b.unconfirmed == 1  # a has not heard b yet: proves nothing fresh
    assert b.replay.incarnation == 100  # ...but b can now echo a's incarnation
    a.receive(0, b.datagram(0, T0), T0)
    assert a.state is PeerState.ALIVE and a.view(T0).incarnation == 200
    b.receive(0, a.datagram(0, T0), T0)
    assert b.state is PeerState.ALIVE
    assert kinds(a)[:2] == ["link_up", "peer_heard"]


def test_lost_exactly_at_the_timeout_and_not_before(pair: Pair) -> None:
    a, b = connected(pair)
    t = T0 + 0.5
    exchange(a, b, t, iter([1]))  # only link 1 carries traffic from now on
    a.poll(t + 0.999)
    assert a.state is PeerState.ALIVE
    assert not a.links[0].up and a.links[1].up  # link 0 silent since T0: down; the peer is not
    a.poll(t + 1.0)
    assert a.state is PeerState.LOST
    lost = [e for e in a.events if e.kind == "peer_lost"]
    assert len(lost) == 1 and lost[0].mono == t + 1.0
    assert a.next_deadline() is None or a.next_deadline() > t + 1.0  # type: ignore[operator]
    exchange(a, b, t + 3)
    assert a.state is PeerState.ALIVE and kinds(a)[-1] in ("peer_alive", "link_up")


def test_silence_counts_from_the_end_of_a_stall(pair: Pair) -> None:
    a, _b = connected(pair)
    a.note_stall(T0 + 0.9, 0.8)
    a.poll(T0 + 1.5)
    assert a.state is PeerState.ALIVE  # the stalled loop could not have read what arrived
    a.poll(T0 + 1.9)
    assert a.state is PeerState.LOST


def test_leaving_makes_the_peer_left_never_lost(pair: Pair) -> None:
    a, b = connected(pair)
    a.receive(0, b.datagram(0, T0 + 0.1, Announce(kind="leaving")), T0 + 0.1)
    assert a.state is PeerState.LEFT
    for dt in (1, 5, 60):
        a.poll(T0 + dt)
    assert a.state is PeerState.LEFT and "peer_lost" not in kinds(a)
    assert a.view(T0 + 60).announce == Announce(kind="leaving")


def test_restarting_is_waited_for_then_lost(pair: Pair) -> None:
    a, b = connected(pair)
    a.receive(0, b.datagram(0, T0 + 0.1, Announce(kind="restarting", expected=5.0)), T0 + 0.1)
    assert a.state is PeerState.RESTARTING
    a.poll(T0 + 4)
    assert a.state is PeerState.RESTARTING
    a.poll(T0 + 5.2)
    assert a.state is PeerState.LOST


def test_a_new_incarnation_is_a_restart_and_old_datagrams_are_replays(pair: Pair) -> None:
    a, b = connected(pair)
    old = b.datagram(0, T0 + 0.1)
    b2 = make_session(pair.cfg2, 201)
    exchange(a, b2, T0 + 0.2)
    exchange(a, b2, T0 + 0.2)
    assert a.state is PeerState.ALIVE and a.restarts == 1 and "peer_restarted" in kinds(a)
    a.receive(0, old, T0 + 0.3)
    assert a.drops[Drop.REPLAY] == 1


def test_peer_incarnation_floor_survives_a_restart_of_the_receiver(pair: Pair) -> None:
    a, b = connected(pair)
    old_b_datagram = b.datagram(0, T0)
    b2 = make_session(pair.cfg2, 201)
    exchange(a, b2, T0 + 1)
    a2 = make_session(pair.cfg1, 101)  # a restarts: its in-memory window is gone, its floor is on disk
    a2.receive(0, old_b_datagram, T0 + 2)
    assert a2.drops[Drop.REPLAY] == 1 and a2.replay.incarnation is None
    assert json.loads((pair.cfg1.cluster.state_dir / "peer-incarnation.json").read_text())["incarnation"] == 201


def test_recorded_datagrams_replayed_after_a_restart_prove_nothing(pair: Pair) -> None:
    """An attacker records the peer's datagrams, the peer dies, this daemon restarts: the
    recording is of the peer's current incarnation and in order, but echoes our old one."""
    _a, b = connected(pair)
    recording = [b.datagram(i % 2, T0 + i * 0.1) for i in range(40)]
    a2 = make_session(pair.cfg1, 101)
    for i, d in enumerate(recording):
        a2.receive(i % 2, d, T0 + 10 + i * 0.1)
    assert a2.state is PeerState.UNSEEN and a2.peer_report is None
    assert a2.unconfirmed == 40 and a2.view(T0 + 20).last_heard is None


def test_a_datagram_held_back_longer_than_the_timeout_proves_nothing(pair: Pair) -> None:
    """Withheld on the way, then released: in order on its stream, echoing our incarnation,
    but the send time it echoes shows its age."""
    a, b = connected(pair)
    held = b.datagram(0, T0 + 0.1)
    t = T0 + 0.1
    for _ in range(15):  # link 1 carries on meanwhile; link 0's datagrams are held back
        t += 0.1
        exchange(a, b, t, iter([1]))
    a.poll(t)
    a.receive(0, held, t)
    assert a.drops == {Drop.REPLAY: 1}
    assert a.links[0].last_heard == T0  # not refreshed by the stale datagram
    fresh = b.datagram(0, t)
    a.receive(0, fresh, t + 0.01)
    assert a.links[0].last_heard == t + 0.01 and a.drops == {Drop.REPLAY: 1}


def test_until_the_peer_echoes_one_of_our_send_times_it_is_not_heard(pair: Pair) -> None:
    a, b = make_session(pair.cfg1, 100), make_session(pair.cfg2, 200)
    b.receive(0, a.datagram(0, T0), T0)
    a.receive(0, b.datagram(0, T0), T0)  # echoes a's incarnation and send time: a hears b
    assert a.state is PeerState.ALIVE
    b.replay.incarnation = None  # as if b had never read a's body: no send time to echo
    b._fresh = None
    b.receive(0, a.datagram(0, T0 + 0.05), T0 + 0.05)
    assert b.state is PeerState.ALIVE  # a's datagram echoes b's send time
    b2 = make_session(pair.cfg2, 201)
    b2.replay.incarnation = 100  # knows a's incarnation from an envelope, has read no body of a
    a.receive(1, b2.datagram(1, T0 + 0.1), T0 + 0.1)
    assert a.unconfirmed >= 1 and a.view(T0 + 0.1).incarnation == 201 and a.restarts == 1
    assert a.peer_report is None  # b2's datagram echoed no send time of a: not taken as facts


def test_replayed_and_reordered_datagrams_are_dropped(pair: Pair) -> None:
    a, b = connected(pair)
    d1, d2 = b.datagram(0, T0 + 1), b.datagram(0, T0 + 1.1)
    e1 = b.datagram(1, T0 + 1)
    a.receive(0, d2, T0 + 1.2)
    a.receive(0, d1, T0 + 1.2)  # overtaken on its own stream
    a.receive(0, d2, T0 + 1.3)  # replayed
    a.receive(1, e1, T0 + 1.3)  # another stream keeps its own order
    assert a.drops == {Drop.REPLAY: 2}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 11)), min_size=1, max_size=40))
def test_only_datagrams_newer_than_everything_before_on_their_stream_are_accepted(order: list[tuple[int, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        pair = make_pair(Path(d))
        a, b = connected(pair)
        made = {(s, i): b.datagram(s, T0 + 1) for i in range(12) for s in (0, 1)}
        best: dict[int, int] = {}
        expected_drops = 0
        for s, i in order:
            if i <= best.get(s, -1):
                expected_drops += 1
            else:
                best[s] = i
            a.receive(s, made[(s, i)], T0 + 2)
        assert a.drops.get(Drop.REPLAY, 0) == expected_drops


def test_every_drop_reason_is_counted(pair: Pair, tmp_path: Path) -> None:
    a, b = connected(pair)
    other = make_pair(tmp_path / "other", cluster="othercluster")
    stranger = make_session(other.cfg2, 300)  # another cluster's node2, with its own key
    a.receive(0, stranger.datagram(0, T0), T0)
    assert a.drops[Drop.BAD_MAC] == 1
    # Same key, another cluster name.
    ident = b.ident
    wrong = seal(Envelope(2, 2, 0, ident.incarnation, 999, 100, "othercluster", ident.node),
                 encode_body(2, _body(b)), b.keys)
    a.receive(0, wrong, T0)
    assert a.drops[Drop.WRONG_CLUSTER] == 1
    a.receive(0, a.datagram(0, T0), T0)  # our own datagram reflected back
    assert a.drops[Drop.WRONG_NODE] == 1
    good = b.datagram(0, T0 + 0.1)
    a.receive(0, good[:30], T0)
    a.receive(0, good + b"x" * MAX_DATAGRAM, T0)
    assert a.drops[Drop.TRUNCATED] == 1 and a.drops[Drop.OVERSIZED] == 1
    a.receive(0, good, T0 + 0.1)
    a.receive(0, good, T0 + 0.1)
    assert a.drops[Drop.REPLAY] == 1
    assert a.state is PeerState.ALIVE


def _body(s: Session) -> Heartbeat:
    return Heartbeat(boot_id=s._boot_id, sent_us=1, fingerprint=s.fingerprint, report=NodeReport(phase="SECONDARY"),
                     intent_ref=AdminIntent().ref)


def _raw(b: Session, version: int, body: bytes, seq: int, heard: int) -> bytes:
    i = b.ident
    return seal(Envelope(version, max(version, 2), 0, i.incarnation, seq, heard, i.cluster, i.node), body, b.keys)


def test_unreadable_but_authentic_datagrams_prove_the_peer_alive_as_incompatible(pair: Pair) -> None:
    a, b = connected(pair)
    inc = a.ident.incarnation
    t = T0
    for seq, (version, body) in enumerate([(3, b"\x01whatever v3 is"), (0, b"\x80"), (2, msgpack.packb({"ph": 1}))], start=1000):
        t += 0.5
        a.receive(0, _raw(b, version, body, seq, inc), t)
        a.poll(t + 0.4)
        assert a.state is PeerState.INCOMPATIBLE  # never lost while they arrive
    assert a.drops == {Drop.UNKNOWN_VERSION: 1, Drop.TOO_OLD_VERSION: 1, Drop.MALFORMED: 1}
    assert "peer_lost" not in kinds(a) and "peer_incompatible" in kinds(a)
    a.poll(t + 1.0)
    assert a.state is PeerState.LOST  # silence is silence


def test_one_version_older_peer_is_spoken_to_in_its_version(pair: Pair) -> None:
    old, new = connected(pair, max_version=1)
    assert new.send_version() == 1 and old.send_version() == 1
    assert not new.requests.available and not old.requests.available
    for _ in range(3):
        exchange(old, new, T0 + 1)
    assert old.state is new.state is PeerState.ALIVE
    assert not old.drops and not new.drops
    assert new.view(T0 + 1).protocol == 1 and new.view(T0 + 1).peer_max_version == 1


def test_a_newer_node_starts_in_the_previous_version_until_it_hears_the_peer(pair: Pair) -> None:
    new = make_session(pair.cfg1, 100)
    assert new.send_version() == 1
    old = make_session(pair.cfg2, 200, max_version=1)
    exchange(new, old, T0)
    exchange(new, old, T0)
    assert old.state is PeerState.ALIVE and not old.drops  # never "incompatible" during the upgrade


def test_settings_mismatch_is_a_fact(pair: Pair, tmp_path: Path) -> None:
    other = make_pair(tmp_path / "b", overrides={"heartbeat": {"timeout": "2s"}})
    other_b = dataclasses.replace(other.cfg2, cluster=pair.cfg2.cluster)  # same key and names; timeout differs
    a, b = make_session(pair.cfg1, 100), make_session(other_b, 200)
    exchange(a, b, T0)
    exchange(a, b, T0)
    v = a.view(T0)
    assert v.settings_mismatch is True and v.peer_settings_fingerprint == b.fingerprint
    assert "settings_mismatch" in kinds(a)
    a2, _b2 = connected(make_pair(tmp_path / "c"))
    assert a2.view(T0).settings_mismatch is False


# --------------------------------------------------------------------------- link facts


def test_loss_and_rtt_per_link(pair: Pair) -> None:
    a, b = connected(pair)
    t = T0 + 1
    for i in range(100):
        t += 0.1
        d0 = b.datagram(0, t)
        if i % 10 >= 3:  # 30 % of b's datagrams on link 0 are lost on the way
            a.receive(0, d0, t + 0.002)
        a.receive(1, b.datagram(1, t), t + 0.002)
        b.receive(0, a.datagram(0, t + 0.012), t + 0.014)  # a holds b's datagram 10 ms
        b.receive(1, a.datagram(1, t + 0.012), t + 0.014)
    va, vb = a.view(t + 0.02), b.view(t + 0.02)
    assert va.links[0].loss_in == pytest.approx(0.3, abs=0.05)
    assert va.links[1].loss_in == pytest.approx(0.0, abs=0.02)
    assert vb.links[0].loss_out == pytest.approx(0.3, abs=0.05)  # as a reported it to b
    assert vb.links[0].loss_in == pytest.approx(0.0, abs=0.02)
    assert vb.links[1].rtt == pytest.approx(0.004, abs=1e-5)  # 2 ms each way; a's hold subtracted


def test_a_dead_link_goes_to_full_loss(pair: Pair) -> None:
    a, b = connected(pair)
    t = T0
    for _ in range(20):
        t += 0.1
        exchange(a, b, t)
    for _ in range(50):
        t += 0.1
        a.receive(1, b.datagram(1, t), t)
    loss = a.view(t).links[0].loss_in
    assert loss is not None and loss > 0.6
    assert a.view(t + 11).links[0].loss_in == 1.0


def test_a_report_too_large_for_a_datagram_sheds_vm_details(pair: Pair) -> None:
    vms = tuple(model.VmReport(name=f"{'v' * 60}{i:03d}", state="running") for i in range(16))
    big = NodeReport(phase="PRIMARY", resources=model.ResourceSummary(vms=vms))
    a = make_session(pair.cfg1, 100, report=lambda: big)
    b = make_session(pair.cfg2, 200)
    exchange(a, b, T0)
    data = a.datagram(0, T0)
    assert len(data) <= MAX_DATAGRAM
    b.receive(0, data, T0)
    got = b.peer_report
    assert got is not None and got.phase == "PRIMARY"
    assert got.resources.vms_omitted > 0 and len(got.resources.vms) + got.resources.vms_omitted == 16


# --------------------------------------------------------------------------- admin intent


def test_intent_replicates_is_acknowledged_and_survives_a_restart(pair: Pair) -> None:
    a, b = connected(pair)
    rec = a.intent.change(lambda r: dataclasses.replace(r, maintenance=True, bans=(Ban(node="node1", reason="migrate"),)), 1.7e9)
    assert rec.version == 1 and rec.origin == "node1" and not a.intent.acknowledged
    assert a.intent.outgoing()[1] == rec  # the whole record rides along until acknowledged
    exchange(a, b, T0 + 1)
    assert b.intent.record == rec and "intent_adopted" in kinds(b)
    exchange(a, b, T0 + 1.1)
    assert a.intent.acknowledged and b.intent.acknowledged and "intent_acknowledged" in kinds(a)
    assert a.intent.outgoing()[1] is None  # then only its name
    b2 = make_session(pair.cfg2, 201)
    assert b2.intent.record == rec
    assert json.loads((pair.cfg2.cluster.state_dir / "intent.json").read_text())["summary"] == rec.describe()


def test_concurrent_changes_converge_and_the_loser_is_told(pair: Pair) -> None:
    a, b = connected(pair)
    ra = a.intent.change(lambda r: dataclasses.replace(r, maintenance=True), 1.7e9)
    rb = b.intent.change(lambda r: dataclasses.replace(r, target_role="stopped"), 1.7e9)
    assert ra.version == rb.version == 1
    exchange(a, b, T0 + 1)
    exchange(a, b, T0 + 1.1)
    assert a.intent.record == b.intent.record == rb  # equal versions: the higher node name wins
    assert a.intent.acknowledged and b.intent.acknowledged
    assert a.intent.superseded == ra and "intent_superseded" in kinds(a)
    assert b.intent.superseded is None


EDITS = [
    lambda r: dataclasses.replace(r, maintenance=not r.maintenance),
    lambda r: dataclasses.replace(r, target_role="stopped" if r.target_role == "started" else "started"),
    lambda r: dataclasses.replace(r, bans=(Ban(node="node2"),)),
    lambda r: dataclasses.replace(r, standby=("node1",)),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["change1", "change2", "1to2", "2to1", "lose"]), st.integers(0, 3)), max_size=25))
def test_any_interleaving_of_changes_and_deliveries_converges(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        pair = make_pair(Path(d))
        a, b = connected(pair)
        made: list[AdminIntent] = []
        clock = itertools.count()
        for op, n in ops:
            t = T0 + 1 + next(clock) * 0.01
            if op == "change1":
                made.append(a.intent.change(EDITS[n], 1.7e9 + t))
            elif op == "change2":
                made.append(b.intent.change(EDITS[n], 1.7e9 + t))
            elif op == "1to2":
                b.receive(n % 2, a.datagram(n % 2, t), t)
            elif op == "2to1":
                a.receive(n % 2, b.datagram(n % 2, t), t)
            else:
                a.datagram(0, t)  # sent and lost
        for _ in range(3):
            exchange(a, b, T0 + 5)
        assert a.intent.record == b.intent.record
        assert a.intent.acknowledged and b.intent.acknowledged
        if made:
            assert a.intent.record == max(made, key=lambda r: r.order())
        assert a.intent.record == make_session(pair.cfg1, 999).intent.record  # what is on disk


@functools.cache
def _shared_pair() -> Pair:
    """One lab for all examples of a property that writes nothing but the peer's incarnation."""
    d = tempfile.mkdtemp(prefix="cc-hb-garbage-")
    atexit.register(shutil.rmtree, d, True)
    return make_pair(Path(d))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_authentic_garbage_never_raises_and_never_becomes_facts(data: st.DataObject) -> None:
    """The peer's key, a fresh envelope, and anything at all as the body."""
    a, b = connected(_shared_pair())
    report_before = a.peer_report
    value = data.draw(MSGPACK_VALUES | st.binary(max_size=300).map(lambda x: ("raw", x)))
    body = value[1] if isinstance(value, tuple) and value[:1] == ("raw",) else msgpack.packb(value, use_bin_type=True)
    version = data.draw(st.integers(0, 255))
    a.receive(0, _raw(b, version, body, 10_000, a.ident.incarnation), T0 + 0.1)
    a.receive(0, data.draw(st.binary(max_size=1400)), T0 + 0.1)
    assert a.peer_report == report_before  # nothing of it became a fact
    assert sum(a.drops.values()) >= 1


def test_identity_incarnation_is_persisted_and_never_goes_back(tmp_path: Path) -> None:
    from clever_cluster.daemon.heartbeat.identity import IdentityError, next_incarnation, read_machine_id

    first = next_incarnation(tmp_path, "b", wall_now=1000.0)
    assert first == 1000
    assert next_incarnation(tmp_path, "b", wall_now=1000.0) == 1001  # same second: still higher
    assert next_incarnation(tmp_path, "b", wall_now=10.0) == 1002  # clock stepped back: still higher
    assert next_incarnation(tmp_path, "b", wall_now=5000.0) == 5000
    assert json.loads((tmp_path / "incarnation.json").read_text())["incarnation"] == 5000
    (tmp_path / "incarnation.json").write_text('{"incarnation": "x"}')
    with pytest.raises(IdentityError, match="never go backwards"):
        next_incarnation(tmp_path, "b")
    uuid_file = tmp_path / "product_uuid"
    uuid_file.write_text("4C4C4544-0042-3510-8053-B4C04F4E4D32\n")
    assert read_machine_id(None, uuid_file) == "4c4c4544-0042-3510-8053-b4c04f4e4d32"
    assert read_machine_id(None, tmp_path / "missing") is None
    assert read_machine_id("11111111-2222-3333-4444-555555555555", uuid_file) == "11111111-2222-3333-4444-555555555555"


def test_a_peer_whose_incarnation_went_backwards_is_explained_once(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    a, _b = connected(pair, inc2=500)
    reset = make_session(pair.cfg2, 400)  # node2 lost its state directory and its clock is behind
    for i in range(5):
        a.receive(0, reset.datagram(0, T0 + i * 0.1), T0 + i * 0.1)
    assert a.drops[Drop.REPLAY] == 5
    hints = [r for r in caplog.records if "below 500 seen before" in r.getMessage()]
    assert len(hints) == 1 and "peer-incarnation.json" in hints[0].getMessage()
