"""The storage group: the data dir is writable, the job store's database answers with a
schema this dhserve knows, and the queue and its render workers as the store records them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dhserve.config import Settings
from dhserve.doctor.base import ERROR, OK, WARNING, Check, Facts, guarded
from dhserve.errors import first_line
from dhserve.fsutil import unwritable_reason
from dhserve.jobs import JobStore, migrate
from dhserve.jobs.database import create_engine
from dhserve.jobs.model import HEARTBEAT_STALE_FACTOR, JobState, WorkerInfo


def storage_checks(facts: Facts) -> list[Check]:
    settings = facts.settings
    checks = guarded("storage", lambda: [_data_dir(settings.data_dir)], "data dir")
    checks.extend(guarded("storage", lambda: _database(settings), "database"))
    return checks


def _data_dir(data_dir: Path) -> Check:
    where = data_dir.absolute()
    data = {"path": str(where)}
    created = not where.exists()
    exc = unwritable_reason(where)          # what `dhserve serve` does first
    if exc is not None:
        return Check("storage", "data dir", ERROR,
                     f"{where}: not writable ({type(exc).__name__}: {exc.strerror or exc})",
                     "dhserve writes uploads, results, the template cache, the SQLite store and "
                     "its log there: point DHSERVE_DATA_DIR (or --data-dir) at a writable "
                     "folder, or fix its owner / mount (a read-only volume, a path through a "
                     "regular file)", f"mkdir -p {where} && touch {where}/probe && rm "
                     f"{where}/probe\nexport DHSERVE_DATA_DIR=/srv/dhserve", data=data)
    return Check("storage", "data dir", OK,
                 f"{where}: writable" + (" (created now)" if created else ""), data=data)


def _database(settings: Settings) -> list[Check]:
    url = settings.database
    engine_url = sa.engine.make_url(url)
    shown = engine_url.render_as_string(hide_password=True)
    data: dict[str, Any] = {"url": shown, "dialect": engine_url.get_backend_name()}
    if engine_url.get_backend_name() == "sqlite":
        path = Path(engine_url.database or "")
        if not path.is_file():
            return [Check("storage", "database", OK,
                          f"{shown}: not created yet (the first `dhserve serve` or `dhserve "
                          "worker` creates it)", data=data)]
    engine = create_engine(url)               # as the service makes it (postgresql:// too)
    try:
        with engine.connect() as conn:
            current = migrate.current(conn)
    except sa.exc.DBAPIError as exc:
        return [Check("storage", "database", ERROR,
                      f"{shown}: unreachable ({first_line(exc.orig)})",
                      "start the database or fix DHSERVE_DATABASE_URL "
                      "(postgresql+psycopg://user:password@host:5432/db, or unset it for SQLite "
                      "in the data dir); every worker and the web tier need it",
                      f"pg_isready -h {engine_url.host or '127.0.0.1'} -p "
                      f"{engine_url.port or 5432}" if data["dialect"] == "postgresql"
                      else f"ls -l {engine_url.database}",
                      data=data)]
    finally:
        engine.dispose()
    known = migrate.revisions()               # oldest first, linear: the last is the head
    head = known[-1]
    data.update(schema=current, head=head)
    checks = [Check("storage", "database", OK, f"{shown}: reachable", data=data)]
    if current is None:
        checks.append(Check("storage", "schema", OK, "no dhserve tables yet (created on the "
                            "first start of `dhserve serve` or `dhserve worker`)", data=data))
        return checks
    if current not in known:
        checks.append(Check("storage", "schema", ERROR,
                            f"schema revision {current} is newer than this dhserve knows "
                            f"(head {head})",
                            "a newer dhserve migrated this database: upgrade dhserve here "
                            "(every machine sharing the database must run the same version)",
                            data=data))
        return checks
    if current != head:
        checks.append(Check("storage", "schema", WARNING,
                            f"schema revision {current}, this dhserve's is {head}",
                            "the schema is migrated on the next start of `dhserve serve` or "
                            "`dhserve worker`; stop older workers sharing it first",
                            data=data))
        return checks
    checks.append(Check("storage", "schema", OK, f"up to date (revision {head})", data=data))
    checks.extend(_queue(settings, url))
    return checks


def _queue(settings: Settings, url: str) -> list[Check]:
    store = JobStore(url, upgrade=False)
    try:
        counts = store.counts()
        registered = store.workers()
        held = {job.worker_id: job.id for job in store.list(JobState.RUNNING, limit=10_000)
                if job.worker_id}
        now = store.now()
    finally:
        store.close()
    depth, running = counts[JobState.QUEUED], counts[JobState.RUNNING]
    data = {"depth": depth, "running": running, "max_queued": settings.max_queued,
            "jobs": {state.value: n for state, n in counts.items()}}
    if depth >= settings.max_queued:
        queue = Check("storage", "queue", WARNING,
                      f"{depth} queued (the limit, DHSERVE_MAX_QUEUED={settings.max_queued}), "
                      f"{running} running: submits are answered busy",
                      "add render workers (`dhserve worker` on another GPU or machine) or raise "
                      "DHSERVE_MAX_QUEUED", data=data)
    else:
        queue = Check("storage", "queue", OK, f"{depth} queued, {running} running", data=data)
    # Silent as /health, /metrics and `dhserve top` say it (WorkerInfo.silent)
    alive: list[WorkerInfo] = []
    silent: list[WorkerInfo] = []
    for w in registered:
        (silent if w.silent(now, settings.heartbeat_seconds) else alive).append(w)
    silent_after = settings.heartbeat_seconds * HEARTBEAT_STALE_FACTOR
    workers = [{"id": w.id, "host": w.host, "pid": w.pid, "device": w.device, "state": w.state,
                "job": w.job_id, "ready": w.ready,
                "heartbeat_age_seconds": round(w.heartbeat_age(now), 1), "alive": w in alive}
               for w in [*alive, *silent]]
    listing = "; ".join(f"{w.id} on {w.device} {w.state}, heartbeat "
                        f"{w.heartbeat_age(now):.0f} s ago" for w in [*alive, *silent])
    data = {"workers": workers, "heartbeat_seconds": settings.heartbeat_seconds,
            "silent_after_seconds": silent_after, "lease_seconds": settings.lease_seconds}
    stuck = [(w, held[w.id]) for w in silent if w.id in held]
    gone = (f"; {len(silent)} silent (no heartbeat for {silent_after:g} s, "
            f"{HEARTBEAT_STALE_FACTOR:g} intervals): gone workers' rows, harmless, removed "
            "with old jobs" if silent else "")
    if stuck:
        worker = Check("storage", "workers", WARNING,
                       f"{len(stuck)} silent worker(s) hold a running job ("
                       + ", ".join(f"{job} on {w.id}" for w, job in stuck)
                       + f"): {listing}",
                       "a silent worker crashed, hangs or lost its machine; its job is requeued "
                       "when the lease expires (DHSERVE_LEASE_SECONDS) and another worker "
                       "renders it. Look at <data dir>/log/dh.log on its host", data=data)
    elif depth and not alive:
        worker = Check("storage", "workers", WARNING,
                       f"{depth} job(s) wait and no render worker heartbeats",
                       "start the service (`dhserve serve`) or a render worker "
                       "(`dhserve worker`) against this database", "dhserve worker", data=data)
    elif alive:
        worker = Check("storage", "workers", OK, f"{len(alive)} alive{gone}: {listing}",
                       data=data)
    elif silent:
        worker = Check("storage", "workers", OK,
                       f"none alive (none needed while nothing waits){gone}: {listing}",
                       data=data)
    else:
        worker = Check("storage", "workers", OK,
                       "no render worker registered (none needed while nothing waits)",
                       data=data)
    return [queue, worker]
