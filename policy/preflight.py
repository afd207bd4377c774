"""Pre-flight of `clevervm migrate` (DESIGN §9): may this node hand over now?

Pure: the CLI (through the daemon) passes the current facts. An empty list
means the handover can start; otherwise each line says what refuses it.
"""

from __future__ import annotations

from .facts import Facts
from .model import Conn, Disk
from .settings import Settings
from .view import PeerStatus, banned, holds, peer_status


def migrate_preflight(facts: Facts, settings: Settings) -> list[str]:
    problems: list[str] = []
    if not holds(facts):
        return []      # on the standby: a ban here moves nothing
    rep = facts.peer.report
    if peer_status(facts, settings) is not PeerStatus.HEARD or rep is None:
        problems.append(f"{settings.peer} is not online")
        return problems
    if rep.disk is not Disk.UP_TO_DATE or facts.drbd.peer_disk is not Disk.UP_TO_DATE:
        problems.append(f"{settings.peer}'s disk is {rep.disk}, not UpToDate")
    if facts.drbd.connection is not Conn.CONNECTED:
        problems.append(f"DRBD is {facts.drbd.connection}, not Connected")
    if banned(facts, settings.peer) or settings.peer in facts.intent.standby:
        problems.append(f"{settings.peer} is banned or in standby")
    elif not rep.eligible:
        problems.append(f"{settings.peer} is not eligible")
    return problems
