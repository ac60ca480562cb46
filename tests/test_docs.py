"""The docs describe the tree that is there: every module of the package is in the
architecture's Layout, every file named there exists, every error code the service can answer
is in the table of codes with its HTTP status, every setting config.py reads is in the
configuration table, and the two READMEs show the same commands and settings."""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import fields
from pathlib import Path

import dhserve
from dhserve.config import ClientSettings, ServingSettings, Settings, _env_name
from dhserve.errors import error_classes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "dhserve"


def _section(title: str, doc: str) -> str:
    text = (ROOT / "docs" / doc).read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_module_is_in_the_layout_and_every_listed_file_exists():
    layout = _section("Layout", "architecture.md")
    named = set(re.findall(r"([A-Za-z_][\w.]*\.(?:py|sh|md))\b", layout))
    modules = {p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    missing = sorted(str(p.relative_to(PACKAGE)) for p in modules
                     if p.name not in named and p.name != "__init__.py")
    assert not missing, f"modules not in docs/architecture.md's Layout: {missing}"
    existing = {p.name for p in ROOT.rglob("*") if ".venv" not in p.parts and p.is_file()}
    gone = sorted(n for n in named if n.split("/")[-1] not in existing)
    assert not gone, f"docs/architecture.md's Layout names files that do not exist: {gone}"


def test_every_error_code_is_in_the_readme_with_its_status():
    for module in pkgutil.walk_packages(dhserve.__path__, "dhserve."):
        if ".migrations" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)     # error classes live beside their code
    table = _section("Error codes", "http-api.md")
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| (\d{3}) \|", table, re.MULTILINE))
    for cls in error_classes():
        if "." not in cls.code:
            continue                                 # the base classes' placeholders
        assert rows.get(cls.code) == str(cls.http_status), \
            f"{cls.code} ({cls.__name__}) answers {cls.http_status}; docs/http-api.md says {rows.get(cls.code)}"
    codes = {cls.code for cls in error_classes()}
    assert not set(rows) - codes, f"docs/http-api.md lists codes no class declares: {set(rows) - codes}"


def test_every_setting_config_reads_is_in_the_configuration_table():
    table = (ROOT / "docs" / "configuration.md").read_text()
    listed = set(re.findall(r"^\| `([A-Z0-9_]+)`", table, re.MULTILINE))
    listed |= set(re.findall(r"`((?:DHSERVE|GUNICORN)_[A-Z0-9_]+)`", table))
    names = {_env_name(f) for cls in (Settings, ServingSettings, ClientSettings)
             for f in fields(cls)}
    names.discard("CUDA_VISIBLE_DEVICES")            # the operator's, shown by the doctor
    missing = sorted(names - listed)
    assert not missing, f"settings read by config.py but not in docs/configuration.md: {missing}"


def test_the_two_readmes_show_the_same_commands_and_settings():
    def shown(name: str) -> tuple[set[str], set[str]]:
        text = (ROOT / name).read_text()
        blocks = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.DOTALL))
        commands = {line.split("#")[0].strip() for line in blocks.splitlines()}
        settings = set(re.findall(r"\b(?:DHSERVE|GUNICORN)_[A-Z0-9_]+\b", text))
        return commands - {""}, settings
    english, chinese = shown("README.md"), shown("README.zh-CN.md")
    assert english[0] == chinese[0], english[0] ^ chinese[0]
    assert english[1] == chinese[1], english[1] ^ chinese[1]
    assert "README.zh-CN.md" in (ROOT / "README.md").read_text()
    assert "README.md" in (ROOT / "README.zh-CN.md").read_text()


def test_the_deployment_guides_name_real_doctor_checks_and_agree():
    from dhserve.doctor import CHECK_GROUPS

    def named(name: str) -> tuple[set[str], set[str]]:
        text = (ROOT / name).read_text()
        checks = {c for c in re.findall(r"`([a-z]+/[A-Za-z_]+)`", text)
                  if c.split("/")[0] in CHECK_GROUPS}
        settings = set(re.findall(r"\b(?:DHSERVE|GUNICORN)_[A-Z0-9_]+\b", text))
        return checks, settings
    english, chinese = named("AI_MODEL_DEPLOYMENT.md"), named("AI_MODEL_DEPLOYMENT.zh-CN.md")
    assert english == chinese, (english[0] ^ chinese[0], english[1] ^ chinese[1])
    for check in english[0]:
        group, name = check.split("/")
        module = CHECK_GROUPS[group].split(":")[0]
        source = (ROOT / "src" / (module.replace(".", "/") + ".py")).read_text()
        # the models group names its checks by model kind; the settings' lines are the runner's
        shared = "".join((PACKAGE / f).read_text() for f in ("runtime/models.py",
                                                            "doctor/__init__.py"))
        assert f'"{name}"' in source + shared, f"{check} is not a check of the {group} group"
