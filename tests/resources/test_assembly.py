"""The whole group built from a configuration, with every real part at once: a loop-device ext4,
an address in a network namespace, the libvirt test driver; DRBD is the in-test stand-in."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from clever_cluster.daemon import config
from clever_cluster.daemon.resources import assembly
from clever_cluster.daemon.resources.base import ImageToken, StartRequest, StopRequest
from clever_cluster.daemon.resources.facts import RunRecord
from clever_cluster.sim import configgen, netns
from clever_cluster.sim.libvirt_nodes import RUNNING, SHUTOFF, write_node
from tests.resources.conftest import Ext4
from tests.resources.helpers import Gate, SimDrbd

pytestmark = pytest.mark.root


def _config(tmp: Path, ext4: Ext4, uri: str) -> config.Config:
    me = configgen.NodeSpec("node1", [("lo1", "127.0.0.11", "127.0.0.12")], tmp / "state", tmp / "run")
    peer = configgen.NodeSpec("node2", [("lo1", "127.0.0.12", "127.0.0.11")], tmp / "state2", tmp / "run2")
    table = configgen.node_table(cluster="c", me=me, peer=peer, key_file=tmp / "key", workdir=tmp, overrides={
        "filesystem": {"device": str(ext4.device), "mountpoint": str(ext4.mountpoint), "kill_grace": "500ms"},
        "ip": {"address": "10.88.0.50/24", "interface": "eth0", "arp_count": 2, "arp_interval": "50ms"},
        "vms": {"uri": uri, "name_prefix": "plc", "save_dir": str(ext4.mountpoint / "save"), "shutdown_timeout": "1s"},
    })
    return config.from_table(table, check_files=False)


def test_group_from_configuration_moves_between_two_nodes(tmp_path: Path, ext4: Ext4, netlab: netns.Lab) -> None:
    n1, n2, sw = netlab.ns("n1"), netlab.ns("n2"), netlab.ns("sw")
    netlab.bridge(sw, "br0")
    for i, ns in ((1, n1), (2, n2)):
        netlab.veth(ns, "eth0", sw, f"p{i}")
        netlab.attach(sw, f"p{i}", "br0")
    doms = ["plc1", "plc2"]
    uri_a = write_node(tmp_path / "a.xml", [(d, SHUTOFF) for d in doms] + [("web", RUNNING)])
    uri_b = write_node(tmp_path / "b.xml", [(d, SHUTOFF) for d in doms])
    token = ImageToken("handover", "grant-7", "3:node1", "C0FFEE00")
    records: list[RunRecord] = []

    async def node_a() -> None:
        group = assembly.build(_config(tmp_path, ext4, uri_a), SimDrbd(), Gate(),
                               on_fact=lambda f: records.append(f) if isinstance(f, RunRecord) and f.finished else None)
        await group.start()
        try:
            assert group.monitor.facts.connected and [v.name for v in group.monitor.facts.vms] == doms
            rec = await group.executor.start(StartRequest(token="e1", takeover="cold_start"))
            assert rec.outcome == "succeeded", rec.error
            assert group.filesystem.state().mounted and await asyncio.to_thread(group.ip.present)
            rec = await group.executor.stop(StopRequest(token="grant-7", mode="save", image=token))
            assert rec.outcome == "succeeded", rec.error
            assert [p.step for p in rec.phases] == ["vms", "ip", "filesystem", "drbd"]
            assert not group.filesystem.state().mounted
            st = group.status()
            assert st["sequence"] is None and [r["kind"] for r in st["history"]] == ["start", "stop"]
            assert st["history"][1]["phases"][0]["detail"] == "plc1: saved; plc2: saved"
            assert json.dumps(st)  # plain JSON for the control socket
        finally:
            await group.close()

    async def node_b() -> None:
        group = assembly.build(_config(tmp_path, ext4, uri_b), SimDrbd(), Gate())
        await group.start()
        try:
            rec = await group.executor.start(StartRequest(token="grant-7", takeover="handover", image=token))
            assert rec.outcome == "succeeded", rec.error
            states = await group.libvirt.call(lambda c: {d: c.lookupByName(d).state() for d in doms})
            assert states == {d: [1, 3] for d in doms}  # running, restored
            await group.executor.stop(StopRequest(token=None, mode="destroy"))
        finally:
            await group.close()

    with netns.enter_netns(n1):
        asyncio.run(node_a())
    with netns.enter_netns(n2):
        asyncio.run(node_b())
    assert [r.kind for r in records] == ["start", "stop"]
