"""daemon/fencing_setup.py maps the configuration onto the fencing classes."""

from __future__ import annotations

from pathlib import Path

from clever_cluster.daemon import config as cfgmod
from clever_cluster.daemon.fencing_setup import build_levels, build_watchdog, identity_book, peer_level1_budget
from clever_cluster.fencing.ipmi import IpmiAgent
from clever_cluster.fencing.manual import ManualAgent
from clever_cluster.fencing.redfish import RedfishAgent
from clever_cluster.fencing.stock import StockAgent
from clever_cluster.sim import configgen

from .emulators import PEER_UUID


def test_every_device_type_is_built_with_its_secret(tmp_path: Path) -> None:
    node1, _ = configgen.write_pair(tmp_path / "lab")
    table = cfgmod.tomllib.loads(node1.read_text())
    pw = tmp_path / "bmc.pw"
    pw.write_text("bmc-secret\n")
    pw.chmod(0o600)
    sec = tmp_path / "pdu.secret"
    sec.write_text("password=pdu-secret\n")
    sec.chmod(0o600)
    table["fencing"] = {"level": [
        {"device": [{"type": "ipmi", "name": "bmc", "host": "127.0.0.1", "username": "fence", "password_file": str(pw), "timeout": "20s"},
                    {"type": "redfish", "name": "rf", "url": "https://127.0.0.1:8443", "username": "fence", "password": "rf-secret"}]},
        {"device": [{"type": "fence_agent", "name": "pdu", "agent": "fence_apc_snmp", "options": {"ip": "10.0.0.9", "plug": "3"},
                     "secret_file": str(sec), "machine_id": PEER_UUID}]},
        {"device": [{"type": "manual", "name": "operator"}]},
    ]}
    cfg = cfgmod.from_table(table, node1)
    levels = build_levels(cfg)
    bmc, rf = levels[0]
    assert isinstance(bmc, IpmiAgent) and bmc.params.password.reveal() == b"bmc-secret" and bmc.timeout == 20
    assert isinstance(rf, RedfishAgent) and rf.params.password.reveal() == b"rf-secret" and rf.params.verify_tls
    pdu = levels[1][0]
    assert isinstance(pdu, StockAgent) and pdu.params.secrets["password"].reveal() == b"pdu-secret" and pdu.params.nodename == cfg.cluster.peer
    assert isinstance(levels[2][0], ManualAgent)
    assert peer_level1_budget(levels) == 20 + 12
    shown = repr(bmc.params) + repr(rf.params) + repr(pdu.params)
    assert not any(s in shown for s in ("bmc-secret", "rf-secret", "pdu-secret"))
    assert not identity_book(cfg, levels).trusted("bmc", PEER_UUID)
    assert build_watchdog(cfg, lambda: True) is None


def test_a_default_power_device_keeps_clevervm_check_quiet(tmp_path: Path) -> None:
    """One IPMI or Redfish device at its default timeout in level 1, the default
    priority_delay and heartbeat timings: no fence-race warning."""
    from clever_cluster.fencing.monitor import priority_delay_warning

    node1, _ = configgen.write_pair(tmp_path / "lab")
    table = cfgmod.tomllib.loads(node1.read_text())
    for dev in ({"type": "ipmi", "name": "bmc", "host": "10.0.9.2", "username": "fence", "password": "x"},
                {"type": "redfish", "name": "rf", "url": "https://10.0.9.2", "username": "fence", "password": "x"}):
        table["fencing"] = {"level": [{"device": [dev]}]}
        cfg = cfgmod.from_table(table, node1)
        detection = cfg.heartbeat.timeout + cfg.heartbeat.interval
        assert priority_delay_warning(cfg.fencing.priority_delay, peer_level1_budget(build_levels(cfg)), detection) is None
