"""docs/operations.md shows every clevervm verb with real output recorded by scripts/sample-outputs.py."""

from __future__ import annotations

import re
from pathlib import Path

from clever_cluster.daemon import cli

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "operations.md").read_text()
BLOCK = re.compile(r"<!-- sample (?P<name>[a-z0-9-]+) -->\n```text\n(?P<body>.*?)\n```\n<!-- /sample -->", re.S)
DRBD_HANDLERS = {"fence-peer", "unfence-peer"}  # run by DRBD, not by operators: docs/drbd.md
ELSEWHERE = {"console-password": "docs/console.md"}  # interactive, for the web console: shown on its page


def samples() -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(DOC)}


def test_every_block_is_filled_with_a_recorded_command() -> None:
    empty = re.findall(r"<!-- sample ([a-z0-9-]+) -->\n<!-- /sample -->", DOC)
    assert empty == [], f"blocks never recorded: {empty} (run scripts/sample-outputs.py)"
    for name, body in samples().items():
        first = body.splitlines()[0]
        assert re.match(r"node[12], [a-z ,]+# clevervm \S+", first), (name, first)
        assert len(body.splitlines()) > 1, name


def test_every_verb_has_a_sample() -> None:
    shown = {re.match(r"[^#]+# clevervm (\S+)", body).group(1) for body in samples().values()}  # type: ignore[union-attr]
    assert set(cli.VERBS) - DRBD_HANDLERS - set(ELSEWHERE) <= shown, sorted(set(cli.VERBS) - DRBD_HANDLERS - set(ELSEWHERE) - shown)
    for verb, doc in ELSEWHERE.items():
        assert f"clevervm {verb}" in (REPO / doc).read_text(), (verb, doc)
        assert doc in DOC, f"docs/operations.md must point to {doc} for {verb}"


def test_the_script_and_the_document_name_the_same_samples() -> None:
    script = (REPO / "scripts" / "sample-outputs.py").read_text()
    recorded = set(re.findall(r'rec\.run\("([a-z0-9-]+)"', script))
    assert recorded == set(samples())
