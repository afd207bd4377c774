"""Fixtures of the end-to-end lab: a :class:`NodeLab` that is closed, and proven gone, after every test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.sim.nodelab.lab import NodeLab, cleanup_stale
from tests.conftest import require_root


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_nodelabs() -> None:
    """Loop devices and directories of labs whose test process died (the namespaces go in tests/conftest.py)."""
    if os.geteuid() == 0:
        cleanup_stale()


@pytest.fixture
def make_nodelab(tmp_path: Path) -> Iterator[Callable[..., NodeLab]]:
    """``make_nodelab(**options)`` starts a lab; each is closed after the test and checked for leftovers.

    The lab's logs and transition log are kept in the test's tmp_path; on a
    failure, the timeline and the nodes' log tails are printed.
    """
    require_root()
    labs: list[NodeLab] = []

    def make(**options: Any) -> NodeLab:
        lab = NodeLab(tmp_path / f"lab{len(labs)}", **options)
        labs.append(lab)
        return lab.start()

    try:
        yield make
    finally:
        for lab in labs:
            if lab.nodes and not lab.closed:
                try:
                    print(lab.timeline())
                    for n in lab.nodes:
                        print(n.log_tail())
                except Exception as e:  # noqa: BLE001 - diagnostics must not hide the cleanup
                    print(f"no diagnostics: {e!r}")
        errors = []
        for lab in labs:
            try:
                lab.close()
            except Exception as e:  # noqa: BLE001 - close the others, then report
                errors.append(e)
        for lab in labs:
            lab.assert_nothing_left()
        if errors:
            raise errors[0]


@pytest.fixture
def nodelab(make_nodelab: Callable[..., NodeLab]) -> NodeLab:
    """A two-node lab with default options (real daemons, DRBD 9, both BMCs immediate)."""
    return make_nodelab()
