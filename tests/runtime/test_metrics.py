"""The metrics collector and instruments, table style, read back through prometheus-client's text parser.

The input is a status document of schema 1 (``status.document``; the lab
test ``test_metrics_lab`` checks the real one against ``clevervm status``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import types
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from clever_cluster import policy as P
from clever_cluster.daemon.executor import Executor
from clever_cluster.daemon.history import DecisionEntry, History, Mark, Timeline
from clever_cluster.daemon.metrics import Instruments, families
from clever_cluster.daemon.metrics_http import Endpoint, StatusCollector, StatusSource
from clever_cluster.daemon.resources.facts import PhaseTiming, RunRecord
from clever_cluster.daemon.world import World
from clever_cluster.fencing.coordinator import FenceReport
from clever_cluster.fencing.types import Outcome
from clever_cluster.policy.reasons import Code
from clever_cluster.sim.harness import DaemonProcess, NotifyListener, run_cli, wait_for


def base_doc() -> dict[str, Any]:
    """A status document of a healthy active node (the fields the metrics read)."""
    return {
        "schema": 1, "cluster": "c1", "node": "host1", "peer": "host2", "phase": "PRIMARY",
        "decision": {"code": "no_action_primary", "phase": "PRIMARY", "sentence": "running here", "since": 1700000000.0},
        "block": None,
        "nodes": [{"name": "host1", "online": True, "state": "alive"},
                  {"name": "host2", "online": True, "state": "alive", "silent_for_seconds": 0.1}],
        "drbd": {"resource": "r0", "known": True, "role": "Primary", "peer_role": "Secondary", "connection": "Connected",
                 "disk": "UpToDate", "peer_disk": "UpToDate", "replication": "Established", "resync_percent": None,
                 "out_of_sync_kib": 0, "suspended": [], "split_brain": False, "config_safe": True},
        "filesystem": {"mountpoint": "/srv/vms", "mounted": True,
                       "usage": {"size_bytes": 4096000, "used_bytes": 1024000, "free_bytes": 3072000, "percent": 25.0}},
        "ip": {"address": "192.0.2.10/24", "present": True},
        "vms": [{"name": "plc1", "state": "running", "running": True, "save_image": None, "fail_count": 0},
                {"name": "plc2", "state": "running", "running": True, "save_image": None, "fail_count": 0}],
        "gateway": {"score": 2, "stable_score": 2, "max_score": 2, "reachable": True,
                    "targets": [{"target": "gw", "address": "192.0.2.1", "reachable": True, "rtt_ms": 0.5},
                                {"target": "dns", "address": "192.0.2.53", "reachable": True, "rtt_ms": 1.5}]},
        "heartbeat": {"silent_for": 0.1, "restarts": 0, "drops": {},
                      "links": [{"name": "lan", "up": True, "loss_in": 0.0, "loss_out": 0.01, "rtt_ms": 0.4, "rtt_smoothed_ms": 0.5,
                                 "sent": 100, "send_errors": 0},
                                {"name": "direct", "up": True, "loss_in": 0.0, "loss_out": 0.0, "rtt_ms": 0.2, "rtt_smoothed_ms": 0.25,
                                 "sent": 100, "send_errors": 0}]},
        "fencing": {"redundancy": {"grade": "ok", "can_fence_now": True, "text": "ok"}, "failures": 0,
                    "devices": [{"level": 1, "name": "bmc-host2", "kind": "ipmi", "ok": True, "usable": True},
                                {"level": 2, "name": "pdu", "kind": "redfish", "ok": True, "usable": True}]},
        "intent": {"maintenance": False, "acknowledged_by_peer": True},
        "settings": {"mismatch": False},
        "predicted_failover": {"worst_case_seconds": 120.0},
        "daemon": {"version": "0.2.0", "started_at": 1700000000.0, "reloads": {"ok": 1, "failed": 0},
                   "loop": {"lag_seconds": 0.001, "max_lag_seconds": 0.02, "last_cycle_seconds": 0.002, "stalls": 0, "cycles": 50, "errors": 0},
                   "watchdog": None},
        "decision_counts": {"election_promoting": 1, "no_action_primary": 1},
    }


def scrape(collector: Collector) -> dict[str, float]:
    """Expose ``collector`` in the text format, parse it back: ``{'name{k="v",...}': value}``."""
    reg = CollectorRegistry()
    reg.register(collector)
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


class DocCollector(Collector):
    def __init__(self, doc: dict[str, Any], age: float = 0.0) -> None:
        self.doc, self.age = doc, age

    def collect(self) -> Iterator[Any]:
        return families(self.doc, self.age)


def edit(**paths: Any) -> Callable[[dict[str, Any]], None]:
    """``edit(**{"drbd.role": "Secondary"})``: set dotted paths of the document (list items by index)."""
    def apply(doc: dict[str, Any]) -> None:
        for path, value in paths.items():
            *parents, last = path.split(".")
            node: Any = doc
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node[p]
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
    return apply


# (what the document says, samples that must read so, samples that must be absent)
CASES: list[tuple[str, Callable[[dict[str, Any]], None], dict[str, float], list[str]]] = [
    ("healthy primary", edit(), {
        'clever_phase{clever_phase="PRIMARY"}': 1, 'clever_phase{clever_phase="SECONDARY"}': 0, 'clever_phase{clever_phase="BLOCKED"}': 0,
        "clever_peer_alive": 1, 'clever_peer_state{clever_peer_state="alive"}': 1, 'clever_link_up{link="lan"}': 1,
        'clever_link_loss_ratio{direction="out",link="lan"}': 0.01, 'clever_link_rtt_seconds{link="direct"}': 0.0002,
        'clever_drbd_role{clever_drbd_role="Primary",resource="r0"}': 1,
        'clever_drbd_connection_state{clever_drbd_connection_state="Connected",resource="r0"}': 1,
        'clever_drbd_disk_state{clever_drbd_disk_state="UpToDate",resource="r0"}': 1,
        'clever_drbd_peer_disk_state{clever_drbd_peer_disk_state="UpToDate",resource="r0"}': 1,
        'clever_drbd_out_of_sync_bytes{resource="r0"}': 0, 'clever_drbd_split_brain{resource="r0"}': 0,
        'clever_vm_state{clever_vm_state="running",domain="plc1"}': 1, 'clever_vm_state{clever_vm_state="shutoff",domain="plc1"}': 0,
        'clever_vm_fail_count{domain="plc2"}': 0, "clever_gateway_score": 2,
        'clever_gateway_target_reachable{address="192.0.2.53",target="dns"}': 1,
        'clever_gateway_target_rtt_seconds{address="192.0.2.1",target="gw"}': 0.0005,
        'clever_fence_redundancy{clever_fence_redundancy="ok"}': 1, "clever_fence_possible": 1,
        'clever_fence_device_healthy{device="bmc-host2",kind="ipmi",level="1"}': 1,
        'clever_decisions_total{reason="election_promoting"}': 1, 'clever_decisions_total{reason="peer_lost_fencing"}': 0,
        'clever_decision_info{reason="no_action_primary"}': 1, "clever_loop_cycles_total": 50, "clever_loop_lag_max_seconds": 0.02,
        'clever_heartbeat_drops_total{reason="bad_mac"}': 0, 'clever_filesystem_free_bytes{mountpoint="/srv/vms"}': 3072000,
        'clever_ip_present{address="192.0.2.10/24"}': 1, "clever_blocked": 0, "clever_status_age_seconds": 0,
        'clever_build_info{version="0.2.0"}': 1, 'clever_reloads_total{result="ok"}': 1,
    }, ['clever_drbd_resync_done_ratio{resource="r0"}']),
    ("peer lost, one link down", edit(**{"nodes.1.online": False, "nodes.1.state": "lost", "heartbeat.links.0.up": False,
                                        "heartbeat.links.0.rtt_ms": None, "heartbeat.links.0.loss_in": None, "phase": "FENCING"}), {
        "clever_peer_alive": 0, 'clever_peer_state{clever_peer_state="lost"}': 1, 'clever_peer_state{clever_peer_state="alive"}': 0,
        'clever_link_up{link="lan"}': 0, 'clever_link_up{link="direct"}': 1, 'clever_phase{clever_phase="FENCING"}': 1,
    }, ['clever_link_rtt_seconds{link="lan"}', 'clever_link_loss_ratio{direction="in",link="lan"}']),
    ("DRBD degraded and resyncing", edit(**{"drbd.connection": "Connected", "drbd.peer_disk": "Inconsistent", "drbd.resync_percent": 40.0,
                                           "drbd.out_of_sync_kib": 2048, "drbd.replication": "SyncSource"}), {
        'clever_drbd_peer_disk_state{clever_drbd_peer_disk_state="Inconsistent",resource="r0"}': 1,
        'clever_drbd_peer_disk_state{clever_drbd_peer_disk_state="UpToDate",resource="r0"}': 0,
        'clever_drbd_out_of_sync_bytes{resource="r0"}': 2048 * 1024, 'clever_drbd_resync_done_ratio{resource="r0"}': 0.4,
        'clever_drbd_replication_state{clever_drbd_replication_state="SyncSource",resource="r0"}': 1,
    }, []),
    ("split brain, blocked, a DRBD 8.4 state name", edit(**{"drbd.split_brain": True, "phase": "BLOCKED", "drbd.connection": "WFConnection",
                                                           "block": {"cause": "split_brain", "detail": "x"}}), {
        'clever_drbd_split_brain{resource="r0"}': 1, "clever_blocked": 1, 'clever_phase{clever_phase="BLOCKED"}': 1,
        'clever_drbd_connection_state{clever_drbd_connection_state="WFConnection",resource="r0"}': 1,
        'clever_drbd_connection_state{clever_drbd_connection_state="Connected",resource="r0"}': 0,
    }, []),
    ("DRBD not readable", edit(**{"drbd.known": False, "drbd.disk": None, "drbd.out_of_sync_kib": None, "drbd.config_safe": None}), {
        'clever_drbd_known{resource="r0"}': 0, 'clever_drbd_disk_state{clever_drbd_disk_state="UpToDate",resource="r0"}': 0,
    }, ['clever_drbd_out_of_sync_bytes{resource="r0"}', 'clever_drbd_config_safe{resource="r0"}']),
    ("fencing impossible", edit(**{"fencing.redundancy": {"grade": "none", "can_fence_now": False, "text": "none"},
                                   "fencing.devices.0": {"level": 1, "name": "bmc-host2", "kind": "ipmi", "ok": False, "usable": False},
                                   "fencing.devices.1": {"level": 2, "name": "pdu", "kind": "redfish", "ok": None, "usable": False}}), {
        'clever_fence_redundancy{clever_fence_redundancy="none"}': 1, 'clever_fence_redundancy{clever_fence_redundancy="ok"}': 0,
        "clever_fence_possible": 0, 'clever_fence_device_healthy{device="bmc-host2",kind="ipmi",level="1"}': 0,
        'clever_fence_device_usable{device="pdu",kind="redfish",level="2"}': 0,
    }, ['clever_fence_device_healthy{device="pdu",kind="redfish",level="2"}']),
    ("standby with a saved VM and failures", edit(**{
        "phase": "SECONDARY", "drbd.role": "Secondary", "filesystem.mounted": False, "filesystem.usage": None, "ip.present": False,
        "vms.0": {"name": "plc1", "state": "shutoff", "running": False, "save_image": {"kind": "handover"}, "fail_count": 2},
        "vms.1": {"name": "plc2", "state": "missing", "running": False, "save_image": None, "fail_count": 0}}), {
        'clever_vm_state{clever_vm_state="shutoff",domain="plc1"}': 1, 'clever_vm_state{clever_vm_state="running",domain="plc1"}': 0,
        'clever_vm_state{clever_vm_state="missing",domain="plc2"}': 1, 'clever_vm_save_image{domain="plc1"}': 1,
        'clever_vm_fail_count{domain="plc1"}': 2, 'clever_filesystem_mounted{mountpoint="/srv/vms"}': 0,
        'clever_ip_present{address="192.0.2.10/24"}': 0,
    }, ['clever_filesystem_size_bytes{mountpoint="/srv/vms"}']),
    ("gateway lost, heartbeat forgeries", edit(**{"gateway.score": 0, "gateway.stable_score": 0, "heartbeat.drops": {"bad_mac": 7},
                                                  "gateway.targets.0": {"target": "gw", "address": "192.0.2.1", "reachable": False,
                                                                        "rtt_ms": None}}), {
        "clever_gateway_score": 0, 'clever_gateway_target_reachable{address="192.0.2.1",target="gw"}': 0,
        'clever_heartbeat_drops_total{reason="bad_mac"}': 7, 'clever_heartbeat_drops_total{reason="replay"}': 0,
    }, ['clever_gateway_target_rtt_seconds{address="192.0.2.1",target="gw"}']),
    ("starting: no decision, gateway not measured yet", edit(**{"decision": None, "phase": "STARTING", "gateway.score": None}), {
        'clever_phase{clever_phase="STARTING"}': 1,
    }, ['clever_decision_info{reason="no_action_primary"}', "clever_gateway_score"]),
]


@pytest.mark.parametrize(("doc_edit", "want", "absent"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_families_of_a_status_document(doc_edit: Callable[[dict[str, Any]], None], want: dict[str, float], absent: list[str]) -> None:
    doc = base_doc()
    doc_edit(doc)
    got = scrape(DocCollector(doc))
    for key, value in want.items():
        assert key in got, f"{key} missing; have {sorted(k for k in got if k.split('{')[0] == key.split('{')[0])}"
        assert got[key] == pytest.approx(value), key
    for key in absent:
        assert key not in got, key


def test_every_state_set_has_exactly_one_current_state() -> None:
    got = scrape(DocCollector(base_doc()))
    for name in ("clever_phase", "clever_drbd_role", "clever_drbd_disk_state", "clever_fence_redundancy", "clever_peer_state"):
        assert sum(v for k, v in got.items() if k.startswith(name + "{")) == 1, name
    assert sum(v for k, v in got.items() if k.startswith("clever_vm_state{") and 'domain="plc1"' in k) == 1
    assert sum(1 for k in got if k.startswith("clever_decisions_total{")) == len(Code)


def test_the_status_age_is_exported() -> None:
    assert scrape(DocCollector(base_doc(), age=12.5))["clever_status_age_seconds"] == 12.5


# ---------------------------------------------------------------------- instruments


def _timeline(kind: str, marks: list[tuple[str, float]], outcome: str, runs: tuple[RunRecord, ...] = ()) -> Timeline:
    t = Timeline(kind, [Mark(n, m, 1e9 + m) for n, m in marks], list(runs))
    t.done, t.outcome = True, outcome
    return t


START_RUN = RunRecord(1, "start", "gate", 100.0, 1e9, "succeeded", 3.0,
                      (PhaseTiming("drbd", "start", 0.0, 0.5, "ok"), PhaseTiming("vms", "start", 0.5, 2.5, "ok")))

TIMELINES = [
    ("failover done", _timeline("failover", [("peer_lost", 10.0), ("fence_started", 13.0), ("fence_confirmed", 15.0),
                                             ("promote_started", 15.5), ("active", 19.0)], "active here", (START_RUN,)),
     "clever_failover_phase_seconds", {'phase="fence_started"': 3.0, 'phase="fence_confirmed"': 2.0, 'phase="active"': 3.5,
                                       'phase="start:vms"': 2.5, 'phase="total"': 9.0}),
    ("failover ended by the peer's return: phases but no total", _timeline("failover", [("peer_lost", 10.0), ("fence_started", 13.0)],
                                                                             "the peer came back"),
     "clever_failover_phase_seconds", {'phase="fence_started"': 3.0, 'phase="total"': None}),
    ("handover given", _timeline("handover_out", [("handover_decided", 1.0), ("granted", 4.0), ("peer_active", 9.0)], "handed over"),
     "clever_handover_phase_seconds", {'phase="granted",side="out"': 3.0, 'phase="peer_active",side="out"': 5.0,
                                       'phase="total",side="out"': 8.0}),
    ("handover taken", _timeline("handover_in", [("acknowledged", 1.0), ("promote_started", 1.5), ("active", 6.0)], "active here"),
     "clever_handover_phase_seconds", {'phase="promote_started",side="in"': 0.5, 'phase="total",side="in"': 5.0}),
    ("cold start: not a failover", _timeline("cold_start", [("promote_started", 1.0), ("active", 3.0)], "active here"),
     "clever_failover_phase_seconds", {'phase="active"': None}),
]


@pytest.mark.parametrize(("timeline", "metric", "want"), [t[1:] for t in TIMELINES], ids=[t[0] for t in TIMELINES])
def test_timeline_phases_become_histogram_observations(timeline: Timeline, metric: str, want: dict[str, float | None]) -> None:
    reg = CollectorRegistry()
    Instruments(reg).timeline_closed(timeline)
    got = scrape(reg)
    for labels, seconds in want.items():
        count, total = got.get(f"{metric}_count{{{labels}}}", 0.0), got.get(f"{metric}_sum{{{labels}}}", 0.0)
        if seconds is None:
            assert count == 0, labels
        else:
            assert count == 1 and total == pytest.approx(seconds), (labels, count, total)


def test_history_feeds_the_handover_histogram_when_the_timeline_closes() -> None:
    reg = CollectorRegistry()
    hist = History(on_closed=Instruments(reg).timeline_closed)

    def decide(mono: float, code: Code) -> None:
        hist.decision(DecisionEntry(mono, 1e9 + mono, code.value, "X", "s", "", "1@a"))

    decide(1.0, Code.HANDOVER_DEMOTING)
    decide(4.0, Code.HANDOVER_GRANTED)
    assert scrape(reg)['clever_handover_phase_seconds_count{phase="total",side="out"}'] == 0  # still open
    decide(6.0, Code.NO_ACTION_SECONDARY)
    got = scrape(reg)
    assert got['clever_handover_phase_seconds_count{phase="total",side="out"}'] == 1
    assert got['clever_handover_phase_seconds_sum{phase="total",side="out"}'] == pytest.approx(5.0)


def test_fence_attempts_and_loop_lag() -> None:
    reg = CollectorRegistry()
    ins = Instruments(reg)
    assert scrape(reg)['clever_fence_attempts_total{result="confirmed_off"}'] == 0  # present before the first fence
    ins.fence_attempt("timed_out", 30.0)
    ins.fence_attempt("confirmed_off", 4.0)
    ins.fence_attempt("confirmed_off", 6.0)
    ins.lag(0.003)
    got = scrape(reg)
    assert got['clever_fence_attempts_total{result="confirmed_off"}'] == 2 and got['clever_fence_attempts_total{result="timed_out"}'] == 1
    assert got['clever_fence_duration_seconds_sum{result="confirmed_off"}'] == pytest.approx(10.0)
    assert got['clever_fence_duration_seconds_bucket{le="5.0",result="confirmed_off"}'] == 1
    assert got["clever_loop_lag_seconds_count"] == 1 and got['clever_loop_lag_seconds_bucket{le="0.005"}'] == 1


# ---------------------------------------------------------------------- the endpoint and the loop bridge


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


async def test_a_scrape_over_http_builds_the_document_on_the_loop() -> None:
    builds: list[int] = []

    async def build() -> dict[str, Any]:
        builds.append(threading.get_ident())
        doc = base_doc()
        doc["daemon"]["loop"]["cycles"] = len(builds)
        return doc

    reg = CollectorRegistry()
    reg.register(StatusCollector(StatusSource(asyncio.get_running_loop(), build, min_interval=0.0)))
    port = _free_port()
    ep = Endpoint(f"127.0.0.1:{port}", reg)
    assert ep.start() and ep.address == ("127.0.0.1", port)
    try:
        first = await asyncio.to_thread(_get, port)
        second = await asyncio.to_thread(_get, port)
    finally:
        await asyncio.to_thread(ep.stop)
    assert builds == [threading.get_ident()] * 2  # each scrape built a fresh document, on the loop's thread
    assert "clever_loop_cycles_total 1.0" in first and "clever_loop_cycles_total 2.0" in second
    with pytest.raises(OSError):
        _get(port)  # stopped: the socket is closed


async def test_a_loop_that_does_not_answer_gets_the_previous_document_with_its_age() -> None:
    release = asyncio.Event()
    calls = 0

    async def build() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 1:
            await release.wait()  # the loop is busy elsewhere: this build never finishes in time
        return base_doc()

    src = StatusSource(asyncio.get_running_loop(), build, timeout=0.5, min_interval=0.0)
    doc, age = await asyncio.to_thread(src.read)
    assert doc is not None and age == 0.0
    doc2, age2 = await asyncio.to_thread(src.read)
    release.set()
    assert doc2 is doc and age2 > 0.0 and src.failures == 1
    got = scrape(StatusCollector(StatusSource(asyncio.get_running_loop(), build)))  # on the loop's thread: never waits
    assert got == {}


async def test_scrapes_close_together_share_one_document() -> None:
    builds = 0

    async def build() -> dict[str, Any]:
        nonlocal builds
        builds += 1
        await asyncio.sleep(0.2)  # concurrent scrapes arrive while this build runs
        return base_doc()

    src = StatusSource(asyncio.get_running_loop(), build, min_interval=60.0)
    results = await asyncio.gather(*(asyncio.to_thread(src.read) for _ in range(6)))
    assert builds == 1 and all(doc is results[0][0] for doc, _ in results)
    doc, age = await asyncio.to_thread(src.read)  # within min_interval: the same document, with its age
    assert builds == 1 and doc is results[0][0] and age >= 0.0


async def test_an_address_in_use_is_an_error_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ep = Endpoint(f"127.0.0.1:{port}", CollectorRegistry())
        assert ep.start() is False
    assert ep.error is not None and f"127.0.0.1:{port}" in ep.error
    assert any("metrics endpoint not started" in r.getMessage() for r in caplog.records)
    ep.stop()  # nothing to stop: no error
    assert Endpoint("", CollectorRegistry()).start() is False  # disabled



# ---------------------------------------------------------------------- a real daemon (loopback lab config, no namespaces)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    n = NotifyListener(tmp_path)
    yield n
    n.close()


def _daemon(config: Path, listen: str, notify: NotifyListener) -> DaemonProcess:
    config.write_text(config.read_text().replace('[metrics]\nlisten = ""', f'[metrics]\nlisten = "{listen}"'))
    d = DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify.path)}).start()
    notify.wait_for_key("READY", 20)
    return d


def test_the_daemon_serves_its_status_as_metrics(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    port = _free_port()
    d = _daemon(lab_configs[0], f"127.0.0.1:{port}", notify)
    try:
        def same() -> dict[str, float] | None:
            st = json.loads(run_cli(lab_configs[0], "status", "--json").stdout)
            m = scrape_text(_get(port))
            return m if m.get(f'clever_phase{{clever_phase="{st["phase"]}"}}') == 1.0 and \
                m.get("clever_loop_cycles_total", -1) >= st["daemon"]["loop"]["cycles"] else None
        m = wait_for(same, 30, "a scrape that agrees with clevervm status")
        assert m is not None and m['clever_node_info{cluster="democluster",node="node1",peer="node2"}'] == 1.0
        assert m["clever_peer_alive"] == 0.0  # node2 is not running
        d.signal(signal.SIGTERM)
        assert d.proc is not None and d.proc.wait(20) == 0, d.log()[-3000:]
        assert "shutdown: stop the metrics endpoint done" in d.log()
        with pytest.raises(OSError):
            _get(port)
    finally:
        d.stop()


def test_a_daemon_whose_metrics_address_is_taken_runs_on(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = _daemon(lab_configs[0], f"127.0.0.1:{port}", notify)
        try:
            r = run_cli(lab_configs[0], "status", "--json")
            assert r.returncode == 0 and json.loads(r.stdout)["node"] == "node1"
            log = d.log()
            assert f"metrics endpoint not started: cannot listen on 127.0.0.1:{port}" in log and "Traceback" not in log
        finally:
            d.stop()


def scrape_text(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


# ---------------------------------------------------------------------- the executor feeds the fence instruments


class _Coordinator:
    def __init__(self, report: FenceReport | Exception) -> None:
        self.report = report

    async def fence(self, req: Any) -> FenceReport:
        await asyncio.sleep(0.05)
        if isinstance(self.report, Exception):
            raise self.report
        return self.report


@pytest.mark.parametrize(("report", "result"), [
    (FenceReport(Outcome.TIMED_OUT, "no OFF within the budget"), "timed_out"),
    (FenceReport(Outcome.GATE_CLOSED, "gateway unreachable"), "gate_closed"),
    (RuntimeError("a bug"), "internal_error"),
])
async def test_the_executor_counts_each_fence_attempt_by_result(report: FenceReport | Exception, result: str) -> None:
    reg = CollectorRegistry()
    ins = Instruments(reg)
    parts = types.SimpleNamespace(world=World("r0", ()), history=History(), peer="node2", node="node1")
    ex = Executor(parts, None, on_fence=ins.fence_attempt)  # type: ignore[arg-type]
    ep = P.LossEpisode("node2", 7, "boot", 1)
    await ex._run_fence(_Coordinator(report), P.FencePeer(ep, 3.0))  # type: ignore[arg-type]
    got = scrape(reg)
    assert got[f'clever_fence_attempts_total{{result="{result}"}}'] == 1
    assert sum(v for k, v in got.items() if k.startswith("clever_fence_attempts_total{")) == 1
    assert got[f'clever_fence_duration_seconds_sum{{result="{result}"}}'] >= 0.05
    assert parts.world.failures[ep] == 1  # and the policy's fact is still fed


def test_no_created_series_next_to_counters_and_histograms() -> None:
    reg = CollectorRegistry()
    Instruments(reg).fence_attempt("failed", 1.0)
    assert scrape(reg) and not [k for k in scrape(reg) if "_created" in k]
