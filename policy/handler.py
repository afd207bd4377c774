"""DRBD's fence-peer handler contract (DESIGN §4.5), as a pure mapping.

`clevervm fence-peer` asks the local daemon and exits with DRBD's codes. Only
two answers release DRBD's frozen I/O: 4 (the peer's disk is Outdated) and 7
(the peer's machine was fenced, confirmed). Every other path exits 1, which
keeps a resource-and-stonith Primary frozen until `drbdadm resume-io`.

Invariant: no outcome other than an explicit 4 or 7 answer from the daemon
maps to a code that DRBD would treat as "peer is dealt with".
"""

from __future__ import annotations

from enum import StrEnum

from .mutations import NO_MUTATIONS, Mutations

EXIT_BROKEN = 1
EXIT_PEER_OUTDATED = 4
EXIT_PEER_FENCED = 7


class HandlerOutcome(StrEnum):
    ANSWERED = "answered"                  # the daemon answered with a code
    DAEMON_UNREACHABLE = "daemon_unreachable"
    TIMEOUT = "timeout"
    ERROR = "error"
    SIGNAL = "signal"
    BAD_ENVIRONMENT = "bad_environment"


def fence_peer_exit_code(outcome: HandlerOutcome, answer: int | None = None, *,
                         mutations: Mutations = NO_MUTATIONS) -> int:
    if outcome is HandlerOutcome.ANSWERED and answer in (EXIT_PEER_OUTDATED, EXIT_PEER_FENCED):
        return answer
    if outcome is HandlerOutcome.DAEMON_UNREACHABLE and mutations.handler_exit3_unreachable:
        return 3
    return EXIT_BROKEN
