"""A small declarative schema for TOML configuration.

A configuration section is a frozen dataclass; each field declares its
default, unit and documentation with :func:`opt`. :func:`load_section` turns
a parsed TOML table into that dataclass and collects *every* problem as a
``section.key: problem`` line instead of stopping at the first one.

Field types understood (from the annotations): ``str``, ``int``, ``float``
(with ``kind="duration"`` a string such as ``"100ms"``), ``bool``, ``Path``,
IP addresses and interfaces, ``Literal[...]`` choices, ``X | None``,
``tuple[X, ...]`` (TOML arrays, or arrays of tables when ``X`` is a
dataclass), ``dict[str, str]``, nested dataclasses (sub-tables) and unions of
dataclasses told apart by their ``type`` field (``Literal``).

Invariant: a loader never raises for bad input; it returns the problems.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

_MISSING = dataclasses.MISSING

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return seconds for ``"100ms"``, ``"2s"``, ``"5m"``, ``"1h"`` or ``"1m30s"``.

    Raises ValueError with an operator-readable message.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"not a duration: {text!r} (use a number with a unit: ms, s, m or h, e.g. \"100ms\" or \"2s\")")
    return total


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`, for documentation and messages."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    if seconds != int(seconds):
        return f"{round(seconds, 3):g}s"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{int(seconds)}s"


@dataclasses.dataclass(frozen=True)
class Opt:
    """What the schema knows about one field beyond its type."""

    doc: str
    kind: str | None = None  # "duration" | "host_port" | None
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    nonempty: bool = False
    example: Any = None  # shown in the example file when there is no default


def opt(default: Any = _MISSING, doc: str = "", **kw: Any) -> Any:
    """Declare a field: ``interval: float = opt(0.1, "how often", kind="duration", min=0.01)``.

    A field without a default is required. Mutable defaults are not allowed
    (the schema is frozen; use tuples).
    """
    meta = {"opt": Opt(doc=doc, **kw)}
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_opt(f: dataclasses.Field[Any]) -> Opt:
    o = f.metadata.get("opt")
    return o if isinstance(o, Opt) else Opt(doc="")


def toml_key(name: str) -> str:
    """Python field names that are keywords carry a trailing underscore."""
    return name[:-1] if name.endswith("_") else name


class Problems:
    """Collects ``path: problem`` lines."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, problem: str) -> None:
        self.items.append(f"{path}: {problem}")

    def __bool__(self) -> bool:
        return bool(self.items)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is Path:
        return "a path (string)"
    if origin is tuple:
        return "an array"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _convert(value: Any, tp: Any, o: Opt, path: str, problems: Problems) -> Any:
    """Convert one TOML value to ``tp``; on a problem record it and return _MISSING."""
    origin = typing.get_origin(tp)
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if all(dataclasses.is_dataclass(a) for a in args):
            return _convert_tagged(value, args, path, problems)
        if all(a in _ADDRESS_TYPES for a in args):
            return _convert_address(value, tuple(args), path, problems)
        if len(args) == 1:
            return _convert(value, args[0], o, path, problems)
        raise TypeError(f"unsupported union in schema at {path}: {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        problems.add(path, f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return _MISSING
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.add(path, f"must be an array, not {_toml_type(value)}")
            return _MISSING
        if o.nonempty and not value:
            problems.add(path, "must not be empty")
            return _MISSING
        out = []
        ok = True
        for i, item in enumerate(value):
            v = _convert(item, item_tp, Opt(doc=""), f"{path}[{i}]", problems)
            ok = ok and v is not _MISSING
            out.append(v)
        return tuple(out) if ok else _MISSING
    if origin is dict:
        if not isinstance(value, dict):
            problems.add(path, f"must be a table, not {_toml_type(value)}")
            return _MISSING
        bad = [k for k, v in value.items() if not isinstance(v, str)]
        for k in bad:
            problems.add(_join(path, k), "must be a string")
        return _MISSING if bad else dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.add(path, f"must be a table, not {_toml_type(value)}")
            return _MISSING
        return load_section(tp, value, path, problems)
    if tp in _ADDRESS_TYPES:
        return _convert_address(value, (tp,), path, problems)
    return _convert_scalar(value, tp, o, path, problems)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


_ADDRESS_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


def _convert_address(value: Any, types_: tuple[Any, ...], path: str, problems: Problems) -> Any:
    if not isinstance(value, str):
        problems.add(path, f"must be an address as a string, not {_toml_type(value)}")
        return _MISSING
    interface = any(t in (ipaddress.IPv4Interface, ipaddress.IPv6Interface) for t in types_)
    try:
        if interface:
            if "/" not in value:
                problems.add(path, f"needs a prefix length, e.g. \"{value}/24\"")
                return _MISSING
            return ipaddress.ip_interface(value)
        return ipaddress.ip_address(value)
    except ValueError:
        what = "an IP address with prefix" if interface else "an IP address"
        problems.add(path, f"not {what}: {value!r}")
        return _MISSING


def _convert_scalar(value: Any, tp: Any, o: Opt, path: str, problems: Problems) -> Any:
    if o.kind == "duration":
        if isinstance(value, bool) or not isinstance(value, str):
            problems.add(path, f"a duration must be a string with a unit, such as \"{value}s\" or \"{value}ms\", not {_toml_type(value)}")
            return _MISSING
        try:
            result: Any = parse_duration(value)
        except ValueError as e:
            problems.add(path, str(e))
            return _MISSING
    elif o.kind == "host_port":
        if not isinstance(value, str):
            problems.add(path, f"must be a string \"HOST:PORT\", not {_toml_type(value)}")
            return _MISSING
        if value == "":
            return value
        try:
            parse_host_port(value)
        except ValueError as e:
            problems.add(path, str(e))
            return _MISSING
        result = value
    elif tp is bool:
        if not isinstance(value, bool):
            problems.add(path, f"must be true or false, not {_toml_type(value)}")
            return _MISSING
        result = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, f"must be an integer, not {_toml_type(value)}")
            return _MISSING
        result = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.add(path, f"must be a number, not {_toml_type(value)}")
            return _MISSING
        result = float(value)
    elif tp is str:
        if not isinstance(value, str):
            problems.add(path, f"must be a string, not {_toml_type(value)}")
            return _MISSING
        if o.nonempty and not value:
            problems.add(path, "must not be empty")
            return _MISSING
        if o.pattern and not re.fullmatch(o.pattern, value):
            problems.add(path, f"{value!r} is not allowed here (expected {o.pattern})")
            return _MISSING
        result = value
    elif tp is Path:
        if not isinstance(value, str) or not value:
            problems.add(path, f"must be a path as a non-empty string, not {_toml_type(value)}")
            return _MISSING
        result = Path(value)
    else:
        raise TypeError(f"unsupported type in schema at {path}: {tp}")
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        duration = o.kind == "duration"
        if o.min is not None and result < o.min:
            problems.add(path, f"must be at least {_show(o.min, duration)}, not {_show(result, duration)}")
            return _MISSING
        if o.max is not None and result > o.max:
            problems.add(path, f"must be at most {_show(o.max, duration)}, not {_show(result, duration)}")
            return _MISSING
    return result


def _show(x: float, duration: bool) -> str:
    return format_duration(x) if duration else f"{x:g}"


def _convert_tagged(value: Any, classes: list[Any], path: str, problems: Problems) -> Any:
    if not isinstance(value, dict):
        problems.add(path, f"must be a table, not {_toml_type(value)}")
        return _MISSING
    by_tag: dict[str, Any] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        (tag,) = typing.get_args(hints["type"])
        by_tag[tag] = cls
    tag = value.get("type")
    if tag not in by_tag:
        shown = "missing" if tag is None else repr(tag)
        problems.add(_join(path, "type"), f"must be one of {', '.join(map(repr, by_tag))} ({shown})")
        return _MISSING
    return load_section(by_tag[tag], value, path, problems)


def load_section(cls: Any, table: Mapping[str, Any], path: str, problems: Problems) -> Any:
    """Build ``cls`` from ``table``; record every problem under ``path``.

    Returns the sentinel ``dataclasses.MISSING`` when anything in this table
    was wrong (the problems say what).
    """
    hints = typing.get_type_hints(cls)
    fields = {toml_key(f.name): f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add(_join(path, key), f"unknown key{hint}")
    values: dict[str, Any] = {}
    ok = True
    for key, f in fields.items():
        o = field_opt(f)
        if key in table:
            v = _convert(table[key], hints[f.name], o, _join(path, key), problems)
            if v is _MISSING:
                ok = False
                continue
            values[f.name] = v
        elif f.default is _MISSING and f.default_factory is _MISSING:
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                # A sub-table whose keys all have defaults may be left out.
                v = load_section(tp, {}, _join(path, key), problems)
                if v is _MISSING:
                    ok = False
                    continue
                values[f.name] = v
            else:
                problems.add(_join(path, key), f"required key is missing ({_type_name(tp)})")
                ok = False
    if not ok:
        return _MISSING
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:  # a __post_init__ check
        problems.add(path or cls.__name__, str(e))
        return _MISSING


def parse_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9640"`` or ``"[::1]:9640"`` → (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not m:
        raise ValueError(f"not HOST:PORT: {text!r} (IPv6 as \"[::1]:9640\")")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def walk(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field[Any], Any]]:
    """Every leaf field of ``cls`` as (dotted path, field, type), for docs and tests.

    Arrays of tables appear as ``section.name[]`` followed by their fields.
    """
    out: list[tuple[str, dataclasses.Field[Any], Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = _join(prefix, toml_key(f.name))
        inner = _table_type(tp)
        if inner is not None:
            is_array = typing.get_origin(tp) is tuple
            out.append((key + ("[]" if is_array else ""), f, tp))
            for c in inner:
                out.extend(walk(c, key + ("[]" if is_array else "")))
        else:
            out.append((key, f, tp))
    return out


def _table_type(tp: Any) -> list[Any] | None:
    """The dataclass(es) a field holds as a table or array of tables, else None."""
    if typing.get_origin(tp) is tuple:
        tp = typing.get_args(tp)[0]
    if dataclasses.is_dataclass(tp):
        return [tp]
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if args and all(dataclasses.is_dataclass(a) for a in args):
            return args
    return None

