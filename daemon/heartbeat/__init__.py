"""The peer heartbeat: authenticated multi-link UDP, replicated admin intent, peer requests.

Entry points for the runtime: :class:`HeartbeatService` (open, start, stop,
view, status, change_intent, requests) and the records of :mod:`.model`.
docs/protocol.md describes the wire format and its rules.
"""

from .facts import Event, LinkView, PeerState, PeerView
from .model import (
    AdminIntent,
    Announce,
    Ban,
    Cleanup,
    DrbdReport,
    EpisodeId,
    Epoch,
    FencedIncarnation,
    FencingReport,
    GrantReply,
    GrantToken,
    NodeReport,
    ResourceSummary,
    VmReport,
)
from .requests import (
    HANDOVER_GRANT,
    OUTDATE_DISK,
    GrantRequest,
    GrantResult,
    OutdateRequest,
    OutdateResult,
    RequestError,
    RequestFailed,
    RequestKind,
    RequestTimeout,
    RequestUnavailable,
)
from .service import HeartbeatError, HeartbeatService
from .wire import MIN_VERSION, PROTOCOL_VERSION

__all__ = [
    "HANDOVER_GRANT",
    "MIN_VERSION",
    "OUTDATE_DISK",
    "PROTOCOL_VERSION",
    "AdminIntent",
    "Announce",
    "Ban",
    "Cleanup",
    "DrbdReport",
    "EpisodeId",
    "Epoch",
    "Event",
    "FencedIncarnation",
    "FencingReport",
    "GrantReply",
    "GrantRequest",
    "GrantResult",
    "GrantToken",
    "HeartbeatError",
    "HeartbeatService",
    "LinkView",
    "NodeReport",
    "OutdateRequest",
    "OutdateResult",
    "PeerState",
    "PeerView",
    "RequestError",
    "RequestFailed",
    "RequestKind",
    "RequestTimeout",
    "RequestUnavailable",
    "ResourceSummary",
    "VmReport",
]
