"""A wrong command line is one line on stderr and exit 2, for every clevervm verb, through the real CLI.

The daemon-side refusals (unknown node, unknown VM, a lifetime too long...)
are in tests/runtime/test_status_surface.py, against running daemons.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clever_cluster.daemon import cli
from clever_cluster.sim.harness import run_cli

# One bad command line per verb (DRBD's handlers excepted: they speak DRBD's exit codes, tests/test_fence_peer_cli.py).
BAD: dict[str, tuple[str, ...]] = {
    "status": ("status", "extra"),
    "why": ("why", "--verbose"),
    "history": ("history", "--decisions", "201"),
    "check": ("check", "now"),
    "start": ("start", "plc1"),
    "stop": ("stop", "--force"),
    "forcestart": ("forcestart", "plc1"),
    "forcestop": ("forcestop", "plc1"),
    "cleanup": ("cleanup", "plc1", "plc2"),
    "migrate": ("migrate", "--lifetime", "soon"),
    "unmigrate": ("unmigrate", "node1"),
    "standby": ("standby", "node1", "node2"),
    "unstandby": ("unstandby", "--all"),
    "maintenance": ("maintenance", "perhaps"),
    "fence": ("fence",),
    "confirm-fenced": ("confirm-fenced",),
    "unblock": ("unblock", "--force"),
    "split-brain": ("split-brain", "--resolve"),
    "reload": ("reload", "--json"),
    "daemon-restart": ("daemon-restart", "now"),
    "console-password": ("console-password", "--nosuch"),
}


def test_the_table_covers_every_verb() -> None:
    assert set(BAD) == set(cli.VERBS) - {"fence-peer", "unfence-peer"}


@pytest.mark.parametrize("verb", sorted(BAD))
def test_a_bad_command_line_is_one_line_and_exit_2(verb: str, lab_configs: tuple[Path, Path]) -> None:
    r = run_cli(lab_configs[0], *BAD[verb])
    assert r.returncode == 2, (verb, r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clevervm") and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    if verb != "split-brain" and verb != "migrate":  # checked after parsing, in the verb itself
        assert f"(see clevervm {verb} --help)" in lines[0], lines[0]
