"""Where the shared DRBD fixtures are, and one parse function per fixture kind."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clever_cluster.daemon.drbd import errors, parse9, parse84

REPO = Path(__file__).resolve().parent.parent


def fixture_dir() -> Path:
    """``../shared/fixtures/drbd`` from the project root (CI), or from a parent (worktrees)."""
    for base in (REPO, *REPO.parents):
        p = base / "shared" / "fixtures" / "drbd"
        if p.is_dir():
            return p
    raise FileNotFoundError("shared/fixtures/drbd not found next to the project")


def jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(jsonable(v) for v in obj)
    return obj


def _events2(text: str) -> Any:
    model = parse9.Events2Model()
    events = []
    for line in text.splitlines():
        ev = parse9.parse_event(line)
        model.apply(ev)
        events.append(ev)
    return {"events": [[e.action, e.obj, e.keys] for e in events], "initial_done": model.initial_done,
            "objects": {k: {":".join(i): v for i, v in t.items()} for k, t in model.objects.items()},
            "helpers_running": sorted(f"{r}/{h}" for r, h in model.helpers_running)}


def _stderr(name: str, text: str) -> Any:
    m = re.search(r"terminated with exit code (\d+)", text)
    code = int(m.group(1)) if m else 11  # the drbdsetup sample: exit 11 per check_error (fixtures README)
    e = errors.classify(["drbdadm", "x"], code, text)
    assert isinstance(e, errors.DrbdCommandError)
    return {"class": type(e).__name__, "exit": e.exit_code, "state_code": e.state_code, "failure_code": e.failure_code,
            "kernel_info": e.kernel_info}


def parser_for(name: str) -> Callable[[str], Any] | None:
    if name.startswith("proc_drbd_"):
        return parse84.parse_proc_drbd
    if name.startswith("events2_"):
        return _events2
    if name.startswith("status_json_"):
        return parse9.parse_status_json
    if name.startswith("status_9_"):
        return parse9.parse_status_text
    if name.startswith(("get_gi_84", "show_gi_84")):
        return parse84.parse_gi84
    if name.startswith("show_gi_9"):
        return parse9.parse_gi9
    if name.endswith(".stderr.txt"):
        return lambda text: _stderr(name, text)
    return None  # kernel logs: not an interface the adapter reads


def fixtures() -> list[Path]:
    d = fixture_dir()
    return sorted(p for p in d.iterdir() if p.is_file() and p.name != "README.md" and parser_for(p.name) is not None)


def parse_fixture(path: Path) -> Any:
    fn = parser_for(path.name)
    assert fn is not None
    return json.loads(json.dumps(jsonable(fn(path.read_text()))))
