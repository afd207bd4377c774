"""Decision journal entries: a stable MESSAGE_ID per reason code, and the catalog that explains them."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from clever_cluster import policy as P
from clever_cluster.daemon.decisionlog import CATALOG_PATH, NAMESPACE, action_names, catalog, message_id
from clever_cluster.policy.reasons import Code

REPO = Path(__file__).resolve().parents[2]


def test_message_ids_are_stable_and_distinct() -> None:
    # The namespace never changes: a saved journalctl query keeps working across versions.
    assert uuid.UUID("5b0c7a5e-3f6d-4c1e-9a8b-c1e7e2c1a5f0") == NAMESPACE
    assert message_id("peer_lost_fencing") == uuid.uuid5(NAMESPACE, "peer_lost_fencing").hex
    ids = {message_id(c.value) for c in Code}
    assert len(ids) == len(Code) and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_the_catalog_is_current() -> None:
    text = (REPO / CATALOG_PATH).read_text()
    assert text == catalog(), "run: python -m clever_cluster.daemon.decisionlog > systemd/clever-clusterd.catalog"
    assert text.count("\n-- ") + text.startswith("-- ") == len(Code)
    for c in Code:
        assert f"-- {message_id(c.value)}\nSubject: clever-clusterd decision {c.value}\n" in text


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="journalctl is not installed")
def test_journalctl_reads_the_catalog(tmp_path: Path) -> None:
    root = tmp_path / "root"
    cat = root / "usr/lib/systemd/catalog"
    cat.mkdir(parents=True)
    shutil.copy(REPO / CATALOG_PATH, cat / "clever-clusterd.catalog")
    r = subprocess.run(["journalctl", f"--root={root}", "--update-catalog"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    listed = subprocess.run(["journalctl", f"--root={root}", "--list-catalog"], capture_output=True, text=True, check=False)
    assert message_id("promote_after_fence") in listed.stdout and "clever-clusterd decision promote_after_fence" in listed.stdout


def test_action_names_leave_out_what_nobody_sees() -> None:
    acts = (P.Publish(P.Announcement(P.Phase.PRIMARY, P.Epoch(1, "n"), True)), P.WaitUntil(3.0), P.ProbeGateway(1.0),
            P.Alert("x", "y"), P.Alert("z", "w"))
    assert action_names(acts) == "ProbeGateway,Alert" and action_names(()) == "none"
