"""The policy's Durable and the fail counts survive a restart; a damaged file stops the start, never resets it."""

from __future__ import annotations

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
durables = st.builds(
    P.Durable, epoch=epochs, peer_epoch_seen=epochs, episode_counter=st.integers(0, 999), episode=episodes,
    episode_boot=st.none() | names, peer_heard_boot=st.none() | names,
    block=st.none() | st.builds(P.Block, st.sampled_from(P.BlockCause), st.text(max_size=40)),
    grant_counter=st.integers(0, 999), grant_out=grants, grant_ack=grants, declined=st.none() | names,
    carried_on=st.none() | names, unblock_seen=st.integers(0, 99), fence_seen=st.integers(0, 99))


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
