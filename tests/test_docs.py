"""The README describes the tree that is there: every module of the package is in its Layout
section, every file named there exists, and every error code the service can answer is in
its table of codes with the HTTP status the code answers."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import dhserve
from dhserve.errors import error_classes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "dhserve"


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_module_is_in_the_layout_and_every_listed_file_exists():
    layout = _section("Layout")
    named = set(re.findall(r"([A-Za-z_][\w.]*\.(?:py|sh|md))\b", layout))
    modules = {p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    missing = sorted(str(p.relative_to(PACKAGE)) for p in modules
                     if p.name not in named and p.name != "__init__.py")
    assert not missing, f"modules not in README's Layout: {missing}"
    existing = {p.name for p in ROOT.rglob("*") if ".venv" not in p.parts and p.is_file()}
    gone = sorted(n for n in named if n.split("/")[-1] not in existing)
    assert not gone, f"README's Layout names files that do not exist: {gone}"


def test_every_error_code_is_in_the_readme_with_its_status():
    for module in pkgutil.walk_packages(dhserve.__path__, "dhserve."):
        if ".migrations" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)     # error classes live beside their code
    table = _section("Error codes")
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| (\d{3}) \|", table, re.MULTILINE))
    for cls in error_classes():
        if "." not in cls.code:
            continue                                 # the base classes' placeholders
        assert rows.get(cls.code) == str(cls.http_status), \
            f"{cls.code} ({cls.__name__}) answers {cls.http_status}; README says {rows.get(cls.code)}"
    codes = {cls.code for cls in error_classes()}
    assert not set(rows) - codes, f"README lists codes no class declares: {set(rows) - codes}"
