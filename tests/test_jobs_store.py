"""The job store's rules, on SQLite and on the PostgreSQL server (each test runs on both)."""

import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from dhserve.errors import DhserveError
from dhserve.jobs import JobSpec, JobState, JobStore, migrate


def spec(n: int = 0, **kw) -> JobSpec:
    return JobSpec(video=f"/media/avatar{n}.mp4", audio=f"/media/speech{n}.wav", **kw)


@pytest.fixture
def store(database_url):
    store = JobStore(database_url, lease_seconds=60, max_attempts=3, max_queued=20)
    yield store
    store.close()


def expire_leases(store: JobStore) -> None:
    """Moves every lease into the past, as if the workers had stopped answering."""
    from dhserve.jobs.schema import jobs

    with store.engine.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.state == "running").values(
            lease_expires_at=jobs.c.lease_expires_at - 3600))


def test_submit_is_idempotent_by_id(store):
    job, created = store.submit("code-1", spec(options={"loop": "restart"}))
    assert created and job.state is JobState.QUEUED and job.progress == 0
    again, created = store.submit("code-1", spec(options={"loop": "restart"}))
    assert not created and again == job
    with pytest.raises(DhserveError) as info:
        store.submit("code-1", spec(options={"loop": "pingpong"}))
    assert info.value.code == "job.conflict"
    assert store.get("code-1").spec.options == {"loop": "restart"}


def test_a_job_that_ran_out_of_space_is_rendered_again_when_resubmitted(store):
    from dhserve.errors import StorageFull

    store.submit("full", spec(1))
    store.claim("w")
    store.fail("full", "w", "storage.full", "no space left on the device")
    again, created = store.submit("full", spec(1))          # space returned; the client retries
    assert created and again.state is JobState.QUEUED
    assert (again.attempts, again.error_code, again.finished_at) == (0, None, None)
    assert store.claim("w2").id == "full"
    assert store.succeed("full", "w2", "/r/full.mp4")
    assert store.submit("full", spec(1)) == (store.get("full"), False)   # once only
    # other failures are final
    store.submit("bad", spec(3))
    assert store.claim("w").id == "bad"
    store.fail("bad", "w", "input.not_media", "not media")
    assert store.submit("bad", spec(3))[0].error_code == "input.not_media"
    # refused on arrival while the disk is full, and resubmitted while it still is: kept
    store.submit("refused", spec(2), failed=StorageFull("free space is low"))
    job, created = store.submit("refused", spec(2), failed=StorageFull("free space is low"))
    assert not created and job.state is JobState.FAILED
    assert store.submit("refused", spec(2))[0].state is JobState.QUEUED
    # another spec under the id is still a conflict
    with pytest.raises(DhserveError) as info:
        store.submit("full", spec(4))
    assert info.value.code == "job.conflict"


def test_submit_over_the_queue_limit_says_busy(store):
    for n in range(20):
        store.submit(f"j{n}", spec(n))
    with pytest.raises(DhserveError) as info:
        store.submit("one-too-many", spec(99))
    assert info.value.code == "queue.full" and "busy" in info.value.message
    assert store.queue_depth() == 20
    store.claim("w")                        # a running job no longer counts as waiting
    store.submit("now-fits", spec(99))


def test_queue_bound_holds_under_concurrent_submits(database_url):
    store = JobStore(database_url, max_queued=5)
    barrier = threading.Barrier(16)
    outcomes: list[str] = []

    def submit(n):
        barrier.wait()
        try:
            store.submit(f"j{n}", spec(n))
            outcomes.append("queued")
        except DhserveError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["queue.full"] * 11 + ["queued"] * 5
    assert store.queue_depth() == 5
    store.close()


def test_claims_take_priority_then_age_and_never_the_same_job(store):
    store.submit("old", spec(1))
    store.submit("urgent", spec(2, priority=5))
    store.submit("new", spec(3))
    claimed = [store.claim("w").id for _ in range(3)]
    assert claimed == ["urgent", "old", "new"]
    assert store.claim("w") is None
    job = store.get("old")
    assert job.state is JobState.RUNNING and job.worker_id == "w" and job.attempts == 1
    assert job.lease_expires_at == pytest.approx(job.started_at + 60, abs=0.5)


def test_concurrent_claims_hand_out_each_job_once(store):
    for n in range(20):
        store.submit(f"j{n}", spec(n))
    claims: list[str] = []

    def claimer(name):
        while (job := store.claim(name)) is not None:
            claims.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claims) == sorted(f"j{n}" for n in range(20))


def test_lease_renewal_and_outcome_belong_to_the_lease_holder(store):
    store.submit("j", spec())
    store.claim("w1")
    lease = store.renew("j", "w1", progress=40, stage="lip-sync")
    assert lease.held and not lease.cancel_requested
    assert (store.get("j").progress, store.get("j").stage) == (40, "lip-sync")
    assert not store.renew("j", "intruder").held
    assert not store.succeed("j", "intruder", "/x.mp4")
    assert store.succeed("j", "w1", "/r.mp4", {"frames": 10})
    job = store.get("j")
    assert job.state is JobState.SUCCEEDED and job.progress == 100
    assert job.result == "/r.mp4" and job.result_info == {"frames": 10}
    assert job.finished_at >= job.started_at >= job.created_at
    assert not store.renew("j", "w1").held      # finished: nothing left to hold


def test_expired_lease_is_requeued_then_fails_as_worker_lost(store):
    store.submit("j", spec())
    for attempt in (1, 2, 3):
        job = store.claim(f"w{attempt}")
        assert job.id == "j" and job.attempts == attempt
        expire_leases(store)
        assert store.reap() == 1
    job = store.get("j")
    assert job.state is JobState.FAILED and job.error_code == "worker.lost"
    assert "3 attempts" in job.error_message
    assert not store.succeed("j", "w3", "/late.mp4")   # the lost worker cannot overwrite it


def test_reaper_leaves_live_leases_alone(store):
    store.submit("j", spec())
    store.claim("w")
    assert store.reap() == 0
    assert store.get("j").state is JobState.RUNNING


def test_cancel_queued_is_immediate_running_is_flagged(store):
    store.submit("queued", spec(1))
    store.submit("running", spec(2))
    assert store.claim("w").id == "queued"          # claim takes the older one
    store.submit("waiting", spec(3))
    canceled = store.cancel("waiting")
    assert canceled.state is JobState.CANCELED and canceled.finished_at is not None
    assert canceled.error_code == "render.canceled"
    assert store.claim("w").id == "running"
    flagged = store.cancel("running")
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert store.renew("running", "w").cancel_requested
    assert store.mark_canceled("running", "w")
    assert store.get("running").state is JobState.CANCELED
    with pytest.raises(DhserveError) as info:
        store.cancel("running")
    assert info.value.code == "job.finished"
    with pytest.raises(DhserveError) as info:
        store.cancel("nope")
    assert info.value.code == "job.not_found"


def test_cancel_of_a_lost_job_is_honoured_by_the_reaper(store):
    store.submit("j", spec())
    store.claim("w")
    store.cancel("j")
    expire_leases(store)
    store.reap()
    assert store.get("j").state is JobState.CANCELED


def test_release_requeues_without_using_an_attempt(store):
    store.submit("j", spec())
    store.claim("w1")
    assert store.release("j", "w1")
    job = store.get("j")
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.worker_id is None
    assert store.claim("w2").attempts == 1


def test_release_of_a_job_asked_to_cancel_cancels_it(store):
    store.submit("j", spec())
    store.claim("w")
    store.cancel("j")
    assert store.release("j", "w")
    assert store.get("j").state is JobState.CANCELED
    assert store.claim("w2") is None


def test_prune_removes_finished_jobs_past_retention_only(store):
    for n in range(3):
        store.submit(f"j{n}", spec(n))
    store.claim("w")
    store.fail("j0", "w", "video.no_face", "video: no face")
    store.cancel("j1")
    time.sleep(0.05)
    assert store.prune(retention_seconds=3600) == []
    gone = store.prune(retention_seconds=0.01)
    assert sorted(job.id for job in gone) == ["j0", "j1"]
    assert [job.id for job in store.list()] == ["j2"]


def test_list_filters_by_state_newest_first(store):
    for n in range(4):
        store.submit(f"j{n}", spec(n))
    store.claim("w")
    assert [job.id for job in store.list()] == ["j3", "j2", "j1", "j0"]
    assert [job.id for job in store.list(JobState.RUNNING)] == ["j0"]
    assert [job.id for job in store.list(limit=2)] == ["j3", "j2"]
    assert store.counts()[JobState.QUEUED] == 3


def test_workers_are_registered_with_heartbeats(store):
    store.register_worker("w1", "host", 42, "cuda:0")
    store.worker_heartbeat("w1", "busy", "j", ready=True, backend="classic")
    [worker] = store.workers()
    assert (worker.device, worker.state, worker.job_id, worker.ready) == (
        "cuda:0", "busy", "j", True)
    assert worker.heartbeat_at == pytest.approx(store.now(), abs=5)
    store.remove_worker("w1")
    assert store.workers() == []


def test_schema_is_migrated_once_and_restarts_are_harmless(database_url):
    stores = [JobStore(database_url) for _ in range(2)]
    with stores[0].engine.connect() as conn:
        assert migrate.current(conn) == migrate.head()
        tables = set(sa.inspect(conn).get_table_names())
    assert {"dhserve_jobs", "dhserve_workers", "dhserve_alembic_version"} <= tables
    stores[0].submit("kept", spec())
    assert stores[1].get("kept").state is JobState.QUEUED
    for s in stores:
        s.close()


def test_migrations_build_exactly_the_tables_the_code_uses(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from dhserve.jobs.schema import metadata

    store = JobStore(database_url)
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": migrate.VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
    store.close()


def test_concurrent_first_starts_migrate_without_racing(database_url):
    code = ("import sys; from dhserve.jobs import JobStore; "
            "JobStore(sys.argv[1]).submit(sys.argv[2], "
            "__import__('dhserve.jobs', fromlist=['JobSpec']).JobSpec('v', 'a'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, database_url, f"p{i}"],
                              stderr=subprocess.PIPE) for i in range(4)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert len(JobStore(database_url).list()) == 4


FIRST_CONNECTIONS = """
import multiprocessing, sqlite3, sys
from dhserve.jobs.database import prepare_sqlite

def first_connection(path, job, barrier, results):
    try:
        connection = sqlite3.connect(path, timeout=30)
        barrier.wait(timeout=30)
        prepare_sqlite(connection)
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("CREATE TABLE IF NOT EXISTS t (job TEXT)")
        connection.execute("INSERT INTO t VALUES (?)", (job,))
        connection.execute("COMMIT")
        results.put("ok")
    except sqlite3.Error as exc:
        results.put(f"{type(exc).__name__}: {exc}")

context = multiprocessing.get_context("fork")      # a small process: forks are cheap
folder, rounds, starters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for attempt in range(rounds):
    path = f"{folder}/new-{attempt}.db"
    barrier, results = context.Barrier(starters), context.Queue()
    procs = [context.Process(target=first_connection, args=(path, f"p{i}", barrier, results))
             for i in range(starters)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone()[0]
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    print(attempt, rows, mode, *[o for o in outcomes if o != "ok"], sep="|")
"""


def test_many_first_connections_at_once_to_a_new_sqlite_file(tmp_path):
    """Sixteen processes with a new SQLite file open prepare their first connection at the
    same instant, thirty times over: the switch to WAL, which SQLite refuses at once (no busy
    timeout) to all but one of those that meet there, is waited for, never "database is
    locked". (Before the fix about one round in ten failed.)"""
    run = subprocess.run([sys.executable, "-c", FIRST_CONNECTIONS, str(tmp_path), "30", "16"],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rounds = [line.split("|") for line in run.stdout.splitlines()]
    assert rounds == [[str(n), "16", "wal"] for n in range(30)]


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(DhserveError) as info:
        JobStore("postgresql+psycopg://dhserve@127.0.0.1:1/none?connect_timeout=2")
    assert info.value.code == "store.unreachable"
    assert "127.0.0.1:1" in info.value.message


def test_a_plain_postgresql_url_uses_psycopg(postgres_url):
    """postgresql://… is how people write it; SQLAlchemy alone would want psycopg2."""
    store = JobStore(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        store.submit("plain", JobSpec("a.mp4", "b.wav"))
        assert store.get("plain").state is JobState.QUEUED
    finally:
        store.close()
