"""The datagram format: round trips of every field, authentication, and hostile input.

Strategies are derived from the declared wire types and bounds of each record,
so a field added to a record is covered without touching this file.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import uuid
from pathlib import Path
from typing import Any, Literal

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clever_cluster.daemon.heartbeat import codec, model
from clever_cluster.daemon.heartbeat.codec import CodecError, Spec, from_wire, to_wire
from clever_cluster.daemon.heartbeat.keys import Key, Keyring, key_id
from clever_cluster.daemon.heartbeat.wire import (
    MAX_DATAGRAM,
    PROTOCOL_VERSION,
    Drop,
    Envelope,
    Heartbeat,
    Opened,
    decode_body,
    encode_body,
    open_datagram,
    seal,
)

KEY = Keyring(Key("key_file", Path("k1"), bytes(range(64))))
OTHER_KEY = Keyring(Key("key_file", Path("k2"), os.urandom(64)))


def strategy(tp: Any, spec: Spec) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | strategy(inner, spec)
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is tuple:
        return st.lists(strategy(typing.get_args(tp)[0], spec), max_size=spec.max_items).map(tuple)
    if dataclasses.is_dataclass(tp):
        return record(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(int(spec.lo), int(spec.hi))
    if tp is float:
        return st.floats(spec.lo, spec.hi, allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(max_size=spec.max_len)
    if tp is bytes:
        if spec.key in ("mi", "bi"):
            return st.binary(min_size=16, max_size=16)
        return st.binary(max_size=spec.max_len)
    raise AssertionError(f"no strategy for {tp!r}")


def record(cls: Any) -> st.SearchStrategy[Any]:
    return st.builds(cls, **{f.name: strategy(f.tp, f.spec) for f in codec._fields(cls)})


ENVELOPES = st.builds(
    Envelope,
    version=st.just(PROTOCOL_VERSION),
    max_version=st.just(PROTOCOL_VERSION),
    stream=st.integers(0, 15),
    incarnation=st.integers(0, 2**64 - 1),
    sequence=st.integers(0, 2**64 - 1),
    heard=st.integers(0, 2**64 - 1),
    cluster=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", fullmatch=True),
    node=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", fullmatch=True),
)


def sample_heartbeat(**kw: Any) -> Heartbeat:
    report = model.NodeReport(
        phase="PRIMARY", epoch=model.Epoch(counter=7, node="node1"), gateway_score=2, eligible=True,
        resources=model.ResourceSummary(
            drbd=model.DrbdReport(role="Primary", disk="UpToDate", peer_disk="UpToDate", connection="Connected", data_uuid="D5E0AB5F3E3B7E2A"),
            mounted=True, ip=True, vms=(model.VmReport(name="plc1", state="running", fail_count=1),)))
    base = dict(machine_id=uuid.UUID("4c4c4544-0042-3510-8053-b4c04f4e4d32").bytes, boot_id=uuid.UUID("cdedfb76-9ba5-4af5-916f-cc1135aaa1b0").bytes,
                sent_us=10**12, fingerprint="c9efc6e5e7f24c15", report=report, intent_ref=model.AdminIntent().ref)
    return Heartbeat(**{**base, **kw})


def sealed(hb: Heartbeat | None = None, keys: Keyring = KEY, **env: Any) -> bytes:
    e = dict(version=PROTOCOL_VERSION, max_version=PROTOCOL_VERSION, stream=0, incarnation=5, sequence=1, heard=9,
             cluster="democluster", node="node1")
    e.update(env)
    envelope = Envelope(**e)  # type: ignore[arg-type]
    return seal(envelope, encode_body(envelope.version, hb or sample_heartbeat()), keys)


# --------------------------------------------------------------------------- round trips


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(record(Heartbeat))
def test_every_body_field_round_trips(hb: Heartbeat) -> None:
    assert decode_body(2, encode_body(2, hb)) == hb


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(record(Heartbeat))
def test_version_1_carries_everything_but_the_request_channel(hb: Heartbeat) -> None:
    assert decode_body(1, encode_body(1, hb)) == dataclasses.replace(hb, requests=(), responses=())
    # A version 2 reader reading version 1 sees no requests either.
    assert decode_body(2, encode_body(1, hb)).requests == ()


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(ENVELOPES, record(Heartbeat))
def test_sealed_datagram_round_trips(env: Envelope, hb: Heartbeat) -> None:
    body = encode_body(env.version, hb)
    try:
        data = seal(env, body, KEY)
    except ValueError:
        assume(False)  # larger than a datagram may be: the session sheds detail (tested there)
    assert len(data) <= MAX_DATAGRAM
    opened = open_datagram(data, KEY)
    assert isinstance(opened, Opened)
    assert opened.envelope == env and opened.key.name == "key_file"
    assert decode_body(env.version, opened.body) == hb


def test_a_full_report_fits_well_under_one_mtu() -> None:
    long = "n" * 20
    vms = tuple(model.VmReport(name=f"plc-production-{i:02d}", state="running", fail_count=2) for i in range(8))
    hb = sample_heartbeat(
        report=dataclasses.replace(
            sample_heartbeat().report,
            resources=dataclasses.replace(sample_heartbeat().report.resources, vms=vms),
            grant=model.GrantToken(grant_id="a" * 16, kind="grant", grantee=long, grantor_incarnation=2**40, epoch=model.Epoch(counter=9, node=long)),
            grant_reply=model.GrantReply(grant_id="b" * 16, accepted=True),
            fencing=model.FencingReport(open_episode=model.EpisodeId(peer=long, peer_incarnation=2**40, peer_boot_id="x" * 36, counter=3))),
        intent=(intent := model.AdminIntent(version=12, origin=long, changed_at=1.7e9, maintenance=True,
                                 bans=(model.Ban(node=long, until=1.8e9, reason="migrate"),), standby=(long,),
                                 cleanups=tuple(model.Cleanup(serial=i, at=1.7e9, resource="plc-production-01", node=long) for i in range(4)))),
        intent_ref=intent.ref, echo_us=10**12, hold_us=1000, rx_loss=(12, 0),
    )
    # While the peer has not acknowledged the intent, the whole record rides along.
    assert len(sealed(hb, cluster="production-cluster", node=long)) <= MAX_DATAGRAM
    # Once it has, only the record's name does: the steady state stays well under one MTU.
    assert len(sealed(dataclasses.replace(hb, intent=None), cluster="production-cluster", node=long)) <= 900


# --------------------------------------------------------------------------- authentication


@settings(max_examples=300)
@given(st.data())
def test_any_mutation_of_a_signed_datagram_is_rejected(data: st.DataObject) -> None:
    good = sealed()
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)), min_size=1, max_size=4))
    bad = bytearray(good)
    for pos, mask in flips:
        bad[pos] ^= mask
    assume(bytes(bad) != good)
    assert not isinstance(open_datagram(bytes(bad), KEY), Opened)


@given(st.integers(0, 400))
def test_truncated_datagrams_are_rejected(n: int) -> None:
    good = sealed()
    assume(n < len(good))
    assert not isinstance(open_datagram(good[:n], KEY), Opened)


@given(st.binary(min_size=1, max_size=64))
def test_extended_datagrams_are_rejected(extra: bytes) -> None:
    assert not isinstance(open_datagram(sealed() + extra, KEY), Opened)


@settings(max_examples=500)
@given(st.binary(max_size=2 * MAX_DATAGRAM))
def test_random_bytes_never_raise_and_never_open(data: bytes) -> None:
    assert isinstance(open_datagram(data, KEY), Drop)
    assert isinstance(open_datagram(b"cc" + data, KEY), Drop)


def test_each_reason_is_told_apart() -> None:
    good = sealed()
    assert isinstance(open_datagram(good, KEY), Opened)
    assert open_datagram(sealed(keys=OTHER_KEY), KEY) is Drop.BAD_MAC
    assert open_datagram(good[:20], KEY) is Drop.TRUNCATED
    assert open_datagram(good[:-1], KEY) is Drop.TRUNCATED
    assert open_datagram(good + b"x", KEY) is Drop.MALFORMED  # trailing bytes
    assert open_datagram(good + b"x" * MAX_DATAGRAM, KEY) is Drop.OVERSIZED
    assert open_datagram(b"xx" + good[2:], KEY) is Drop.MALFORMED  # not our magic
    tag = bytearray(good)
    tag[-1] ^= 1
    assert open_datagram(bytes(tag), KEY) is Drop.BAD_MAC


def test_key_rotation_accepts_both_keys_and_names_the_one_used() -> None:
    old = Key("key_file", Path("old"), b"o" * 64)
    new = Key("next_key_file", Path("new"), b"n" * 64)
    ring = Keyring(old, new)
    from_old = sealed(keys=Keyring(old))
    from_new = sealed(keys=Keyring(Key("key_file", Path("x"), new.secret)))
    a, b = open_datagram(from_old, ring), open_datagram(from_new, ring)
    assert isinstance(a, Opened) and a.key.name == "key_file"
    assert isinstance(b, Opened) and b.key.name == "next_key_file" and b.key.id == key_id(new.secret)
    assert open_datagram(from_new, Keyring(old)) is Drop.BAD_MAC
    assert new.secret.hex() not in repr(ring)


def test_signing_refuses_a_datagram_larger_than_the_limit() -> None:
    huge = sample_heartbeat(report=dataclasses.replace(sample_heartbeat().report, resources=model.ResourceSummary(
        vms=tuple(model.VmReport(name="v" * 63 + str(i), state="running") for i in range(16)))))
    with pytest.raises(ValueError, match="exceeds"):
        sealed(huge)


# --------------------------------------------------------------------------- the body decoder


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_body_decoder_rejects_garbage_with_codec_error_only(data: bytes) -> None:
    try:
        decode_body(2, data)
    except CodecError:
        pass


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400)
@given(MSGPACK_VALUES, st.data())
def test_well_formed_msgpack_of_the_wrong_shape_is_a_codec_error(value: Any, data: st.DataObject) -> None:
    if data.draw(st.booleans()) and isinstance(value, dict):
        value = {**to_wire(sample_heartbeat()), **value}  # mostly right, with some keys wrong
    try:
        decode_body(2, msgpack.packb(value, use_bin_type=True))
    except CodecError:
        pass


def test_codec_is_strict_about_types_and_bounds() -> None:
    raw = to_wire(model.VmReport(name="plc1", state="running", fail_count=3))
    assert from_wire(model.VmReport, raw) == model.VmReport(name="plc1", state="running", fail_count=3)
    for bad in ({**raw, "f": True}, {**raw, "f": -1}, {**raw, "n": "x" * 64}, {**raw, "s": 3}, {"s": "running"}, [raw]):
        with pytest.raises(CodecError):
            from_wire(model.VmReport, bad)
    with pytest.raises(CodecError):
        from_wire(model.NodeReport, {"ph": "PRIMARY", "gs": float("nan")})
    with pytest.raises(CodecError, match="one of"):
        from_wire(model.NodeReport, {"ph": "PHASE"})
    # Unknown keys are ignored (additions within a version), defaults fill missing ones.
    assert from_wire(model.VmReport, {**raw, "zz": 1}) == from_wire(model.VmReport, raw)


def test_protocol_doc_tables_are_current() -> None:
    from clever_cluster.daemon.heartbeat import protodoc

    text = protodoc.DOC.read_text()
    assert protodoc.render(text) == text, "run: python -m clever_cluster.daemon.heartbeat.protodoc --write"
