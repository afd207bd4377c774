"""The policy's documentation stays true: docs/reasons.md is generated from
the enumeration, docs/failure-scenarios.md has a section naming the test of
every scenario folder, and docs/policy.md documents every fact and action."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from clever_cluster import policy
from clever_cluster.policy import actions, facts, reasons

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def test_reasons_md_is_current() -> None:
    assert (DOCS / "reasons.md").read_text() == reasons.markdown(), \
        "regenerate: python -m clever_cluster.policy.reasons > docs/reasons.md"


def test_every_scenario_has_a_section_naming_its_test() -> None:
    text = (DOCS / "failure-scenarios.md").read_text()
    for folder in sorted((REPO / "tests" / "scenarios").iterdir()):
        assert f"test_scenario[{folder.name}]" in text, f"docs/failure-scenarios.md has no section for {folder.name}"


def test_policy_md_names_every_fact_field_and_action() -> None:
    text = (DOCS / "policy.md").read_text()
    for cls in (facts.Facts, facts.Local, facts.Drbd, facts.Resources, facts.Fencing, facts.Gateway, facts.PeerFacts):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}" in text or f".{f.name}" in text, f"docs/policy.md does not say what {cls.__name__}.{f.name} must hold"
    for a in typing.get_args(actions.Action):
        assert f"`{a.__name__}" in text, f"docs/policy.md does not describe the action {a.__name__}"


def test_module_docstring_lists_the_nine_rules() -> None:
    doc = policy.__doc__ or ""
    for n in range(1, 10):
        assert f"\nS{n} " in doc, f"S{n} missing from the policy module docstring"
