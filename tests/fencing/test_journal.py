"""The fence record journal: durable, per episode, torn lines ignored."""

from __future__ import annotations

from pathlib import Path

from clever_cluster.fencing.journal import FenceJournal, FenceRecord, decode, encode
from clever_cluster.fencing.types import Episode

EP = Episode("node2", 7, "boot-b", 3)


def rec(ep: Episode = EP) -> FenceRecord:
    return FenceRecord(episode=ep, target="node2", target_incarnation=ep.peer_incarnation, kind="device", level=1, devices=("bmc",),
                       evidence=("bmc: read OFF (2/2)",), started=1.0, confirmed=2.0, local_node="node1", local_boot_id="boot-a")


def test_record_round_trip_and_survives_a_restart(tmp_path: Path) -> None:
    j = FenceJournal(tmp_path)
    j.append(rec())
    assert decode(encode(rec())) == rec()
    again = FenceJournal(tmp_path)
    assert again.record_for(EP) == rec()
    assert (tmp_path / FenceJournal.FILENAME).stat().st_mode & 0o077 == 0


def test_record_never_serves_another_episode(tmp_path: Path) -> None:
    j = FenceJournal(tmp_path)
    j.append(rec())
    for other in (Episode("node2", 7, "boot-b", 4), Episode("node2", 8, "boot-b", 3), Episode("node2", 7, "boot-c", 3),
                  Episode("node3", 7, "boot-b", 3)):
        assert j.record_for(other) is None
        assert FenceJournal(tmp_path).record_for(other) is None


def test_torn_or_garbled_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    j = FenceJournal(tmp_path)
    j.append(rec())
    line = encode(rec(Episode("node2", 9, "boot-x", 5)))
    with open(j.path, "ab") as f:
        f.write(line.replace(b"boot-x", b"boot-y") + b"\n")  # body no longer matches its checksum
        f.write(line[: len(line) // 2])  # power lost in the middle of a write
    again = FenceJournal(tmp_path)
    assert again.bad_lines == 2
    assert again.record_for(Episode("node2", 9, "boot-x", 5)) is None
    assert again.record_for(Episode("node2", 9, "boot-y", 5)) is None
    assert again.record_for(EP) == rec()
