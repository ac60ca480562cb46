"""What every request handler shares: the settings, the job store, and the reading of
requests (JSON bodies, job ids) and writing of answers (times, paths a client may see).
A submit's checks are dhserve.jobs.admission's."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import current_app, request

from dhserve.config import ServingSettings, Settings
from dhserve.errors import RequestInvalid
from dhserve.jobs.admission import data_roots
from dhserve.jobs.downloads import is_url
from dhserve.jobs.model import WorkerInfo
from dhserve.jobs.store import JobStore
from dhserve.serving.plan import ServingConfigError, plan_serving

EXTENSION = "dhserve"
# A job id is a file name too (HeyGem's <code>-r.mp4), so it is kept to safe characters.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class ApiContext:
    settings: Settings
    store: JobStore
    _serving: dict[str, Any] | None = field(default=None, repr=False)

    def serving(self) -> dict[str, Any]:
        """How the service runs (layout, GPU profile, limits) as this process's plan has it;
        the launcher and Gunicorn's post_fork put the plan in the environment."""
        if self._serving is None:
            try:
                self._serving = plan_serving(self.settings, ServingSettings.from_env(),
                                             "split").summary()
            except (ValueError, ServingConfigError) as exc:
                self._serving = {"error": str(exc)}
        return self._serving

    def workers(self) -> tuple[float, list[tuple[WorkerInfo, bool]]]:
        """(database time now, [(worker, alive)]): alive = heartbeated recently."""
        now = self.store.now()
        return now, [(w, not w.silent(now, self.settings.heartbeat_seconds))
                     for w in self.store.workers()]

    def ready_workers(self) -> list[WorkerInfo]:
        """Render workers with their models loaded that heartbeated recently."""
        _, workers = self.workers()
        return [w for w, alive in workers if alive and w.ready and w.state != "stopping"]


def context() -> ApiContext:
    return current_app.extensions[EXTENSION]


def public_path(path: str | None, settings: Settings, named_outside: bool = False
                ) -> str | None:
    """A file of this server as a client may see it: relative to the data dir; outside it,
    the file's name only, or with `named_outside` (an input, which a client can only have
    named by its absolute path there: DHSERVE_INPUT_ROOTS) as it is. URLs and None as they
    are."""
    if not path or is_url(path) or not os.path.isabs(path):
        return path
    for root in data_roots(settings):
        if Path(path).is_relative_to(root):
            return Path(path).relative_to(root).as_posix()
    return path if named_outside else Path(path).name


def parse_json(text: str | bytes, field: str) -> Any:
    """JSON a client sent, or InputError request.invalid naming `field`: not UTF-8, not JSON
    (NaN and Infinity are not JSON either), or nested too deeply to read."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RequestInvalid(field,
                                 f"is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise RequestInvalid(field, "JSON is nested too deeply") from None
    except ValueError as exc:
        raise RequestInvalid(field, f"is not JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def json_body() -> Any:
    """The request's body read as JSON whatever its Content-Type (an empty body is None)."""
    data = request.get_data(cache=True)
    return parse_json(data, "body") if data.strip() else None


def check_job_id(value: str, field: str) -> str:
    if not JOB_ID.fullmatch(value):
        raise RequestInvalid(field,
                             "must be 1-128 letters, digits, '.', '_' or '-', starting with a "
                             f"letter or digit; got {value[:40]!r}")
    return value


def iso_time(epoch: float | None) -> str | None:
    """An epoch time (the store's clock) as ISO 8601 UTC."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")
