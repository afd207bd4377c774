"""The policy's Durable and the fail counts survive a restart; a damaged file stops the start, never resets it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clever_cluster import policy as P
from clever_cluster.daemon.statefiles import DurableStore, FailCounts, StateError, durable_from_json, durable_to_json

names = st.text(alphabet="abcdefgh-0123456789", min_size=1, max_size=12)
epochs = st.builds(P.Epoch, st.integers(0, 10**6), names)
episodes = st.none() | st.builds(P.LossEpisode, names, st.none() | st.integers(1, 2**40), st.none() | names, st.integers(0, 999))
grants = st.none() | st.builds(P.Grant, names, st.sampled_from(P.GrantKind), names, names, st.integers(1, 2**40), epochs,
                               st.none() | st.integers(1, 2**40))
DURABLE_FIELDS: dict[str, st.SearchStrategy[object]] = dict(
    epoch=epochs, peer_epoch_seen=epochs, episode_counter=st.integers(0, 999), episode=episodes,
    episode_boot=st.none() | names, peer_heard_boot=st.none() | names,
    block=st.none() | st.builds(P.Block, st.sampled_from(P.BlockCause), st.text(max_size=40)),
    grant_counter=st.integers(0, 999), grant_out=grants, grant_ack=grants, declined=st.none() | names,
    carried_on=st.none() | names, unblock_seen=st.integers(0, 99), fence_seen=st.integers(0, 99),
    peer_left=st.none() | names)
durables = st.builds(P.Durable, **DURABLE_FIELDS)


def test_every_durable_field_is_drawn() -> None:
    """A field added to the policy's Durable must be drawn above (and so persisted), or it is lost on restart."""
    assert set(DURABLE_FIELDS) == {f.name for f in dataclasses.fields(P.Durable)}


def test_a_clean_leave_of_the_peer_survives_a_restart(tmp_path: Path) -> None:
    """Sequence: the standby shuts down cleanly (announces leaving, nothing held), then the active's daemon
    restarts. The policy keeps the peer's boot id in Durable.peer_left so the restarted daemon treats the peer
    as left, not lost (no fence of a machine in maintenance, policy commit 815d57f); the state file must keep it."""
    store = DurableStore(tmp_path)
    store.save(P.Durable(epoch=P.Epoch(3, "node1"), peer_left="node2-boot7"))
    assert DurableStore(tmp_path).load().peer_left == "node2-boot7"
    older = durable_to_json(P.Durable(epoch=P.Epoch(3, "node1")))
    del older["peer_left"]  # written by a daemon before the field existed: still readable, the leave not known
    store.path.write_text(json.dumps(older))
    assert DurableStore(tmp_path).load() == P.Durable(epoch=P.Epoch(3, "node1"))


@given(durables)
def test_durable_round_trips_through_json(d: P.Durable) -> None:
    assert durable_from_json(json.loads(json.dumps(durable_to_json(d)))) == d


def test_durable_store(tmp_path: Path) -> None:
    store = DurableStore(tmp_path)
    assert store.load() == P.Durable()  # a first start
    d = P.Durable(epoch=P.Epoch(4, "node1"), peer_heard_boot="b1", block=P.Block(P.BlockCause.SPLIT_BRAIN, "sb"))
    store.save(d)
    assert DurableStore(tmp_path).load() == d
    store.path.write_text("{torn")
    with pytest.raises(StateError, match="unreadable"):
        store.load()
    store.path.write_text(json.dumps({"format": 99}))
    with pytest.raises(StateError, match="format"):
        store.load()


def test_fail_counts_persist_and_cleanups_apply_once(tmp_path: Path) -> None:
    fc = FailCounts(tmp_path)
    fc.load()
    assert fc.add("plc1", 100.0, "b1") == 1 and fc.add("plc1", 200.0, "b1") == 2 and fc.add("plc2", 300.0, "b1") == 1
    again = FailCounts(tmp_path)
    again.load()
    assert again.as_tuples() == (("plc1", 2, 200.0), ("plc2", 1, 300.0))
    assert again.apply_cleanup(1, 250.0, "plc1") == ["plc1"]  # recorded before the cleanup: cleared
    assert again.apply_cleanup(1, 999.0, None) == []  # the same cleanup is applied once
    assert again.apply_cleanup(2, 250.0, None) == []  # plc2 failed after that cleanup was asked
    assert again.as_tuples() == (("plc2", 1, 300.0),)
    third = FailCounts(tmp_path)
    third.load()
    assert third.cleanup_seen == 2 and third.as_tuples() == (("plc2", 1, 300.0),)
    third.path.write_text("[]")
    with pytest.raises(StateError):
        FailCounts(tmp_path).load()


def test_a_fail_count_that_cannot_be_written_is_kept_and_written_later(tmp_path: Path) -> None:
    """Sequence: a VM crashes while the state directory refuses writes (full, read-only after an I/O
    error). The count is reached from the VM monitor's callback and from the decision loop's actions
    (``StartVm(count_failure)``); a raise there froze the world's VM facts or ended the loop. The
    count is kept in memory (the policy places VMs by it) and written with the next change."""
    fc = FailCounts(tmp_path)
    fc.load()
    fc.path.mkdir()  # the rename onto it fails like a refused write
    assert fc.add("plc1", 100.0, "b1") == 1
    assert fc.write_error is not None and fc.as_tuples() == (("plc1", 1, 100.0),)
    fc.path.rmdir()
    assert fc.add("plc1", 200.0, "b1") == 2 and fc.write_error is None
    again = FailCounts(tmp_path)
    again.load()
    assert again.as_tuples() == (("plc1", 2, 200.0),)
