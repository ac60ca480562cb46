"""The doctor's report: one line per check for people, a stable JSON document for programs,
and the exit status (0 all ok, 1 warnings, 2 errors)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass
from typing import Any

from dhserve import __version__
from dhserve.doctor.base import ERROR, OK, SEVERITY, WARNING, Check

SCHEMA_VERSION = 1          # raised only when a field changes meaning or goes away
INDENT = " " * 9
WIDTH = 100


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def status(self) -> str:
        """The worst status of any check (ok when there is none)."""
        return max((c.status for c in self.checks), key=SEVERITY.__getitem__, default=OK)

    @property
    def exit_code(self) -> int:
        return SEVERITY[self.status]

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, WARNING, ERROR)}

    def to_json(self) -> dict[str, Any]:
        """The documented schema (README, "Doctor"); version 1."""
        return {"version": SCHEMA_VERSION, "dhserve": __version__, "status": self.status,
                "exit_code": self.exit_code, "counts": self.counts(),
                "checks": [asdict(c) for c in self.checks]}

    def json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str)

    def text(self, fix_hints: bool = False) -> str:
        """`ok|warning|error  group/name: detail`, a remedy under each warning and error, and
        with `fix_hints` the commands to run; a count at the end."""
        lines = []
        for check in self.checks:
            lines.append(f"{check.status:<7}  {check.group}/{check.name}: {check.detail}")
            if check.status == OK:
                continue
            if check.remedy:
                lines.extend(textwrap.wrap(f"remedy: {check.remedy}", WIDTH,
                                           initial_indent=INDENT, subsequent_indent=INDENT + "  ",
                                           break_on_hyphens=False))
            if fix_hints and check.fix_hint:
                hint = check.fix_hint.splitlines()
                lines.append(f"{INDENT}fix:    {hint[0]}")
                lines.extend(f"{INDENT}        {line}" for line in hint[1:])
        counts = self.counts()
        lines.append(f"-- {counts[OK]} ok, {counts[WARNING]} warning(s), {counts[ERROR]} "
                     f"error(s): exit status {self.exit_code}"
                     + ("" if fix_hints or self.exit_code == 0 else
                        " (--fix-hints shows the commands)"))
        return "\n".join(lines)
