"""Import boundaries of DESIGN section 2, checked on the source text.

policy/ is pure: standard library only, and none of the modules that bring
I/O, clocks, concurrency, logging or randomness. The import direction is
daemon -> fencing -> policy and sim -> (anything); never the other way.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_POLICY = {"asyncio", "socket", "subprocess", "time", "random", "logging", "os", "threading",
                       "multiprocessing", "selectors", "signal", "secrets", "io", "pathlib", "shutil", "tempfile",
                       "datetime", "uuid", "concurrent", "urllib", "http", "ssl", "select", "ctypes", "sys"}
PACKAGES = ("daemon", "policy", "fencing", "sim")
# Which project packages each package may import.
ALLOWED = {
    "policy": set(),
    "fencing": {"policy"},
    "daemon": {"fencing", "policy"},
    "sim": {"daemon", "fencing", "policy"},
}


def _imports(path: Path, root: Path = REPO) -> list[tuple[str, int]]:
    """Absolute module names imported by ``path``, relative imports resolved."""
    pkg_parts = ["clever_cluster", *path.relative_to(root).with_suffix("").parts[:-1]]
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
    return out


def _project_package(mod: str) -> str | None:
    parts = mod.split(".")
    if parts[0] == "clever_cluster" and len(parts) > 1:
        return parts[1]
    return None


def _files(pkg: str) -> list[Path]:
    return sorted((REPO / pkg).rglob("*.py"))


def check_pure(path: Path, root: Path = REPO) -> None:
    for mod, line in _imports(path, root):
        top = mod.split(".")[0]
        if _project_package(mod) == "policy":
            continue
        assert top in sys.stdlib_module_names, f"{path.name}:{line} imports {mod}, which is not in the standard library"
        assert top not in FORBIDDEN_IN_POLICY, f"{path.name}:{line} imports {mod}: policy/ must stay free of I/O, clocks, logging and randomness"


def check_direction(pkg: str, root: Path = REPO) -> None:
    for path in sorted((root / pkg).rglob("*.py")):
        for mod, line in _imports(path, root):
            target = _project_package(mod)
            if target is None or target == pkg:
                continue
            assert target in ALLOWED[pkg], f"{path.relative_to(root)}:{line} imports {mod}: {pkg} may not import {target}"


@pytest.mark.parametrize("path", _files("policy"), ids=lambda p: str(p.relative_to(REPO)))
def test_policy_is_pure(path: Path) -> None:
    check_pure(path)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_import_direction(pkg: str) -> None:
    check_direction(pkg)


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself flags a forbidden import (so the tests above can fail)."""
    (tmp_path / "policy").mkdir()
    bad = tmp_path / "policy" / "probe.py"
    bad.write_text("import time\nfrom ..daemon import config\n")
    mods = [m for m, _ in _imports(bad, tmp_path)]
    assert mods == ["time", "clever_cluster.daemon"]
    with pytest.raises(AssertionError, match="policy/ must stay free"):
        check_pure(bad, tmp_path)
    with pytest.raises(AssertionError, match="policy may not import daemon"):
        check_direction("policy", tmp_path)
    bad.write_text("import yaml\n")
    with pytest.raises(AssertionError, match="not in the standard library"):
        check_pure(bad, tmp_path)
