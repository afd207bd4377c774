"""Gateway pinger against real ICMP in network namespaces (two nodes + gateway)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from clever_cluster.daemon.config import GatewayConfig
from clever_cluster.daemon.gateway import GatewayFacts, GatewayPinger, GatewayProbe, probe_target
from clever_cluster.sim import netns

pytestmark = pytest.mark.root
T = TypeVar("T")


def in_netns(ns: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on an event loop whose thread lives in ``ns`` (sockets are made there)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with netns.enter_netns(ns):
                box["value"] = asyncio.run(fn())  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def gw_cfg(targets: list[str], **kw: Any) -> GatewayConfig:
    base: dict[str, Any] = {"interval": 0.5, "timeout": 0.3, "attempts": 3, "multiplier": 100, "dampen": 1.0}
    base.update(kw)
    return GatewayConfig(targets=tuple(targets), **base)


@pytest.fixture
def lan(netlab: netns.Lab) -> netns.TwoNodes:
    topo = netns.two_nodes(netlab)
    netlab.addr(topo.gw, "br0", "192.168.100.2/24")  # a second target on the gateway
    return topo


TARGETS = ["192.168.100.1", "192.168.100.2"]


def one_round(ns: str, cfg: GatewayConfig) -> tuple[GatewayFacts, GatewayFacts]:
    async def go() -> tuple[GatewayFacts, GatewayFacts]:
        p = GatewayPinger(cfg)
        before = p.facts()
        p.record(await p.probe())
        return before, p.facts()
    return in_netns(ns, go)


def test_all_reachable_and_no_data_before_the_first_round(lan: netns.TwoNodes) -> None:
    before, after = one_round(lan.n1.ns, gw_cfg(TARGETS))
    assert before.no_data and before.score is None and before.reachable is None
    assert after.score == 200 and after.max_score == 200 and after.reachable == 2
    for t in after.targets:
        assert t.reachable and t.sent >= 1 and t.received == 1 and t.rtt_ms is not None and t.error is None


def test_one_of_two_down_halves_the_score(lan: netns.TwoNodes) -> None:
    subprocess.run(["ip", "-n", lan.gw, "addr", "del", "192.168.100.2/24", "dev", "br0"], check=True)
    _, f = one_round(lan.n1.ns, gw_cfg(TARGETS))
    assert f.score == 100 and f.reachable == 1
    down = next(t for t in f.targets if t.target == "192.168.100.2")
    assert not down.reachable and down.sent == 3 and down.received == 0


def test_gateway_link_cut_is_zero_not_no_data(lan: netns.TwoNodes) -> None:
    lan.cut_uplink(1)
    _, f = one_round(lan.n1.ns, gw_cfg(TARGETS))
    assert f.score == 0 and f.reachable == 0 and not f.no_data


def test_asymmetric_uplink_loss(lan: netns.TwoNodes) -> None:
    lan.cut_uplink(1)
    cfg = gw_cfg(TARGETS)
    _, n1 = one_round(lan.n1.ns, cfg)
    _, n2 = one_round(lan.n2.ns, cfg)
    assert (n1.score, n2.score) == (0, 200)


def test_thirty_percent_loss_with_three_attempts_stays_reachable(lan: netns.TwoNodes) -> None:
    # 30 % of the replies towards node1 are dropped at the gateway's switch port.
    lan.lab.loss(lan.gw, "p-n1", 30, ingress=False)
    cfg = gw_cfg(TARGETS, attempts=3, timeout=0.5)  # generous: a loaded machine delays replies

    async def rounds() -> list[GatewayProbe]:
        p = GatewayPinger(cfg)
        return [await p.probe() for _ in range(12)]

    probes = in_netns(lan.n1.ns, rounds)
    sent = sum(t.sent for p in probes for t in p.targets)
    assert sent > 2 * len(probes), "the loss rule dropped nothing; the test proves nothing"
    # One round fails only if 3 echoes in a row are lost (2.7 % at 30 % loss): allow 3 of 12 per target.
    for target in TARGETS:
        ok = sum(1 for p in probes for t in p.targets if t.target == target and t.reachable)
        assert ok >= 9, (target, [p.score for p in probes])


def test_unresolvable_and_unroutable_targets_are_reported_not_fatal(lan: netns.TwoNodes) -> None:
    cfg = gw_cfg(["192.168.100.1", "2001:db8::1", "no such host"], attempts=1)
    _, f = one_round(lan.n1.ns, cfg)
    assert f.score == 100 and f.reachable == 1
    by = {t.target: t for t in f.targets}
    assert by["2001:db8::1"].error and by["2001:db8::1"].sent == 0
    assert by["no such host"].error and "resolve" in by["no such host"].error


def test_dampen_bookkeeping_with_a_fake_clock() -> None:
    now = [100.0]
    p = GatewayPinger(gw_cfg(TARGETS, dampen=5.0), clock=lambda: now[0])

    def probe(score_targets: int) -> GatewayProbe:
        from clever_cluster.daemon.gateway import TargetResult
        ts = tuple(TargetResult(t, t, 1, 1 if i < score_targets else 0, 0.1 if i < score_targets else None)
                   for i, t in enumerate(TARGETS))
        return GatewayProbe(now[0], ts, 100)

    p.record(probe(2))
    assert p.facts().stable_score is None and p.facts().score_since == 100.0
    now[0] = 106.0
    p.record(probe(2))
    assert p.facts().stable_score == 200 and p.facts().score_since == 100.0
    now[0] = 107.0
    p.record(probe(1))  # a dip: not stable yet
    assert p.facts().score == 100 and p.facts().stable_score == 200 and p.facts().score_since == 107.0
    now[0] = 108.0
    p.record(probe(2))  # back before dampen elapsed
    assert p.facts().stable_score == 200
    now[0] = 114.0
    p.record(probe(1))
    now[0] = 119.5
    assert p.facts().stable_score == 100


def test_fresh_probe_is_taken_now(lan: netns.TwoNodes) -> None:
    cfg = gw_cfg(TARGETS)

    async def go() -> tuple[int, int, bool, bool]:
        p = GatewayPinger(cfg)
        p.record(await p.probe())
        first = p.facts().score
        was_open = await p.gate_open()
        await asyncio.to_thread(lan.cut_uplink, 1)
        fresh = await p.fresh_probe()
        assert first is not None
        return first, fresh.score, was_open, await p.gate_open()

    assert in_netns(lan.n1.ns, go) == (200, 0, True, False)


def test_unprivileged_without_the_sysctl_names_it(lan: netns.TwoNodes) -> None:
    code = ("from clever_cluster.daemon.gateway import choose_privileged, GatewayError\n"
            "try:\n    print('mode', choose_privileged())\nexcept GatewayError as e:\n    print('ERR', e)\n")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code]
    r = lan.lab.run(lan.n1.ns, *argv)
    assert r.stdout.startswith("ERR") and "net.ipv4.ping_group_range" in r.stdout, r.stdout + r.stderr
    lan.lab.run(lan.n1.ns, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    r = lan.lab.run(lan.n1.ns, *argv)
    assert r.stdout.strip() == "mode False", r.stdout + r.stderr


def test_probe_target_counts_replies(lan: netns.TwoNodes) -> None:
    r = in_netns(lan.n1.ns, lambda: probe_target("192.168.100.1", 2, 0.3, True))
    assert r.received == 1 and r.sent == 1  # stops at the first reply


def test_run_probes_every_interval_and_reports_updates(lan: netns.TwoNodes) -> None:
    seen: list[GatewayFacts] = []

    async def go() -> GatewayFacts:
        three = asyncio.Event()

        def update(f: GatewayFacts) -> None:
            seen.append(f)
            if len(seen) >= 3:
                three.set()

        p = GatewayPinger(gw_cfg(TARGETS, interval=0.2, timeout=0.1, attempts=1), on_update=update)
        task = asyncio.create_task(p.run())
        try:
            await asyncio.wait_for(three.wait(), 20)
        finally:
            task.cancel()
        return p.facts()

    f = in_netns(lan.n1.ns, go)
    assert f.rounds >= 3 and f.score == 200 and [s.rounds for s in seen[:3]] == [1, 2, 3]
