"""The alert rules, the Grafana dashboard and docs/metrics.md against what the daemon exports.

The exported names, labels and state values come from the collector's own
output (``metrics.families`` of a status document plus the instruments),
exposed in the text format and parsed back with prometheus-client.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from clever_cluster.daemon.metrics import Instruments, families

from .test_metrics import base_doc

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "clever-cluster.rules.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "clever-cluster.rules.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "clever-cluster.json"
DOC = ROOT / "docs" / "metrics.md"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series


def full_doc() -> dict[str, Any]:
    """A document in which every optional value is present (so every metric is exported)."""
    doc = base_doc()
    doc["drbd"]["resync_percent"] = 50.0
    doc["daemon"]["watchdog"] = {"armed": True}
    return doc


def all_families() -> list[Metric]:
    reg = CollectorRegistry()
    Instruments(reg)
    return [*families(full_doc()), *reg.collect()]


def exported() -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> the values seen, from the text format parsed back."""
    class All:
        def collect(self) -> list[Metric]:
            return all_families()

    reg = CollectorRegistry()
    reg.register(All())  # type: ignore[arg-type]
    out: dict[str, dict[str, set[str]]] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            labels = out.setdefault(s.name, {})
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return out


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool missing: scripts/apt-packages.txt lists the Debian package prometheus (make bootstrap)"
    return path


def test_promtool_checks_the_rules() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    r = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def rule_exprs() -> list[str]:
    # The rules file is YAML; its expressions are read without a YAML library (none is a dependency):
    # `expr:` followed by an inline value or a folded block indented below it.
    lines = RULES.read_text().splitlines()
    exprs = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        if value in (">-", ">", "|", "|-"):
            block = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt.strip())
            value = " ".join(block)
        exprs.append(value)
    return exprs


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return exprs


def problems_in(expr: str, names: dict[str, dict[str, set[str]]]) -> list[str]:
    out = []
    for name in set(re.findall(r"\bclever_[a-z0-9_]+", expr)):
        if name not in names:
            out.append(f"{name} is not exported")
    for name, matchers in re.findall(r"\b(clever_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            if label in TARGET_LABELS or name not in names:
                continue
            if label not in names[name]:
                out.append(f"{name} has no label {label}")
            elif op == "=" and value not in names[name][label]:
                out.append(f"{name}{{{label}}} never takes the value {value!r}")
    return out


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_in_the_rules_and_dashboard_is_exported(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    assert len(exprs) >= (10 if source == "rules" else 30)
    names = exported()
    problems = [f"{e!r}: {p}" for e in exprs for p in problems_in(e, names)]
    assert problems == []


def test_the_name_check_catches_a_typo() -> None:
    names = exported()
    assert problems_in('clever_peer_alive == 0 and clever_drbd_split_brian == 1', names) == ["clever_drbd_split_brian is not exported"]
    assert problems_in('clever_phase{clever_phase="PRIMRAY"} == 1', names) == ["clever_phase{clever_phase} never takes the value 'PRIMRAY'"]
    assert problems_in('clever_link_up{device="x"}', names) == ["clever_link_up has no label device"]


def doc_rows() -> dict[str, tuple[str, set[str]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `(clever_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), set(re.findall(r"`(\w+)`", m.group(3))))
    return rows


def query_name(f: Metric) -> str:
    return f.name + {"counter": "_total", "info": "_info"}.get(f.type, "")


def test_docs_list_every_exported_metric_with_its_type_and_labels() -> None:
    rows = doc_rows()
    fams = {query_name(f): f for f in all_families()}
    assert sorted(rows) == sorted(fams), "docs/metrics.md and the exported metrics differ"
    for name, f in fams.items():
        labels = {k for s in f.samples for k in s.labels} - {"le"}
        assert rows[name] == (f.type, labels), name
