"""What every request handler shares: the settings, the job store, and the submit path."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import current_app, request
from sqlalchemy.exc import DBAPIError

from dhserve import metrics
from dhserve.api.inputs import KINDS, check_media
from dhserve.config import ServingSettings, Settings
from dhserve.errors import InputError, StorageFull
from dhserve.jobs.downloads import is_url
from dhserve.jobs.model import Job, JobSpec, WorkerInfo
from dhserve.jobs.options import check_free_space, check_job
from dhserve.jobs.store import JobStore

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
        from dhserve.serving.plan import ServingConfigError, plan_serving

        if self._serving is None:
            try:
                self._serving = plan_serving(self.settings, ServingSettings.from_env(),
                                             "split").summary()
            except (ValueError, ServingConfigError) as exc:
                self._serving = {"error": str(exc)}
        return self._serving

    def submit(self, job_id: str, spec: JobSpec, record_refusal: bool = False,
               refused: InputError | None = None,
               named: dict[str, str] | None = None) -> tuple[Job, bool]:
        """`named`: each input's local path -> the text the client gave for it, so that a
        refusal names the input as the client did, not by its place on this server."""
        job, created = self._submit(job_id, spec, record_refusal, refused, named or {})
        if created:     # by API: the blueprint that took the request (heygem, v1, …)
            metrics.JOBS_SUBMITTED.labels(request.blueprint or "other").inc()
        return job, created

    def _submit(self, job_id: str, spec: JobSpec, record_refusal: bool,
                refused: InputError | None, named: dict[str, str]) -> tuple[Job, bool]:
        """The one way a job enters the queue from HTTP; returns (job, created).

        A replay (the id exists) is answered by the store alone: the same spec is the same
        job even if its input files are gone by now. Otherwise local inputs are probed (by
        content) and the options and model files checked. A refused input (found here, or
        `refused` by the caller) raises, or with `record_refusal` becomes a job that failed
        at once, for clients that only learn outcomes by polling (HeyGem's)."""
        if self.store.exists(job_id):
            return self.store.submit(job_id, spec)
        try:
            if refused is not None:
                raise refused
            check_free_space(self.settings)
            check_job(self.settings, spec)          # cheap, before any input is opened
            for kind in KINDS:
                try:
                    check_media(getattr(spec, kind), kind, kind, self.settings.max_input_mb,
                                self.settings.max_video_pixels)
                except InputError as exc:
                    raise self.public_error(exc, named) from None
        except (InputError, StorageFull) as exc:
            if not record_refusal or exc.code == "request.invalid":
                raise
            if isinstance(exc, StorageFull):    # the job store may share the full disk
                try:
                    return self.store.submit(job_id, spec, failed=exc)
                except DBAPIError:
                    raise exc from None
            return self.store.submit(job_id, spec, failed=exc)
        return self.store.submit(job_id, spec)

    def public_error(self, exc: InputError, named: dict[str, str] | None = None) -> InputError:
        """`exc` with no path of this server in it: the inputs as the client named them,
        other files relative to the data dir."""
        reason = public_text(exc.reason, self.settings, named)
        return exc if reason == exc.reason else InputError(exc.code, exc.field, reason)

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


def data_roots(settings: Settings) -> list[str]:
    """The data dir's absolute spellings (as configured, and with symlinks resolved)."""
    roots = {os.path.abspath(settings.data_dir), os.path.realpath(settings.data_dir)}
    return sorted((r for r in roots if r != os.sep), key=len, reverse=True)


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


def public_text(text: str, settings: Settings, named: dict[str, str] | None = None) -> str:
    """A message with the paths of this server taken out: the inputs' local paths become
    the names the client gave (`named`), the data dir's prefix goes (relative paths)."""
    for local, given in sorted((named or {}).items(), key=lambda kv: -len(kv[0])):
        if local and local != given:
            text = text.replace(local, given)
    for root in data_roots(settings):
        text = text.replace(root + os.sep, "").replace(root, "<data dir>")
    return text


def parse_json(text: str | bytes, field: str) -> Any:
    """JSON a client sent, or InputError request.invalid naming `field`: not UTF-8, not JSON
    (NaN and Infinity are not JSON either), or nested too deeply to read."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError("request.invalid", field,
                             f"is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InputError("request.invalid", field, "JSON is nested too deeply") from None
    except ValueError as exc:
        raise InputError("request.invalid", field, f"is not JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def json_body() -> Any:
    """The request's body read as JSON whatever its Content-Type (an empty body is None)."""
    data = request.get_data(cache=True)
    return parse_json(data, "body") if data.strip() else None


def check_job_id(value: str, field: str) -> str:
    if not JOB_ID.fullmatch(value):
        raise InputError("request.invalid", field,
                         "must be 1-128 letters, digits, '.', '_' or '-', starting with a "
                         f"letter or digit; got {value[:40]!r}")
    return value


def iso_time(epoch: float | None) -> str | None:
    """An epoch time (the store's clock) as ISO 8601 UTC."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")
