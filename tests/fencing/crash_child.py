"""Child process for the crash test: the device confirms, then the process
is killed just before the fence record is written and fsynced."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import clever_cluster.fencing.journal as journal_mod
from tests.fencing.fakes import FakeAgent
from tests.fencing.test_coordinator import EP, World, coordinator, req


def hang_before_write(path: Path, line: bytes) -> None:
    print("CONFIRMED-BEFORE-FSYNC", flush=True)
    time.sleep(3600)


async def main(state: Path) -> None:
    journal_mod.append_line_fsync = hang_before_write
    c = coordinator(state, [[FakeAgent("bmc")]], World(), after="off")
    await c.fence(req())
    print("UNEXPECTED: told confirmed", flush=True)


if __name__ == "__main__":
    assert EP is not None
    asyncio.run(main(Path(sys.argv[1])))
