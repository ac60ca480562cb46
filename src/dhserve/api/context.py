"""What every request handler shares: the settings, the job store, and the submit path."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from flask import current_app, request

from dhserve import metrics
from dhserve.api.inputs import KINDS, check_media
from dhserve.config import ServingSettings, Settings
from dhserve.errors import InputError
from dhserve.jobs.model import Job, JobSpec, WorkerInfo
from dhserve.jobs.options import check_job
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
               refused: InputError | None = None) -> tuple[Job, bool]:
        job, created = self._submit(job_id, spec, record_refusal, refused)
        if created:     # by API: the blueprint that took the request (heygem, v1, …)
            metrics.JOBS_SUBMITTED.labels(request.blueprint or "other").inc()
        return job, created

    def _submit(self, job_id: str, spec: JobSpec, record_refusal: bool,
                refused: InputError | None) -> tuple[Job, bool]:
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
            for kind in KINDS:
                check_media(getattr(spec, kind), kind, kind, self.settings.max_input_mb)
            check_job(self.settings, spec)
        except InputError as exc:
            if not record_refusal or exc.code == "request.invalid":
                raise
            return self.store.submit(job_id, spec, failed=exc)
        return self.store.submit(job_id, spec)

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
