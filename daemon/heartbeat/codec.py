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


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    spec: Spec
    tp: Any
    default: Any  # dataclasses.MISSING when required


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
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
        out.append(_Field(f.name, spec, hints[f.name], f.default))
    _FIELDS[cls] = tuple(out)
    return _FIELDS[cls]


# --------------------------------------------------------------------------- encode


def to_wire(obj: Any) -> Any:
    """A dataclass record as nested dicts/lists/scalars (defaults left out)."""
    out: dict[str, Any] = {}
    for f in _fields(type(obj)):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        out[f.spec.key] = _encode_value(value)
    return out


def _encode_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_wire(value)
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    return value


# --------------------------------------------------------------------------- decode


def from_wire(cls: type[T], raw: Any, path: str = "") -> T:
    """Build ``cls`` from an unpacked msgpack value, checking every field."""
    if not isinstance(raw, dict):
        raise CodecError(path, f"expected a map, got {type(raw).__name__}")
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        where = f"{path}.{f.name}" if path else f.name
        if f.spec.key in raw:
            kwargs[f.name] = _decode_value(f.tp, raw[f.spec.key], f.spec, where)
        elif f.default is dataclasses.MISSING:
            raise CodecError(where, "missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a record's own __post_init__ check
        raise CodecError(path, str(e)) from None


def _decode_value(tp: Any, raw: Any, spec: Spec, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{path}: only X | None unions are supported")
        return _decode_value(rest[0], raw, spec, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not isinstance(raw, str) or raw not in allowed:
            raise CodecError(path, f"expected one of {allowed}, got {raw!r:.40}")
        return raw
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{path}: only tuple[X, ...] is supported")
        if not isinstance(raw, (list, tuple)):
            raise CodecError(path, f"expected a list, got {type(raw).__name__}")
        if len(raw) > spec.max_items:
            raise CodecError(path, f"more than {spec.max_items} items")
        return tuple(_decode_value(args[0], v, spec, f"{path}[{i}]") for i, v in enumerate(raw))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_wire(tp, raw, path)
    if tp is bool:
        if not isinstance(raw, bool):
            raise CodecError(path, f"expected true/false, got {type(raw).__name__}")
        return raw
    if tp is int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise CodecError(path, f"expected an integer, got {type(raw).__name__}")
        if not spec.lo <= raw <= spec.hi:
            raise CodecError(path, f"{raw} is outside {spec.lo:g}..{spec.hi:g}")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise CodecError(path, f"expected a number, got {type(raw).__name__}")
        value = float(raw)
        if not math.isfinite(value) or not spec.lo <= value <= spec.hi:
            raise CodecError(path, f"{value} is outside {spec.lo:g}..{spec.hi:g}")
        return value
    if tp in (str, bytes):
        what = "text" if tp is str else "bytes"
        if not isinstance(raw, tp):
            raise CodecError(path, f"expected {what}, got {type(raw).__name__}")
        if len(raw) > spec.max_len:
            raise CodecError(path, f"{what} longer than {spec.max_len}")
        return raw
    raise TypeError(f"{path}: unsupported field type {tp!r}")
