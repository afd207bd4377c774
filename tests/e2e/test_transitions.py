"""The transition-log checks: never two active (on intervals, not samples) and no acknowledged write lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clever_cluster.sim.nodelab import transitions as tr


def rec(t: float, node: str, kind: str, value: Any, **fields: Any) -> tr.Record:
    return tr.Record(t, node, "test", kind, value, fields)


def test_handover_in_order_is_clean() -> None:
    log = [
        rec(1.0, "node1", "role", "Primary", held={}),
        rec(1.1, "node1", "mount", "mounted", mount_id=7, source="/dev/loop0", target="/mnt"),
        rec(1.2, "node1", "vm", "active", domain="plc1"),
        rec(2.0, "node1", "vm", "inactive", domain="plc1"),
        rec(2.1, "node1", "mount", "unmounted", mount_id=7),
        rec(2.2, "node1", "role", "Secondary"),
        rec(2.2, "node2", "role", "Primary", held={}),  # half-open intervals: touching is not overlapping
        rec(2.3, "node2", "vm", "active", domain="plc1"),
    ]
    assert tr.never_two_active(log) == []
    ivs = tr.intervals(log)
    assert [(i.node, i.kind, i.start, i.end) for i in ivs] == [
        ("node1", "role", 1.0, 2.2), ("node1", "mount", 1.1, 2.1), ("node1", "vm", 1.2, 2.0),
        ("node2", "role", 2.2, None), ("node2", "vm", 2.3, None)]


def test_overlap_of_any_kinds_is_reported_with_both_intervals() -> None:
    log = [
        rec(1.0, "node1", "vm", "active", domain="plc1"),
        rec(1.5, "node2", "mount", "mounted", mount_id=3, source="/dev/loop1", target="/n2/mnt"),
        rec(1.7, "node2", "mount", "unmounted", mount_id=3),
        rec(3.0, "node1", "vm", "inactive", domain="plc1"),
    ]
    (o,) = tr.never_two_active(log)
    text = o.describe(origin=1.0)
    assert "node1 VM running plc1 [0.000, 2.000)" in text
    assert "node2 mounted 3 (/dev/loop1 on /n2/mnt) [0.500, 0.700)" in text


def test_who_is_active_at_a_moment() -> None:
    log = [rec(1.0, "node1", "role", "Primary"), rec(2.0, "node1", "role", "Secondary"), rec(2.5, "node2", "role", "Primary"),
           rec(2.6, "node2", "vm", "active", domain="plc1")]
    assert {n: [i.kind for i in ivs] for n, ivs in tr.active_at(log, 1.5).items()} == {"node1": ["role"]}
    assert tr.active_at(log, 2.2) == {}
    assert {n: [i.kind for i in ivs] for n, ivs in tr.active_at(log).items()} == {"node2": ["role", "vm"]}


def test_unmanaged_domains_do_not_count_but_listed_ones_do() -> None:
    log = [rec(1.0, "node1", "vm", "active", domain="tools"), rec(1.0, "node2", "vm", "active", domain="tools"),
           rec(2.0, "node1", "vm", "active", domain="db"), rec(2.5, "node2", "role", "Primary")]
    assert tr.never_two_active(log) == []
    assert len(tr.never_two_active(log, managed_names=("db",))) == 1


def test_power_off_closes_every_interval_of_that_node_only() -> None:
    log = [
        rec(1.0, "node1", "role", "Primary"),
        rec(1.1, "node1", "vm", "active", domain="plc1"),
        rec(2.0, "node1", "power", "links_down"),
        rec(2.1, "node1", "power", "off"),
        rec(3.0, "node2", "role", "Primary"),
    ]
    assert tr.never_two_active(log) == []
    assert {(i.node, i.kind, i.end) for i in tr.intervals(log)} == {("node1", "role", 2.1), ("node1", "vm", 2.1), ("node2", "role", None)}
    # Without the power record node1 would still hold everything when node2 promotes.
    assert len(tr.never_two_active([r for r in log if r.kind != "power"])) == 2


def test_writes_acknowledged_before_a_promotion_must_be_held() -> None:
    held = tr.WriteSet()
    for wid in ("node1.a#1", "node1.a#2", "node1.a#3"):
        held.add(wid)
    log = [
        rec(1.0, "node1", "write_ack", "node1.a#1", id="node1.a#1"),
        rec(1.1, "node1", "write_ack", "node1.a#2", id="node1.a#2"),
        rec(1.2, "node1", "write_ack", "node1.a#3", id="node1.a#3"),
        rec(2.0, "node2", "role", "Primary", held=held.to_json()),
        rec(3.0, "node2", "write_ack", "node2.b#1", id="node2.b#1"),
        rec(3.5, "node2", "role", "Secondary"),
        rec(4.0, "node1", "role", "Primary", held=held.to_json()),  # node2's write is not there
    ]
    (lost,) = tr.lost_writes(log)
    assert lost.write == "node2.b#1" and lost.promotion.node == "node1"
    assert "write node2.b#1 acknowledged by node2 at 2.000 is missing on node1, promoted at 3.000" in lost.describe(origin=1.0)
    assert tr.report(log, allow_lost_writes=True) == []
    assert len(tr.report(log)) == 1


def test_writeset_keeps_ranges() -> None:
    w = tr.WriteSet()
    for seq in (1, 2, 3, 7, 5, 6):
        w.add(f"n.x#{seq}")
    assert w.to_json() == {"n.x": [[1, 3], [5, 7]]}
    assert "n.x#6" in w and "n.x#4" not in w and "n.y#1" not in w
    assert w.count() == 6
    w.add("n.x#4")
    assert w.to_json() == {"n.x": [[1, 7]]}


def test_records_from_several_files_merge_in_time_order(tmp_path: Path) -> None:
    a = tr.Recorder(tmp_path / "a.jsonl", "drbd")
    b = tr.Recorder(tmp_path / "b.jsonl", "libvirt")
    b.record("node2", "vm", "active", t=2.0, domain="plc1")
    a.record("node1", "role", "Primary", t=1.0)
    a.record("node1", "role", "Secondary", t=3.0)
    (tmp_path / "b.jsonl").open("a").write('{"t": 9, "node": "x"')  # a torn line is skipped
    recs = tr.load(tmp_path)
    assert [(r.t, r.src, r.value) for r in recs] == [(1.0, "drbd", "Primary"), (2.0, "libvirt", "active"), (3.0, "drbd", "Secondary")]
    assert len(tr.never_two_active(recs)) == 1
