"""The durable job queue: one SQL table, claimed with leases, on SQLite or PostgreSQL.

Every time comes from the database's clock, so workers on several machines agree on when a
lease expired. Writes on SQLite start with BEGIN IMMEDIATE: a transaction that reads and then
writes can otherwise fail with "database is locked" without waiting for the busy timeout.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dhserve.config import Settings
from dhserve.errors import (
    Canceled,
    DhserveError,
    JobConflict,
    JobFinished,
    JobNotFound,
    QueueFull,
    StorageFull,
    StoreUnreachable,
    WorkerLost,
    first_line,
)
from dhserve.jobs import migrate
from dhserve.jobs.database import create_engine
from dhserve.jobs.model import (
    FINISHED,
    Job,
    JobSpec,
    JobState,
    WorkerInfo,
)
from dhserve.jobs.schema import jobs, workers
from dhserve.stages import Stage

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "dhserve_jobs"
# How every canceled job reads, whichever path canceled it.
CANCELED = {"state": JobState.CANCELED.value, "stage": JobState.CANCELED.value,
            "error_code": Canceled.code, "error_message": "canceled on request"}
# Failures that a resubmit of the same job retries: they pass (space freed), unlike the input
RETRYABLE = (StorageFull.code,)
SUBMIT_LOCK = 0x64687366     # PostgreSQL advisory lock that keeps the queue bound exact
REFUSAL_WINDOW_S = 3600.0    # jobs refused on arrival: at most max_queued per hour
FORGET_WORKER_LEASES = 10    # a worker row silent this many lease periods, holding no running
                             # job, is deleted by the reaper (it crashed; its jobs are requeued)


@dataclass(frozen=True)
class Lease:
    """What a worker learns when it renews its lease or reports progress."""

    held: bool                  # False: the job is no longer this worker's (reaped, finished)
    cancel_requested: bool = False


def _ignore(state: str, n: int) -> None:
    """The default on_finished: nobody counts."""


class JobStore:
    """Submit, claim, report and finish jobs; shared by the web tier and the render workers.

    The store records outcomes, it does not count them: each time jobs reach a final state it
    calls `on_finished(state, n)`, which the process that owns the store sets (the render
    worker and the API count them in the metrics)."""

    def __init__(self, url: str, *, lease_seconds: float = 60.0, max_attempts: int = 3,
                 max_queued: int = 1000, upgrade: bool = True,
                 on_finished: Callable[[str, int], None] = _ignore):
        self.url = url
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.max_queued = max_queued
        self.on_finished = on_finished
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        if upgrade:
            try:
                with self._write() as conn:
                    migrate.upgrade(conn)
            except sa.exc.OperationalError as exc:
                self.engine.dispose()
                shown = self.engine.url.render_as_string(hide_password=True)
                raise StoreUnreachable(f"cannot open the job store {shown}: "
                                       f"{first_line(exc.orig)}") from None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> JobStore:
        if not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        values = {"lease_seconds": settings.lease_seconds, "max_attempts": settings.max_attempts,
                  "max_queued": settings.max_queued, **overrides}
        return cls(settings.database, **values)

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(dhserve_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _now(self) -> sa.ColumnElement[float]:
        """The database's clock in epoch seconds."""
        if self.dialect == "postgresql":
            return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float(53))
        return (sa.func.julianday("now") - 2440587.5) * 86400.0

    def now(self) -> float:
        with self._read() as conn:
            return float(conn.execute(sa.select(self._now())).scalar_one())

    def overview(self) -> tuple[float, dict[JobState, int], list[WorkerInfo]]:
        """The store's clock, the jobs by state and the workers, read in one transaction (a
        scrape or `dhserve top` sees one moment, and takes one connection)."""
        with self._read() as conn:
            now = float(conn.execute(sa.select(self._now())).scalar_one())
            return now, self._counts(conn), self._workers(conn)

    def _notify(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.execute(sa.text(f"NOTIFY {NOTIFY_CHANNEL}"))

    # -- the client's side -----------------------------------------------------------

    def submit(self, job_id: str, spec: JobSpec,
               failed: DhserveError | None = None) -> tuple[Job, bool]:
        """Queues a job; returns (job, created). The same id with the same spec returns the
        existing job (a retried request); with another spec it is a conflict. `failed`
        records the job as failed at once with that error (inputs refused on arrival, for
        clients that learn outcomes by polling); it takes no room in the queue. A resubmit
        of a job that failed for a RETRYABLE reason (storage.full) queues it again, as new:
        returns (job, True). A queued job is claimed by a render worker (jobs/worker.py),
        which runs engine/pipeline.render."""
        payload = _normalised(spec.payload())
        outcome: dict[str, Any] = {"state": JobState.QUEUED.value, "stage": Stage.QUEUED.value}
        if failed is not None:
            outcome = {"state": JobState.FAILED.value, "stage": Stage.FAILED.value,
                       "error_code": failed.code, "error_message": failed.message,
                       "finished_at": self._now()}
        try:
            created = None
            with self._write() as conn:
                if self.dialect == "postgresql":    # count-then-insert must not interleave
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": SUBMIT_LOCK})
                # refusals are bounded like the queue: those of the last hour count
                waiting = jobs.c.state == JobState.QUEUED.value if failed is None else \
                    sa.and_(jobs.c.state == JobState.FAILED.value, jobs.c.attempts == 0,
                            jobs.c.created_at > self._now() - REFUSAL_WINDOW_S)
                depth = conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                     .where(waiting)).scalar_one()
                if depth < self.max_queued:
                    seq = conn.execute(sa.select(sa.func.coalesce(
                        sa.func.max(jobs.c.seq), 0) + 1)).scalar_one()
                    created = _job(conn.execute(jobs.insert().values(
                        id=job_id, seq=seq, priority=spec.priority, progress=0, spec=payload,
                        attempts=0, created_at=self._now(), cancel_requested=False, **outcome)
                        .returning(*jobs.c)).one())
                    if failed is None:
                        self._notify(conn)
            if created is not None:
                if failed is not None:
                    self.on_finished(JobState.FAILED.value, 1)
                return created, True
        except sa.exc.IntegrityError:
            pass                # the id exists: a retried request, or a conflict
        existing = self._find(job_id)
        if existing is None:
            # (refusals: too many in the last hour)
            raise self._queue_full()
        if _normalised(existing.spec.payload()) != payload:
            raise JobConflict(f"job {job_id!r} exists with different inputs or options")
        if failed is None and existing.state is JobState.FAILED \
                and existing.error_code in RETRYABLE:
            requeued = self._requeue_failed(job_id)
            if requeued is not None:
                return requeued, True
        return existing, False

    def _queue_full(self) -> QueueFull:
        return QueueFull(f"busy: {self.max_queued} jobs are already waiting; retry later")

    def _requeue_failed(self, job_id: str) -> Job | None:
        """Queues a job that failed for a passing reason again, as new (its attempts
        reset); None when it changed meanwhile (another resubmit won) or the queue is full."""
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": SUBMIT_LOCK})
            depth = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                jobs.c.state == JobState.QUEUED.value)).scalar_one()
            if depth >= self.max_queued:
                raise self._queue_full()
            row = conn.execute(jobs.update().where(
                jobs.c.id == job_id, jobs.c.state == JobState.FAILED.value,
                jobs.c.error_code.in_(RETRYABLE)).values(
                state=JobState.QUEUED.value, stage=Stage.QUEUED.value, progress=0, attempts=0,
                error_code=None, error_message=None, result=None, result_info=None,
                started_at=None, finished_at=None, worker_id=None, lease_expires_at=None,
                cancel_requested=False).returning(*jobs.c)).first()
            if row is not None:
                self._notify(conn)
        if row is not None:
            log.info("job %s: queued again (it had failed: out of storage space)", job_id)
        return _job(row) if row is not None else None

    def get(self, job_id: str) -> Job:
        job = self._find(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    def exists(self, job_id: str) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id)).first() \
                is not None

    def _find(self, job_id: str) -> Job | None:
        with self._read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def list(self, state: JobState | None = None, limit: int = 50) -> list[Job]:
        """Most recent first."""
        query = sa.select(jobs).order_by(jobs.c.seq.desc()).limit(limit)
        if state is not None:
            query = query.where(jobs.c.state == JobState(state).value)
        with self._read() as conn:
            return [_job(row) for row in conn.execute(query)]

    def counts(self) -> dict[JobState, int]:
        with self._read() as conn:
            return self._counts(conn)

    @staticmethod
    def _counts(conn: Connection) -> dict[JobState, int]:
        rows = conn.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state))
        found = {JobState(state): n for state, n in rows}
        return {state: found.get(state, 0) for state in JobState}

    def queue_depth(self) -> int:
        return self.counts()[JobState.QUEUED]

    def cancel(self, job_id: str) -> Job:
        """A queued job is canceled at once; a running one stops at its next batch."""
        with self._write() as conn:
            row = conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)
                               .with_for_update()).first()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            state = JobState(row.state)
            if state is JobState.QUEUED:
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                    **CANCELED, cancel_requested=True,
                    finished_at=self._now()))
            elif state is JobState.RUNNING:
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                    cancel_requested=True, stage=Stage.CANCELING.value))
        job = self.get(job_id)
        if state.finished:
            raise JobFinished(f"job {job.id!r} already finished ({job.state.value})")
        if state is JobState.QUEUED:
            self.on_finished(JobState.CANCELED.value, 1)
        return job

    # -- the worker's side -------------------------------------------------------------

    def has_queued(self) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(jobs.c.id).where(
                jobs.c.state == JobState.QUEUED.value).limit(1)).first() is not None

    def claim(self, worker_id: str) -> Job | None:
        """Takes the next queued job (highest priority, then oldest) with a fresh lease."""
        with self._write() as conn:
            row = conn.execute(
                sa.select(jobs.c.id).where(jobs.c.state == JobState.QUEUED.value)
                .order_by(jobs.c.priority.desc(), jobs.c.seq).limit(1)
                .with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            conn.execute(jobs.update().where(jobs.c.id == row.id).values(
                state=JobState.RUNNING.value, worker_id=worker_id,
                attempts=jobs.c.attempts + 1, started_at=self._now(),
                lease_expires_at=self._now() + self.lease_seconds, progress=0,
                stage=Stage.STARTING.value, error_code=None, error_message=None))
            job = _job(conn.execute(sa.select(jobs).where(jobs.c.id == row.id)).one())
        return job

    def _mine(self, job_id: str, worker_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(jobs.c.id == job_id, jobs.c.worker_id == worker_id,
                       jobs.c.state == JobState.RUNNING.value)

    def renew(self, job_id: str, worker_id: str, progress: int | None = None,
              stage: str | None = None, fps: float | None = None) -> Lease:
        """Extends the lease (and records progress, and the worker's frames per second: the
        only place it is written while a job runs; None clears it, as after lip-sync); says
        whether the job is still ours and whether someone asked to cancel it."""
        values: dict[str, Any] = {"lease_expires_at": self._now() + self.lease_seconds}
        if progress is not None:
            values["progress"] = max(0, min(int(progress), 100))
        if stage is not None:
            values["stage"] = stage[:64]
        with self._write() as conn:
            updated = conn.execute(jobs.update().where(self._mine(job_id, worker_id))
                                   .values(**values).returning(jobs.c.cancel_requested)).first()
            if updated is not None:
                conn.execute(workers.update().where(workers.c.id == worker_id)
                             .values(fps=None if fps is None else round(fps, 2)))
        return Lease(False) if updated is None else Lease(True, bool(updated.cancel_requested))

    def succeed(self, job_id: str, worker_id: str, result: str,
                info: dict[str, Any] | None = None) -> bool:
        return self._finish(job_id, worker_id, state=JobState.SUCCEEDED.value, progress=100,
                            stage=Stage.DONE.value, result=result, result_info=info or {})

    def fail(self, job_id: str, worker_id: str, code: str, message: str) -> bool:
        return self._finish(job_id, worker_id, state=JobState.FAILED.value,
                            stage=Stage.FAILED.value, error_code=code, error_message=message)

    def mark_canceled(self, job_id: str, worker_id: str) -> bool:
        return self._finish(job_id, worker_id, **CANCELED)

    def _finish(self, job_id: str, worker_id: str, **values: Any) -> bool:
        """Records the outcome, only while the lease is still this worker's."""
        with self._write() as conn:
            done = conn.execute(jobs.update().where(self._mine(job_id, worker_id)).values(
                finished_at=self._now(), lease_expires_at=None, **values)).rowcount
        if done == 1:
            self.on_finished(values["state"], 1)
        return done == 1

    def release(self, job_id: str, worker_id: str) -> bool:
        """Hands a job back (the worker is stopping): queued again at once, and the
        interrupted attempt does not count against the retry limit."""
        with self._write() as conn:
            mine = self._mine(job_id, worker_id)
            canceled = conn.execute(jobs.update().where(mine, jobs.c.cancel_requested).values(
                **CANCELED, finished_at=self._now(),
                lease_expires_at=None)).rowcount
            done = conn.execute(jobs.update().where(mine).values(
                state=JobState.QUEUED.value, worker_id=None, lease_expires_at=None,
                attempts=sa.func.max(jobs.c.attempts - 1, 0) if self.dialect == "sqlite"
                else sa.func.greatest(jobs.c.attempts - 1, 0),
                progress=0, stage=Stage.REQUEUED_STOPPED.value)).rowcount
            self._notify(conn)
        if canceled:
            self.on_finished(JobState.CANCELED.value, canceled)
        return canceled + done == 1

    def reap(self) -> int:
        """Jobs whose lease expired: canceled if that was asked, requeued while attempts
        remain, else failed as "worker lost"; and workers silent for FORGET_WORKER_LEASES
        leases that hold no running job are deleted. Returns how many job rows changed."""
        with self._write() as conn:
            # one instant for all three statements, so no job slips between their conditions
            now = conn.execute(sa.select(self._now())).scalar_one()
            expired = sa.and_(jobs.c.state == JobState.RUNNING.value,
                              jobs.c.lease_expires_at < now)
            canceled = conn.execute(jobs.update().where(expired, jobs.c.cancel_requested)
                                    .values(**CANCELED, finished_at=self._now(),
                                            lease_expires_at=None)).rowcount
            lost = conn.execute(jobs.update().where(
                expired, jobs.c.attempts >= self.max_attempts).values(
                state=JobState.FAILED.value, stage=Stage.FAILED.value, finished_at=self._now(),
                lease_expires_at=None, error_code=WorkerLost.code,
                error_message=f"the render worker stopped answering; gave up after "
                              f"{self.max_attempts} attempts")).rowcount
            changed = canceled + lost
            requeued = conn.execute(jobs.update().where(
                expired, ~jobs.c.cancel_requested,
                jobs.c.attempts < self.max_attempts).values(
                state=JobState.QUEUED.value, worker_id=None, lease_expires_at=None,
                progress=0, stage=Stage.REQUEUED_LOST.value)).rowcount
            if requeued:
                self._notify(conn)
            # crashed workers: their rows (and /metrics series, alerts) go once long silent
            running_one = sa.exists().where(jobs.c.worker_id == workers.c.id,
                                            jobs.c.state == JobState.RUNNING.value)
            forgotten = conn.execute(workers.delete().where(
                workers.c.heartbeat_at < now - FORGET_WORKER_LEASES * self.lease_seconds,
                ~running_one)).rowcount
        if forgotten:
            log.info("forgot %d render worker(s) silent for over %.0f s", forgotten,
                     FORGET_WORKER_LEASES * self.lease_seconds)
        for state, n in ((JobState.CANCELED, canceled), (JobState.FAILED, lost)):
            if n:
                self.on_finished(state.value, n)
        if changed + requeued:
            log.warning("lease expired: %d job(s) requeued, %d finished", requeued, changed)
        return changed + requeued

    def prune(self, retention_seconds: float) -> builtins.list[Job]:
        """Deletes finished jobs older than the retention; returns them so the caller can
        remove their files. Also forgets workers silent for as long."""
        old = sa.and_(jobs.c.state.in_([s.value for s in FINISHED]),
                      jobs.c.finished_at < self._now() - retention_seconds)
        with self._write() as conn:
            gone = [_job(row) for row in conn.execute(sa.select(jobs).where(old))]
            if gone:
                conn.execute(jobs.delete().where(jobs.c.id.in_([job.id for job in gone])))
            conn.execute(workers.delete().where(
                workers.c.heartbeat_at < self._now() - retention_seconds))
        return gone

    # -- render workers ----------------------------------------------------------------

    def register_worker(self, worker_id: str, host: str, pid: int, device: str) -> None:
        with self._write() as conn:
            conn.execute(workers.delete().where(workers.c.id == worker_id))
            conn.execute(workers.insert().values(
                id=worker_id, host=host, pid=pid, device=device, backend="", state="starting",
                job_id=None, ready=False, started_at=self._now(), heartbeat_at=self._now()))

    def worker_heartbeat(self, worker_id: str, state: str, job_id: str | None = None,
                         ready: bool | None = None, backend: str | None = None) -> None:
        """Records that the worker lives and what it does. Without a job its frames per
        second are cleared; with one, renew() keeps them."""
        values: dict[str, Any] = {"state": state, "job_id": job_id,
                                  "heartbeat_at": self._now()}
        if job_id is None:
            values["fps"] = None
        if ready is not None:
            values["ready"] = ready
        if backend is not None:
            values["backend"] = backend
        with self._write() as conn:
            conn.execute(workers.update().where(workers.c.id == worker_id).values(**values))

    def remove_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(workers.delete().where(workers.c.id == worker_id))

    def workers(self) -> builtins.list[WorkerInfo]:
        with self._read() as conn:
            return self._workers(conn)

    @staticmethod
    def _workers(conn: Connection) -> builtins.list[WorkerInfo]:
        rows = conn.execute(sa.select(workers).order_by(workers.c.started_at))
        return [WorkerInfo(**row._mapping) for row in rows]


def _normalised(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as the database gives it back, so a resubmit compares equal."""
    return json.loads(json.dumps(payload, sort_keys=True))


def _job(row: sa.Row) -> Job:
    m = row._mapping
    spec = m["spec"]
    return Job(
        id=m["id"], state=JobState(m["state"]),
        spec=JobSpec(video=spec["video"], audio=spec["audio"], output=spec.get("output"),
                     options=spec.get("options") or {}, priority=spec.get("priority", 0),
                     background=spec.get("background")),
        progress=m["progress"], stage=m["stage"], result=m["result"],
        result_info=m["result_info"] or {}, error_code=m["error_code"],
        error_message=m["error_message"], attempts=m["attempts"], created_at=m["created_at"],
        started_at=m["started_at"], finished_at=m["finished_at"], worker_id=m["worker_id"],
        lease_expires_at=m["lease_expires_at"], cancel_requested=bool(m["cancel_requested"]))
