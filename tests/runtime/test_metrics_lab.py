"""Metrics of the running daemons, scraped over HTTP inside each lab node and checked against ``clevervm status``.

One lab: both nodes' pages agree with their own status documents (phase,
peer, links, DRBD, VMs) and carry every series the alert rules read; after ``clevervm migrate`` both sides of the
handover have observations in ``clever_handover_phase_seconds`` that match
the history's timeline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab
from clever_cluster.sim.nodelab.node import LabNode

from .cluster import OVERRIDES, cli_json, holds_all, other, wait_active, wait_code
from .test_metrics_contrib import problems_in, rule_exprs

pytestmark = [pytest.mark.root, pytest.mark.slow]


def disagreements(st: dict[str, Any], m: dict[str, float]) -> list[str]:
    """What the metrics page says differently from the status document (empty: they agree)."""
    want: dict[str, float] = {
        f'clever_phase{{clever_phase="{st["phase"]}"}}': 1.0,
        "clever_peer_alive": float(st["nodes"][1]["online"]),
    }
    d = st["drbd"]
    r = d["resource"]
    for key, metric in (("role", "clever_drbd_role"), ("peer_role", "clever_drbd_peer_role"),
                        ("connection", "clever_drbd_connection_state"), ("disk", "clever_drbd_disk_state"),
                        ("peer_disk", "clever_drbd_peer_disk_state")):
        want[f'{metric}{{{metric}="{d[key]}",resource="{r}"}}'] = 1.0
    want[f'clever_drbd_out_of_sync_bytes{{resource="{r}"}}'] = float(d["out_of_sync_kib"]) * 1024
    for ln in st["heartbeat"]["links"]:
        want[f'clever_link_up{{link="{ln["name"]}"}}'] = float(ln["up"])
    for vm in st["vms"]:
        want[f'clever_vm_state{{clever_vm_state="{vm["state"]}",domain="{vm["name"]}"}}'] = 1.0
        want[f'clever_vm_fail_count{{domain="{vm["name"]}"}}'] = float(vm["fail_count"])
    out = [f"{k}: metrics {m.get(k)}, status {v}" for k, v in want.items() if m.get(k) != v]
    phases = [k for k, v in m.items() if k.startswith("clever_phase{") and v == 1.0]
    if len(phases) != 1:
        out.append(f"current phases in the metrics: {phases}")
    return out


def agree(n: LabNode) -> tuple[dict[str, Any], dict[str, float]] | None:
    """A status document and a scrape taken back to back that agree (retried: the cluster may move in between)."""
    try:
        st, m = n.status(), n.metrics()
    except (OSError, RuntimeError):
        return None
    return (st, m) if not disagreements(st, m) else None


def test_metrics_match_status_on_both_nodes_and_a_handover_is_observed(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    old = wait_active(lab)
    new = other(lab, old)
    wait_code(new, "no_action_secondary")
    for n in (old, new):
        got = wait_for(lambda n=n: agree(n), 30, f"{n.name}: metrics that agree with clevervm status", interval=0.2)  # type: ignore[misc]
        assert got is not None
        st, m = got
        # The facts of a healthy pair, read from the metrics page itself.
        assert m["clever_peer_alive"] == 1.0 and all(m[f'clever_link_up{{link="{ln["name"]}"}}'] == 1.0 for ln in st["heartbeat"]["links"])
        role = "Primary" if n is old else "Secondary"
        assert m[f'clever_drbd_role{{clever_drbd_role="{role}",resource="{st["drbd"]["resource"]}"}}'] == 1.0
        state = "running" if n is old else "shutoff"
        assert m[f'clever_vm_state{{clever_vm_state="{state}",domain="plc1"}}'] == 1.0, st["vms"]
        reason = "no_action_primary" if n is old else "no_action_secondary"
        assert m[f'clever_decisions_total{{reason="{reason}"}}'] >= 1
        assert m["clever_status_age_seconds"] < 1.0  # built for this scrape (or one less than MIN_INTERVAL before)
        # Every series the alert rules read is on the real page, with the labels and state values they match.
        page: dict[str, dict[str, set[str]]] = {}
        for key in m:
            name, _, rest = key.partition("{")
            labels = page.setdefault(name, {})
            for k, v in re.findall(r'(\w+)="([^"]*)"', rest):
                labels.setdefault(k, set()).add(v)
        assert [p for e in rule_exprs() for p in problems_in(e, page)] == []
    assert old.metrics()['clever_handover_phase_seconds_count{phase="total",side="out"}'] == 0.0

    cli_json(old, "migrate")
    wait_for(lambda: holds_all(lab, new.name), 60, "the resources on the new node", interval=0.1)
    wait_active(lab)
    for n, side in ((old, "out"), (new, "in")):
        key = f'clever_handover_phase_seconds_count{{phase="total",side="{side}"}}'
        wait_for(lambda n=n, key=key: n.metrics()[key] >= 1.0, 30, f"{n.name}: a completed handover ({side}) in the histogram",  # type: ignore[misc]
                 interval=0.2)
        m = n.metrics()
        hist = cli_json(n, "history")
        done = [t for t in hist["timelines"] if t["kind"] == f"handover_{side}" and t["done"]]
        assert m[key] == len([t for t in done if t["outcome"] in ("handed over", "active here")]), done
        assert m[f'clever_handover_phase_seconds_sum{{phase="total",side="{side}"}}'] == pytest.approx(done[-1]["total_seconds"], abs=0.01)
    assert old.metrics()['clever_decisions_total{reason="handover_demoting"}'] >= 1
    for n in (old, new):
        assert wait_for(lambda n=n: agree(n), 30, f"{n.name}: metrics that agree after the handover", interval=0.2)  # type: ignore[misc]
    lab.check()
