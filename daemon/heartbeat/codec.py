"""A strict, typed mapping between frozen dataclasses and msgpack-ready values.

Every record the heartbeat carries is a frozen dataclass whose fields are
declared with :func:`wf`: a short wire key plus bounds (string length,
number range, list length). :func:`to_wire` turns a record into plain
dicts/lists/scalars for ``msgpack.packb``; :func:`from_wire` checks an
unpacked value against the declared types and bounds and builds the record.

Invariants:
- :func:`from_wire` either returns a fully valid record or raises
  :class:`CodecError`; it never raises anything else, whatever the input
  (it only ever sees authenticated bytes, but a buggy peer must not crash us).
- ``bool`` is never accepted for ``int`` (and vice versa); floats must be
  finite; strings and lists are bounded, so a record has a bounded size.
- Fields equal to their default are left out on the wire and a missing key
  reads as its default: adding a field with a default is compatible within a
  protocol version; keys a reader does not know are ignored.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

T = TypeVar("T")

U64_MAX = 2**64 - 1


class CodecError(ValueError):
    """The value does not match the declared record; ``path`` says where."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or '<record>'}: {problem}")
        self.path = path
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class Spec:
    key: str
    max_len: int = 64  # strings and bytes
    max_items: int = 8  # tuples
    lo: float = 0  # numbers
    hi: float = U64_MAX


def wf(key: str, default: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """Declare a wire field: ``phase: str = wf("ph", max_len=16)``."""
    meta = {"wire": Spec(key, **bounds)}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]  # raises CodecError with the path below this value


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    spec: Spec
    tp: Any
    default: Any  # dataclasses.MISSING when required
    encode: Encoder
    decode: Decoder


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
    """The wire fields of a record, with an encoder and a decoder built once per field."""
    cached = _FIELDS.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    out = []
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("wire")
        if not isinstance(spec, Spec):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with wf()")
        if spec.key in keys:
            raise TypeError(f"{cls.__name__}: wire key {spec.key!r} used twice")
        keys.add(spec.key)
        tp = hints[f.name]
        out.append(_Field(f.name, spec, tp, f.default, _encoder(tp), _decoder(tp, spec, f"{cls.__name__}.{f.name}")))
    _FIELDS[cls] = tuple(out)
    return _FIELDS[cls]


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional(tp: Any, where: str) -> Any | None:
    """X for ``X | None``; None for a type that is not optional."""
    if typing.get_origin(tp) not in (types.UnionType, typing.Union):
        return None
    rest = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(rest) != 1 or len(typing.get_args(tp)) != 2:
        raise TypeError(f"{where}: only X | None unions are supported")
    return rest[0]


# --------------------------------------------------------------------------- encode


def to_wire(obj: Any) -> Any:
    """A dataclass record as nested dicts/lists/scalars (defaults left out)."""
    out: dict[str, Any] = {}
    for f in _fields(type(obj)):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        out[f.spec.key] = f.encode(value)
    return out


def _same(value: Any) -> Any:
    return value


def _encoder(tp: Any) -> Encoder:
    inner = _optional(tp, "")
    if inner is not None:
        enc = _encoder(inner)
        return _same if enc is _same else (lambda v: None if v is None else enc(v))
    if _is_record(tp):
        return to_wire
    if typing.get_origin(tp) is tuple:
        item = _encoder(typing.get_args(tp)[0])
        return list if item is _same else (lambda v: [item(x) for x in v])
    return _same


# --------------------------------------------------------------------------- decode


def from_wire(cls: type[T], raw: Any, path: str = "") -> T:
    """Build ``cls`` from an unpacked msgpack value, checking every field."""
    if not isinstance(raw, dict):
        raise CodecError(path, f"expected a map, got {type(raw).__name__}")
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        if f.spec.key in raw:
            try:
                kwargs[f.name] = f.decode(raw[f.spec.key])
            except CodecError as e:
                raise CodecError(_join(path, f.name, e.path), e.problem) from None
        elif f.default is dataclasses.MISSING:
            raise CodecError(_join(path, f.name, ""), "missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a record's own __post_init__ check
        raise CodecError(path, str(e)) from None


def _join(path: str, name: str, below: str) -> str:
    here = f"{path}.{name}" if path else name
    return f"{here}{below}" if below.startswith("[") or not below else f"{here}.{below}"


def _decoder(tp: Any, spec: Spec, where: str) -> Decoder:
    """A checking decoder for one field type, built once (the checks are those of the module docstring)."""
    inner = _optional(tp, where)
    if inner is not None:
        dec = _decoder(inner, spec, where)
        return lambda raw: None if raw is None else dec(raw)
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)

        def literal(raw: Any) -> Any:
            if not isinstance(raw, str) or raw not in allowed:
                raise CodecError("", f"expected one of {allowed}, got {raw!r:.40}")
            return raw
        return literal
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: only tuple[X, ...] is supported")
        item = _decoder(args[0], spec, where)

        def array(raw: Any) -> Any:
            if not isinstance(raw, (list, tuple)):
                raise CodecError("", f"expected a list, got {type(raw).__name__}")
            if len(raw) > spec.max_items:
                raise CodecError("", f"more than {spec.max_items} items")
            out = []
            for i, v in enumerate(raw):
                try:
                    out.append(item(v))
                except CodecError as e:
                    raise CodecError(f"[{i}]" + (f".{e.path}" if e.path and not e.path.startswith("[") else e.path), e.problem) from None
            return tuple(out)
        return array
    if _is_record(tp):
        return lambda raw: from_wire(tp, raw)
    if tp is bool:
        def boolean(raw: Any) -> Any:
            if not isinstance(raw, bool):
                raise CodecError("", f"expected true/false, got {type(raw).__name__}")
            return raw
        return boolean
    if tp is int:
        def integer(raw: Any) -> Any:
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise CodecError("", f"expected an integer, got {type(raw).__name__}")
            if not spec.lo <= raw <= spec.hi:
                raise CodecError("", f"{raw} is outside {spec.lo:g}..{spec.hi:g}")
            return raw
        return integer
    if tp is float:
        def number(raw: Any) -> Any:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise CodecError("", f"expected a number, got {type(raw).__name__}")
            value = float(raw)
            if not math.isfinite(value) or not spec.lo <= value <= spec.hi:
                raise CodecError("", f"{value} is outside {spec.lo:g}..{spec.hi:g}")
            return value
        return number
    if tp in (str, bytes):
        what = "text" if tp is str else "bytes"

        def sized(raw: Any) -> Any:
            if not isinstance(raw, tp):
                raise CodecError("", f"expected {what}, got {type(raw).__name__}")
            if len(raw) > spec.max_len:
                raise CodecError("", f"{what} longer than {spec.max_len}")
            return raw
        return sized
    raise TypeError(f"{where}: unsupported field type {tp!r}")
