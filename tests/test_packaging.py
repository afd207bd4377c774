"""pyproject maps every package folder to its namespaced import name."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"daemon": "clever_cluster.daemon", "policy": "clever_cluster.policy",
           "fencing": "clever_cluster.fencing", "sim": "clever_cluster.sim"}


def test_every_package_folder_is_listed() -> None:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for folder, name in FOLDERS.items():
        assert tool["package-dir"][name] == folder
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            dotted = ".".join([name, *rel.parts])
            assert dotted in listed, f"{init.parent} is a package but {dotted} is missing from [tool.setuptools] packages"


def test_packages_import_from_their_folders() -> None:
    for folder, name in FOLDERS.items():
        mod = importlib.import_module(name)
        assert Path(mod.__file__ or "").parent == REPO / folder
