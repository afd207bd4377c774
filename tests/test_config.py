"""Configuration: the example loads, every kind of bad input names its key,
key files are checked, timing is refused not adjusted, and the CLI never
shows a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon import config
from clever_cluster.daemon.schema import format_duration, parse_duration, walk
from clever_cluster.sim import configgen

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"


def base_table(tmp_path: Path) -> dict[str, Any]:
    key = configgen.write_key(tmp_path / "k")
    table = tomllib.loads(EXAMPLE.read_text())
    table["cluster"]["key_file"] = str(key)
    dev = table["fencing"]["level"][0]["device"][0]
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    dev["password_file"] = str(pw)
    return table


def problems_of(table: dict[str, Any], **kw: Any) -> list[str]:
    with pytest.raises(config.ConfigError) as ei:
        config.from_table(table, "test.toml", **kw)
    return ei.value.problems


def test_example_loads_and_has_every_default() -> None:
    cfg = config.load(EXAMPLE, check_files=False)
    assert cfg.cluster.node == "host1" and cfg.cluster.peer == "host2"
    assert cfg.heartbeat.interval == 0.1 and cfg.heartbeat.timeout == 1.0
    assert cfg.heartbeat.silent_peer_grace == 10.0
    assert cfg.fencing.priority_delay == 15.0 and cfg.fencing.random_delay == 2.0
    assert cfg.gateway.dampen == 5.0 and cfg.policy.tick == 0.1
    assert [ln.name for ln in cfg.heartbeat.link] == ["bond0", "lan"]
    assert isinstance(cfg.fencing.level[0].device[0], config.IpmiDevice)


def _example_sections() -> dict[str, str]:
    """Example text per TOML table header, commented-out headers included."""
    out: dict[str, str] = {}
    current = ""
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*\[\[?([a-z_.]+)\]\]?\s*$", line)
        if m:
            current = m.group(1)
            continue
        out[current] = out.get(current, "") + line + "\n"
    return out


def test_example_mentions_every_option() -> None:
    sections = _example_sections()
    missing = []
    for dotted, _field, _tp in walk(config.Config):
        if "." not in dotted.replace("[]", ""):
            continue  # a section itself
        table, _, key = dotted.replace("[]", "").rpartition(".")
        text = sections.get(table, "")
        if not re.search(rf"^#?\s*{re.escape(key)}\s*=", text, re.M) and not any(
            s.startswith(f"{table}.{key}") for s in sections
        ):
            missing.append(dotted)
    assert not missing, f"config.example.toml does not show: {missing}"


def test_docs_reference_is_current() -> None:
    from clever_cluster.daemon import configdoc

    text = (REPO / "docs" / "configuration.md").read_text()
    assert configdoc.reference() in text, "docs/configuration.md is stale: run python -m clever_cluster.daemon.configdoc --write"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda t: t["heartbeat"].update(intervall="1s"), "heartbeat.intervall: unknown key (did you mean 'interval'?)"),
        (lambda t: t["heartbeat"].update(port="5409"), "heartbeat.port: must be an integer, not a string"),
        (lambda t: t["heartbeat"].update(port=70000), "heartbeat.port: must be at most 65535, not 70000"),
        (lambda t: t["cluster"].pop("node"), "cluster.node: required key is missing (a string)"),
        (lambda t: t["heartbeat"]["link"][0].update(local="10.0.1.x"), "heartbeat.link[0].local: not an IP address: '10.0.1.x'"),
        (lambda t: t["ip"].update(address="192.168.1.50"), 'ip.address: needs a prefix length, e.g. "192.168.1.50/24"'),
        (lambda t: t["heartbeat"].update(interval="100 ms"), "heartbeat.interval: not a duration: '100 ms'"),
        (lambda t: t["heartbeat"].update(timeout=1), 'heartbeat.timeout: a duration must be a string with a unit, such as "1s"'),
        (lambda t: t["gateway"].update(attempts=0), "gateway.attempts: must be at least 1, not 0"),
        (lambda t: t["drbd"].update(backend="drbd8"), "drbd.backend: must be one of 'auto', 'drbd9', 'drbd84', not 'drbd8'"),
        (lambda t: t["fencing"]["level"][0]["device"][0].update(type="ilo"), "fencing.level[0].device[0].type: must be one of 'ipmi'"),
        (lambda t: t["gateway"].update(targets=[]), "gateway.targets: must not be empty"),
        (lambda t: t.update(bogus={}), "bogus: unknown key"),
        (lambda t: t["cluster"].update(peer="host1"), "cluster.peer: must differ from cluster.node ('host1')"),
        (lambda t: t["vms"].update(save_dir="/var/lib/save"), "vms.save_dir: must be inside filesystem.mountpoint"),
        (lambda t: t["vms"].update(domains=["a"]), "vms.domains: give exactly one of vms.domains or vms.name_prefix"),
        (lambda t: t["fencing"].update(level=[]), "fencing.level: must not be empty"),
        (lambda t: t["cluster"].update(preferred_node="host3"), "cluster.preferred_node: must be 'host1' or 'host2'"),
    ],
)
def test_bad_input_names_key_and_problem(tmp_path: Path, mutate: Any, expected: str) -> None:
    table = base_table(tmp_path)
    mutate(table)
    problems = problems_of(table)
    assert any(p.startswith(expected) for p in problems), problems


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    table = base_table(tmp_path)
    table["heartbeat"]["port"] = "x"
    table["gateway"]["attempts"] = -1
    table["cluster"]["nmae"] = "x"
    problems = problems_of(table)
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == ["cluster.nmae", "gateway.attempts", "heartbeat.port"]


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        ("heartbeat", {"interval": "500ms", "timeout": "1s"}, "heartbeat.timeout: must be at least 3 x heartbeat.interval (1.5s), not 1s"),
        ("heartbeat", {"silent_peer_grace": "500ms"}, "heartbeat.silent_peer_grace: must be at least heartbeat.timeout (1s)"),
        ("policy", {"tick": "200ms"}, "policy.tick: must not exceed heartbeat.interval (100ms)"),
        ("policy", {"stall_threshold": "1s"}, "policy.stall_threshold: must be below heartbeat.timeout (1s)"),
        ("gateway", {"timeout": "2s"}, "gateway.timeout: must not exceed gateway.interval (1s)"),
        ("gateway", {"dampen": "500ms"}, "gateway.dampen: must be 0 or at least gateway.interval (1s)"),
    ],
)
def test_unsafe_timing_is_refused(tmp_path: Path, section: str, values: dict[str, str], expected: str) -> None:
    table = base_table(tmp_path)
    table[section].update(values)
    problems = problems_of(table)
    assert any(p.startswith(expected) for p in problems), problems


def test_valid_table_loads(tmp_path: Path) -> None:
    cfg = config.from_table(base_table(tmp_path))
    assert cfg.cluster.key_file.stat().st_size >= 32


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    table = base_table(tmp_path)
    os.chmod(table["cluster"]["key_file"], mode)
    problems = problems_of(table)
    assert any(p.startswith("cluster.key_file:") and "accessible by group or others" in p and "chmod 600" in p for p in problems), problems


@pytest.mark.root
def test_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """Mode 0600 keeps group and others out, but a file owned by another user is readable (and
    writable) by that user: whoever owns it can sign heartbeats. Refused like a group-readable one."""
    from tests.conftest import require_root

    require_root()
    table = base_table(tmp_path)
    for name in ("key_file", "next_key_file"):
        other = tmp_path / f"{name}.other"
        other.write_bytes(os.urandom(64))
        other.chmod(0o600)
        os.chown(other, 65534, 65534)  # nobody
        table["cluster"][name] = str(other)
    problems = problems_of(table)
    for name in ("key_file", "next_key_file"):
        assert any(p.startswith(f"cluster.{name}:") and "owned by uid 65534" in p and "chown" in p for p in problems), problems


def test_short_or_missing_key_is_refused(tmp_path: Path) -> None:
    table = base_table(tmp_path)
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    table["cluster"]["key_file"] = str(short)
    table["cluster"]["next_key_file"] = str(tmp_path / "absent")
    problems = problems_of(table)
    assert any(p.startswith("cluster.key_file:") and "holds 31 bytes; at least 32" in p for p in problems), problems
    assert any(p.startswith("cluster.next_key_file:") and "does not exist" in p for p in problems), problems


@pytest.mark.parametrize(("text", "seconds"), [("100ms", 0.1), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1m30s", 90.0), ("0.5s", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "ms", "1.s", "-1s", "1 s", "1d", "1s2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clever_cluster.daemon.main", "--check-config", str(path)],
                          capture_output=True, text=True, check=False)


def test_check_config_cli_ok(lab_configs: tuple[Path, Path]) -> None:
    r = _check_config(lab_configs[0])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{lab_configs[0]}: OK (node node1, peer node2")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[cluster\nname=", "not valid TOML"),
        ("\xff\xfe", "not UTF-8"),
        ("[heartbeat]\ninterval = 5\n", "heartbeat.interval: a duration must be a string"),
    ],
)
def test_check_config_cli_reports_without_traceback(tmp_path: Path, content: str, expected: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_bytes(content.encode("latin-1"))
    r = _check_config(p)
    assert r.returncode == 1
    assert expected in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_check_config_missing_file(tmp_path: Path) -> None:
    r = _check_config(tmp_path / "nope.toml")
    assert r.returncode == 1
    assert "cannot read the file" in r.stderr and "Traceback" not in r.stderr


def test_fingerprint_same_on_both_nodes_and_sensitive(lab_configs: tuple[Path, Path]) -> None:
    a, b = (config.load(p) for p in lab_configs)
    assert config.safety_fingerprint(a) == config.safety_fingerprint(b)
    text = lab_configs[1].read_text().replace("[fencing]\n", '[fencing]\npriority_delay = "20s"\n')
    lab_configs[1].write_text(text)
    assert config.safety_fingerprint(a) != config.safety_fingerprint(config.load(lab_configs[1]))
