"""The admin intent's copy on the replicated filesystem (DESIGN section 5).

Whichever node mounts the filesystem finds there the newest intent the
active node knew: while mounted here, every new intent record is written to
it; right after a start sequence mounted it, the copy is read and adopted
when it is newer than the local record (for instance a node that comes back
after being fenced, whose peer is gone again).

Invariants: reads and writes run in the ``save_dir`` thread pool with a
timeout (they touch the replicated filesystem); the copy is used only
through ``IntentStore.adopt_copy``, which never goes backwards.
"""

from __future__ import annotations

import asyncio

from . import logsetup
from .heartbeat import AdminIntent, HeartbeatService
from .heartbeat.codec import CodecError, from_wire, to_wire
from .resources.base import ResourceError
from .resources.filesystem import Filesystem
from .resources.intent import read_intent_copy, write_intent_copy
from .resources.threads import SAVE_DIR, run_in

log = logsetup.get("daemon.intentcopy")

TIMEOUT = 5.0
FORMAT = 1


class IntentCopy:
    def __init__(self, fs: Filesystem, heartbeat: HeartbeatService) -> None:
        self.fs = fs
        self.heartbeat = heartbeat

    async def write(self, rec: AdminIntent) -> None:
        if rec.version == 0 or self.fs.replicated_dev() is None:
            return
        try:
            async with asyncio.timeout(TIMEOUT):
                await run_in(SAVE_DIR, write_intent_copy, self.fs, {"format": FORMAT, "intent": to_wire(rec), "summary": rec.describe()})
        except (ResourceError, OSError, TimeoutError) as e:
            log.warning("cannot write the admin intent copy on the replicated filesystem: %s", e or "timeout")

    async def after_mount(self) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                raw = await run_in(SAVE_DIR, read_intent_copy, self.fs)
        except (ResourceError, OSError, TimeoutError) as e:
            log.warning("cannot read the admin intent copy on the replicated filesystem: %s", e or "timeout")
            return
        if raw is None:
            return
        try:
            if raw.get("format") != FORMAT:
                raise CodecError("format", f"unknown format {raw.get('format')!r}")
            rec = from_wire(AdminIntent, raw.get("intent"))
        except CodecError as e:
            log.warning("the admin intent copy on the replicated filesystem is unusable: %s", e)
            return
        store = self.heartbeat.session.intent
        if store.adopt_copy(rec):
            log.info("adopted admin intent version %d from the replicated filesystem: %s", rec.version, rec.describe(),
                     extra={"fields": {"CLEVER_REASON": "intent_adopted_from_filesystem"}})
            self.heartbeat.send_now()
        else:
            await self.write(store.record)
