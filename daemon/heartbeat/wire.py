"""The heartbeat datagram: a frozen envelope, a versioned body, an HMAC tag.

Layout (all integers big-endian; docs/protocol.md has the full table)::

    0   2  magic "cc"
    2   1  version       body format of this datagram
    3   1  max_version   highest body format the sender reads
    4   1  stream        the sender's link index (0..15)
    5   1  flags         0 (reserved)
    6   8  incarnation   sender's incarnation
    14  8  sequence      per (incarnation, stream), strictly increasing
    22  8  heard         the receiver's incarnation as last heard by the sender (0: none)
    30  1+C  cluster name (length-prefixed ASCII)
    ..  1+N  sender node name
    ..  2+L  body (msgpack map, format ``version``)
    end-32 32 HMAC-SHA256(key, every byte before the tag)

The envelope never changes between protocol versions, so replay protection,
the cluster and node checks, the freshness proof (``heard``) and version
negotiation work even for a body this node cannot read.

Invariants:
- :func:`open_datagram` looks at unauthenticated bytes only to size them up
  (and to count why they were dropped); nothing is parsed into a fact until
  the tag verified under a key of the ring.
- It never raises, whatever the input.
- :func:`seal` never produces more than :data:`MAX_DATAGRAM` bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Literal

import msgpack

from .codec import CodecError, from_wire, to_wire, wf
from .keys import TAG_BYTES, Key, Keyring
from .model import NAME, AdminIntent, Announce, IntentRef, NodeReport

MAGIC = b"cc"
PROTOCOL_VERSION = 2  # what this build speaks
MIN_VERSION = 1  # the previous version stays readable for rolling upgrades
MAX_DATAGRAM = 1232  # IPv6 minimum MTU 1280 - 40 (IPv6) - 8 (UDP): never fragmented
MAX_STREAMS = 16

_FIXED = struct.Struct("!2sBBBBQQQ")
_MIN_LEN = _FIXED.size + 1 + 1 + 1 + 1 + 2 + TAG_BYTES


class Drop(enum.StrEnum):
    """Why a datagram was not turned into facts (the counter names)."""

    OVERSIZED = "oversized"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    BAD_MAC = "bad_mac"
    WRONG_CLUSTER = "wrong_cluster"
    WRONG_NODE = "wrong_node"
    REPLAY = "replay"
    TOO_OLD_VERSION = "too_old_version"
    UNKNOWN_VERSION = "unknown_version"


@dataclasses.dataclass(frozen=True)
class Envelope:
    version: int
    max_version: int
    stream: int
    incarnation: int
    sequence: int
    heard: int  # the receiver's incarnation as the sender last heard it; 0: not yet
    cluster: str
    node: str


# --------------------------------------------------------------------------- body


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestMsg:
    """A peer request: resent in every datagram until its final response arrives."""

    rid: int = wf("i")
    kind: str = wf("k", max_len=32)
    payload: bytes = wf("p", b"", max_len=192)


ResponseStatus = Literal["accepted", "ok", "error", "unknown_kind"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResponseMsg:
    rid: int = wf("i")
    status: ResponseStatus = wf("s")
    result: bytes = wf("r", b"", max_len=192)
    error: str = wf("e", "", max_len=120)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """The body: who sends, timing for RTT, the sender's report and intent."""

    machine_id: bytes | None = wf("mi", None, max_len=16)  # SMBIOS system UUID, 16 bytes
    boot_id: bytes = wf("bi", max_len=16)  # the kernel's boot id, 16 bytes
    sent_us: int = wf("ts")  # sender's monotonic clock, microseconds
    echo_us: int | None = wf("ec", None)  # the peer's last sent_us heard on this link
    hold_us: int = wf("ho", 0)  # how long ago that was received
    fresh_us: int | None = wf("fe", None)  # the peer's latest sent_us heard on any link (freshness proof)
    fresh_hold_us: int = wf("fh", 0)  # how long ago that was received
    fingerprint: str = wf("fp", max_len=16)
    report: NodeReport = wf("r")
    intent_ref: IntentRef = wf("ir")  # the admin intent record the sender holds
    intent: AdminIntent | None = wf("in", None)  # the whole record, while the peer does not hold it
    rx_loss: tuple[int | None, ...] = wf("rl", (), hi=1000, max_items=MAX_STREAMS)  # per mille, per stream heard
    announce: Announce | None = wf("an", None)
    requests: tuple[RequestMsg, ...] = wf("rq", (), max_items=4)  # version >= 2
    responses: tuple[ResponseMsg, ...] = wf("rs", (), max_items=4)  # version >= 2

    def __post_init__(self) -> None:
        if len(self.boot_id) != 16 or (self.machine_id is not None and len(self.machine_id) != 16):
            raise ValueError("boot and machine ids are 16-byte UUIDs")


_V2_ONLY = ("rq", "rs")


def encode_body(version: int, hb: Heartbeat) -> bytes:
    raw = to_wire(hb)
    if version < 2:
        for k in _V2_ONLY:
            raw.pop(k, None)
    return bytes(msgpack.packb(raw, use_bin_type=True))


def decode_body(version: int, body: bytes) -> Heartbeat:
    """Raises CodecError for anything that is not a valid body of ``version``."""
    if not MIN_VERSION <= version <= PROTOCOL_VERSION:
        raise CodecError("", f"protocol version {version} is not readable here")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
        raise CodecError("", f"not msgpack: {e}") from None
    if isinstance(raw, dict) and version < 2:
        for k in _V2_ONLY:
            raw.pop(k, None)
    return from_wire(Heartbeat, raw)


# --------------------------------------------------------------------------- envelope


def seal(env: Envelope, body: bytes, keys: Keyring) -> bytes:
    """The signed datagram. Raises ValueError when it would exceed MAX_DATAGRAM."""
    cluster, node = env.cluster.encode("ascii"), env.node.encode("ascii")
    if not (0 < len(cluster) <= NAME and 0 < len(node) <= NAME and 0 <= env.stream < MAX_STREAMS):
        raise ValueError("envelope field out of range")
    head = _FIXED.pack(MAGIC, env.version, env.max_version, env.stream, 0, env.incarnation, env.sequence, env.heard)
    data = b"".join([head, bytes([len(cluster)]), cluster, bytes([len(node)]), node,
                     len(body).to_bytes(2, "big"), body])
    if len(data) + TAG_BYTES > MAX_DATAGRAM:
        raise ValueError(f"datagram of {len(data) + TAG_BYTES} bytes exceeds {MAX_DATAGRAM}")
    return data + keys.sign(data)


@dataclasses.dataclass(frozen=True)
class Opened:
    """An authenticated datagram: the envelope, the (undecoded) body and the key that verified it."""

    envelope: Envelope
    body: bytes
    key: Key


def _frame(data: bytes) -> tuple[int, int, int] | Drop:
    """Offsets (cluster, node, body) from the length prefixes, or why they do not add up."""
    if len(data) > MAX_DATAGRAM:
        return Drop.OVERSIZED
    if len(data) < _MIN_LEN:
        return Drop.TRUNCATED
    if data[:2] != MAGIC:
        return Drop.MALFORMED
    pos = _FIXED.size
    c_at = pos
    pos += 1 + data[pos]
    if pos >= len(data):
        return Drop.TRUNCATED
    n_at = pos
    pos += 1 + data[pos]
    if pos + 2 > len(data):
        return Drop.TRUNCATED
    b_at = pos
    end = pos + 2 + int.from_bytes(data[pos:pos + 2], "big") + TAG_BYTES
    if end > len(data):
        return Drop.TRUNCATED
    if end < len(data):
        return Drop.MALFORMED  # trailing bytes
    return c_at, n_at, b_at


def open_datagram(data: bytes, keys: Keyring) -> Opened | Drop:
    """Authenticate ``data`` and read its envelope. Never raises."""
    framed = _frame(data)
    if isinstance(framed, Drop):
        return framed
    key = keys.verify(data[:-TAG_BYTES], data[-TAG_BYTES:])
    if key is None:
        return Drop.BAD_MAC
    c_at, n_at, b_at = framed
    _, version, max_version, stream, _flags, incarnation, sequence, heard = _FIXED.unpack_from(data)
    try:
        cluster = data[c_at + 1:n_at].decode("ascii")
        node = data[n_at + 1:b_at].decode("ascii")
    except UnicodeDecodeError:
        return Drop.MALFORMED
    if not cluster or not node or stream >= MAX_STREAMS or max_version < version:
        return Drop.MALFORMED
    env = Envelope(version, max_version, stream, incarnation, sequence, heard, cluster, node)
    return Opened(env, data[b_at + 2:-TAG_BYTES], key)
