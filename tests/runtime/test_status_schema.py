"""docs/status-schema.md lists every key of the status document (schema 1).

The recorded lab document (tests/runtime/data) is checked here without root;
tests/runtime/test_status_surface.py checks the live documents of both lab
nodes the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from clever_cluster.daemon import status

from .schema_doc import documented, emitted, undocumented

RECORDED = json.loads((Path(__file__).parent / "data" / "status-lab-active.json").read_text())


def test_every_key_of_the_recorded_document_is_documented() -> None:
    assert RECORDED["schema"] == status.SCHEMA == 1
    assert undocumented(RECORDED) == []


def test_an_undocumented_key_is_caught() -> None:
    doc = {**RECORDED, "surprise": {"inner": 1}}
    doc["drbd"] = {**RECORDED["drbd"], "new_field": True}
    assert undocumented(doc) == ["drbd.new_field", "surprise", "surprise.inner"]


def test_maps_are_read_by_their_documented_star() -> None:
    known = documented()
    assert "nodes[].vms.*" in known and "heartbeat.drops.*" in known
    got = emitted({"nodes": [{"vms": {"any-vm-name": "running"}}]}, known)
    assert got == {"nodes", "nodes[]", "nodes[].vms", "nodes[].vms.*"}


def test_every_documented_top_level_key_is_built() -> None:
    """The reverse direction at the top level: the doc lists nothing the daemon no longer emits."""
    top = {k.split(".")[0].split("[")[0] for k in documented()}
    assert top == set(RECORDED)
