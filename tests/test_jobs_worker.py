"""Render workers against a real job store: real processes, real signals, real renders."""

from __future__ import annotations

import functools
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import dhserve_process, encode_video, wait_for, write_wav

from dhserve.config import Settings
from dhserve.engine.audio import decode_speech
from dhserve.engine.face import AnalysisCache
from dhserve.engine.pipeline import RenderOptions, render
from dhserve.fsutil import file_digest
from dhserve.jobs import JobSpec, JobState, JobStore
from dhserve.jobs.model import result_path, upload_dir
from dhserve.jobs.retention import prune_finished
from dhserve.jobs.schema import jobs
from dhserve.jobs.worker import RenderWorker

FAST_LEASES = {"DHSERVE_LEASE_SECONDS": "3", "DHSERVE_HEARTBEAT_SECONDS": "1",
               "DHSERVE_POLL_SECONDS": "0.5"}


def assert_valid_mp4(path: str | Path, min_frames: int = 1) -> None:
    with av.open(str(path)) as container:
        assert container.streams.video and container.streams.audio
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= min_frames


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory, example_speech) -> Path:
    """30 s of speech: a render that runs long enough to watch, cancel and interrupt."""
    wav = decode_speech(example_speech)
    return write_wav(tmp_path_factory.mktemp("long") / "long.wav",
                     np.tile(wav, 3)[: 30 * 16000])


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def sqlite_store(data_dir):
    store = JobStore.from_settings(Settings(data_dir=data_dir))
    yield store
    store.close()


@pytest.fixture
def thread_worker(data_dir, sqlite_store):
    """Starts a RenderWorker on a thread of this process (the all-in-one placement)."""
    started: list[tuple[RenderWorker, threading.Thread]] = []

    def start(**overrides) -> RenderWorker:
        worker = RenderWorker(Settings(data_dir=data_dir, poll_seconds=0.2, **overrides))
        thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop(grace=0)
        thread.join(timeout=30)
        assert not thread.is_alive()


def finished(store: JobStore, *ids: str):
    jobs = [store.get(i) for i in ids]
    return jobs if all(job.state.finished for job in jobs) else None


def test_worker_renders_and_survives_every_kind_of_bad_job(
        sqlite_store, thread_worker, tiny_template, tiny_speech, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(5000))
    jobs = {
        "good": JobSpec(str(tiny_template), str(tiny_speech)),
        "missing": JobSpec(str(tiny_template), str(tmp_path / "absent.wav")),
        "corrupt": JobSpec(str(garbage), str(tiny_speech)),
        "bad-option": JobSpec(str(tiny_template), str(tiny_speech), options={"crf": 99}),
        "unknown-option": JobSpec(str(tiny_template), str(tiny_speech),
                                  options={"max_audio_seconds": 1e9}),
        "operator-option": JobSpec(str(tiny_template), str(tiny_speech),
                                   options={"batch_size": 10**6}),
        "good-after": JobSpec(str(tiny_template), str(tiny_speech),
                              output=str(tmp_path / "out" / "chosen.mp4"),
                              options={"loop": "restart"}),
    }
    for job_id, spec in jobs.items():
        sqlite_store.submit(job_id, spec)
    thread_worker()
    done = {job.id: job for job in wait_for(lambda: finished(sqlite_store, *jobs), 120,
                                            "all jobs to finish")}
    assert {i: (j.state.value, j.error_code) for i, j in done.items()} == {
        "good": ("succeeded", None),
        "missing": ("failed", "input.not_found"),
        "corrupt": ("failed", "input.not_media"),
        "bad-option": ("failed", "options.invalid"),
        "unknown-option": ("failed", "options.invalid"),
        "operator-option": ("failed", "options.invalid"),
        "good-after": ("succeeded", None),
    }
    assert "crf" in done["bad-option"].error_message
    assert "max_audio_seconds" in done["unknown-option"].error_message
    assert done["good-after"].result == str(tmp_path / "out" / "chosen.mp4")
    for job_id in ("good", "good-after"):
        job = done[job_id]
        assert_valid_mp4(job.result, min_frames=14)
        assert job.progress == 100 and job.attempts == 1
        assert job.result_info["width"] == 256 and job.result_info["frames"] == 15
        assert job.result_info["backend"] == "classic"


def test_progress_is_reported_and_cancel_stops_the_render(
        data_dir, sqlite_store, example_avatar, long_speech, tiny_template, tiny_speech,
        tmp_path):
    worker = dhserve_process("--data-dir", str(data_dir), "worker", env=FAST_LEASES,
                             log=tmp_path / "worker.log")
    try:
        sqlite_store.submit("long", JobSpec(str(example_avatar), str(long_speech)))
        seen: list[tuple[int, str]] = []

        def animating():
            job = sqlite_store.get("long")
            if not seen or seen[-1] != (job.progress, job.stage):
                seen.append((job.progress, job.stage))
            return job.stage == "lip-sync" and job.progress >= 40

        wait_for(animating, 90, "the render to reach 40 %", every=0.05)
        progress = [p for p, _ in seen]
        assert progress == sorted(progress)             # never goes backwards
        assert len({s for _, s in seen}) >= 2           # stages are named as they pass
        assert sqlite_store.cancel("long").cancel_requested
        job = wait_for(lambda: finished(sqlite_store, "long"), 15, "the cancel")[0]
        assert job.state is JobState.CANCELED and job.result is None
        results = data_dir / "results"
        assert list(results.iterdir()) == []            # no result, no partial file
        # the same worker process goes on with the next job
        sqlite_store.submit("next", JobSpec(str(tiny_template), str(tiny_speech)))
        job = wait_for(lambda: finished(sqlite_store, "next"), 60, "the next job")[0]
        assert job.state is JobState.SUCCEEDED and worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_sigterm_lets_the_running_job_finish(data_dir, sqlite_store, example_avatar,
                                             example_speech, tmp_path):
    sqlite_store.submit("job", JobSpec(str(example_avatar), str(example_speech)))
    worker = dhserve_process("--data-dir", str(data_dir), "worker", env=FAST_LEASES,
                             log=tmp_path / "worker.log")
    wait_for(lambda: sqlite_store.get("job").progress >= 30, 90, "the render to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    job = sqlite_store.get("job")
    assert job.state is JobState.SUCCEEDED, (job, (tmp_path / "worker.log").read_text())
    assert_valid_mp4(job.result, min_frames=290)
    assert sqlite_store.workers() == []             # deregistered on the way out


def thread_nice(pid: int, thread: int | None = None) -> int:
    """A thread's nice value as `ps -L -o ni` shows it (field 19 of its stat)."""
    stat = Path(f"/proc/{pid}/task/{thread or pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_a_renderer_inside_a_web_worker_keeps_its_priority(thread_worker, sqlite_store):
    """All-in-one: the render thread shares the GIL with the request threads; lowering its
    priority would make requests wait for a GIL held by a thread the OS runs last."""
    thread_worker(render_nice=7)
    wait_for(lambda: any(w.ready for w in sqlite_store.workers()), 60, "the worker")
    renderer = next(t for t in threading.enumerate() if t.name == "dhserve-heartbeat")
    assert thread_nice(os.getpid(), renderer.native_id) == 0


def test_a_worker_process_renders_at_the_configured_priority(data_dir, sqlite_store, tmp_path):
    worker = dhserve_process("--data-dir", str(data_dir), "worker",
                             env={**FAST_LEASES, "DHSERVE_RENDER_NICE": "5"},
                             log=tmp_path / "worker.log")
    try:
        wait_for(lambda: any(w.ready for w in sqlite_store.workers()), 60, "the worker")
        threads = [int(t.name) for t in Path(f"/proc/{worker.pid}/task").iterdir()]
        assert {thread_nice(worker.pid, t) for t in threads} == {5}     # every thread
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0


def test_an_idle_worker_stops_on_sigterm_whenever_it_arrives(data_dir, sqlite_store, tmp_path):
    """The idle worker spends its time inside Event.wait; a handler that set that event from
    the signal handler deadlocked on the event's own lock (the worker then ignored SIGTERM
    and outlived `dhserve serve`). Several signals at different moments of the wait."""
    log = tmp_path / "worker.log"
    for attempt, delay in enumerate((0.0, 0.013, 0.027, 0.05, 0.21, 0.5)):
        worker = dhserve_process("--data-dir", str(data_dir), "worker", env=FAST_LEASES,
                                 log=log)
        try:
            wait_for(lambda: any(w.ready for w in sqlite_store.workers()), 60,
                     "the worker to be ready")
            time.sleep(delay)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=15) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"attempt {attempt}: SIGTERM ignored:\n{log.read_text()}")
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_stopping_everything_and_starting_again_loses_nothing(
        data_dir, sqlite_store, example_avatar, long_speech, tiny_template, tiny_speech,
        tmp_path):
    env = {**FAST_LEASES, "DHSERVE_STOP_GRACE_SECONDS": "0"}
    sqlite_store.submit("long", JobSpec(str(example_avatar), str(long_speech), priority=1))
    for n in range(3):
        sqlite_store.submit(f"short{n}", JobSpec(str(tiny_template), str(tiny_speech)))
    worker = dhserve_process("--data-dir", str(data_dir), "worker", env=env,
                             log=tmp_path / "first.log")
    wait_for(lambda: sqlite_store.get("long").progress >= 30, 90, "the long render")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0
    interrupted = sqlite_store.get("long")
    assert interrupted.state is JobState.QUEUED and interrupted.attempts == 0
    assert "worker stopped" in interrupted.stage
    again = dhserve_process("--data-dir", str(data_dir), "worker", "--max-jobs", "4", env=env,
                            log=tmp_path / "second.log")
    assert again.wait(timeout=120) == 0
    jobs = finished(sqlite_store, "long", "short0", "short1", "short2")
    assert jobs and all(job.state is JobState.SUCCEEDED for job in jobs)
    assert_valid_mp4(jobs[0].result, min_frames=740)


def test_killed_worker_job_completes_on_another_worker(
        data_dir, sqlite_store, example_avatar, long_speech, tmp_path):
    sqlite_store.submit("job", JobSpec(str(example_avatar), str(long_speech)))
    first = dhserve_process("--data-dir", str(data_dir), "worker", env=FAST_LEASES,
                            log=tmp_path / "first.log")
    wait_for(lambda: sqlite_store.get("job").progress >= 30, 90, "the render")
    first.kill()
    first.wait()
    assert sqlite_store.get("job").state is JobState.RUNNING     # until its lease runs out
    second = dhserve_process("--data-dir", str(data_dir), "worker", env=FAST_LEASES,
                             log=tmp_path / "second.log")
    try:
        job = wait_for(lambda: finished(sqlite_store, "job"), 120, "the requeued job")[0]
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert job.state is JobState.SUCCEEDED and job.attempts == 2
    results = [p for p in (data_dir / "results").iterdir() if not p.name.startswith(".")]
    assert results == [Path(job.result)]
    assert_valid_mp4(job.result, min_frames=740)


def test_three_workers_on_postgres_render_thirty_jobs_exactly_once(
        postgres_url, tmp_path, tiny_template, tiny_speech):
    data_dir = tmp_path / "shared"
    store = JobStore(postgres_url)
    for n in range(30):
        store.submit(f"job{n:02}", JobSpec(str(tiny_template), str(tiny_speech)))
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = [dhserve_process("--data-dir", str(data_dir), "worker", "--database-url",
                               postgres_url, env=FAST_LEASES, log=log) for log in logs]
    ids = [f"job{n:02}" for n in range(30)]
    try:
        jobs = wait_for(lambda: finished(store, *ids), 240, "30 jobs", every=0.5)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=60) for w in workers]
    assert codes == [0, 0, 0]
    assert all(job.state is JobState.SUCCEEDED and job.attempts == 1 for job in jobs)
    claims = [m for log in logs for m in re.findall(r"job=(job\d\d) claimed", log.read_text())]
    assert sorted(claims) == ids                        # each job claimed once, by one worker
    assert len({job.worker_id for job in jobs}) >= 2    # the work was shared
    assert len({job.result for job in jobs}) == 30
    for job in jobs[::10]:
        assert_valid_mp4(job.result, min_frames=14)
    store.close()


def test_worker_rides_out_dropped_database_connections(postgres_url, tmp_path, tiny_template,
                                                      tiny_speech):
    """What a PostgreSQL restart does to a worker: every connection it holds is cut."""
    import psycopg

    store = JobStore(postgres_url)
    worker = dhserve_process("--data-dir", str(tmp_path / "data"), "worker", "--database-url",
                             postgres_url, env=FAST_LEASES, log=tmp_path / "worker.log")
    try:
        wait_for(lambda: any(w.ready for w in store.workers()), 60, "the worker")
        with psycopg.connect(postgres_url.split("?")[0].replace("+psycopg", ""),
                             autocommit=True) as conn:
            cut = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                               " AND backend_type = 'client backend'").fetchall()
        assert cut
        store.engine.dispose()
        store.submit("after-cut", JobSpec(str(tiny_template), str(tiny_speech)))
        job = wait_for(lambda: finished(store, "after-cut"), 60, "the job after the cut")[0]
        assert job.state is JobState.SUCCEEDED and worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        store.close()
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


@pytest.fixture
def media_server(tiny_template, tiny_speech):
    """Serves the tiny media over real HTTP on an ephemeral port."""
    folder = tiny_template.parent
    (folder / "speech.wav").write_bytes(tiny_speech.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_inputs_are_downloaded_within_limits(sqlite_store, thread_worker, media_server,
                                                 data_dir):
    sqlite_store.submit("urls", JobSpec(f"{media_server}/tiny.mp4",
                                        f"{media_server}/speech.wav"))
    sqlite_store.submit("404", JobSpec(f"{media_server}/missing.mp4",
                                       f"{media_server}/speech.wav"))
    inside = media_server.replace("127.0.0.1", "127.0.0.2")     # loopback, not opened
    sqlite_store.submit("internal", JobSpec(f"{inside}/tiny.mp4", f"{inside}/speech.wav"))
    thread_worker(allowed_networks="127.0.0.1/32")
    done = wait_for(lambda: finished(sqlite_store, "urls", "404", "internal"), 60,
                    "the downloads")
    assert done[0].state is JobState.SUCCEEDED, done[0]
    assert_valid_mp4(done[0].result)
    assert (done[1].error_code, "404") == ("input.download_failed", "404")
    assert "video: " in done[1].error_message and "HTTP 404" in done[1].error_message
    assert done[2].error_code == "input.url_not_allowed"
    assert "video: " in done[2].error_message and "loopback" in done[2].error_message
    assert not any((data_dir / "downloads").iterdir())   # downloads are cleaned up


def test_download_over_the_size_limit_is_refused(sqlite_store, thread_worker, media_server):
    sqlite_store.submit("big", JobSpec(f"{media_server}/tiny.mp4",
                                       f"{media_server}/speech.wav"))
    thread_worker(max_input_mb=0.001, allowed_networks="127.0.0.1/32")
    job = wait_for(lambda: finished(sqlite_store, "big"), 60, "the refusal")[0]
    assert job.error_code == "input.too_large" and "video" in job.error_message


SUBMITTER = """
import sys, time
from dhserve.jobs import JobSpec, JobStore
store = JobStore(sys.argv[1], max_queued=100000)
me = sys.argv[2]
for n in range(40):
    store.submit(f"{me}-{n}", JobSpec("v.mp4", "a.wav"))
    store.get(f"{me}-{n}")
    store.list(limit=20)
    store.counts()
deadline = time.monotonic() + 60
while any(not store.get(f"{me}-{n}").state.finished for n in range(40)):
    assert time.monotonic() < deadline, "jobs did not finish"
    time.sleep(0.01)
"""


def test_eight_processes_submitting_and_polling_on_sqlite_never_see_a_lock(data_dir,
                                                                            sqlite_store):
    url = sqlite_store.url
    stop = threading.Event()

    def claimer():          # finishes jobs as fast as they come, like a very quick worker
        while not stop.is_set():
            job = sqlite_store.claim("fast")
            if job is None:
                time.sleep(0.005)
            else:
                sqlite_store.succeed(job.id, "fast", "/dev/null")

    thread = threading.Thread(target=claimer)
    thread.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, url, f"p{i}"],
                                  stderr=subprocess.PIPE) for i in range(8)]
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    finally:
        stop.set()
        thread.join()
    assert [p.returncode for p in procs] == [0] * 8, errors
    assert not any("locked" in e for e in errors)
    assert sqlite_store.counts()[JobState.SUCCEEDED] == 320


def test_retention_prunes_finished_jobs_with_their_files(data_dir, sqlite_store):
    results = data_dir / "results"
    results.mkdir(parents=True)
    kept_file, pruned_file = results / "new.mp4", results / "old.mp4"
    for path in (kept_file, pruned_file):
        path.write_bytes(b"mp4")
    for job_id, path in (("old", pruned_file), ("new", kept_file)):
        sqlite_store.submit(job_id, JobSpec("v", "a"))
        sqlite_store.claim("w")
        sqlite_store.succeed(job_id, "w", str(path))
    with sqlite_store.engine.begin() as conn:      # "old" finished eight days ago
        conn.execute(jobs.update().where(jobs.c.id == "old").values(
            finished_at=jobs.c.finished_at - 8 * 86400))
    stale, fresh = results / ".x.mp4.0123456789ab.part", results / ".y.mp4.ba9876543210.part"
    stale.write_bytes(b"left by a killed render")
    fresh.write_bytes(b"being written right now")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert prune_finished(sqlite_store, Settings(data_dir=data_dir)) == 1
    assert [job.id for job in sqlite_store.list()] == ["new"]
    assert sorted(p.name for p in results.iterdir()) == [fresh.name, "new.mp4"]


def _aged(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"part of an mp4")
    os.utime(path, (time.time() - seconds, time.time() - seconds))
    return path


def test_partial_results_of_killed_renders_are_swept_wherever_results_go(data_dir,
                                                                         sqlite_store):
    """kill -9 mid-render leaves .<result>.<tag>.part in results/ or (HeyGem) temp/."""
    settings = Settings(data_dir=data_dir)
    temp, results = settings.temp_dir, settings.results_dir
    sqlite_store.submit("held", JobSpec("v", "a", output=str(temp / "held-r.mp4")))
    sqlite_store.claim("w")                     # renders into temp/held-r.mp4 right now
    gone = [_aged(temp / ".code-r.mp4.0a1b2c3d4e5f.part", 120),      # no job writes it
            _aged(results / ".job1.mp4.0a1b2c3d4e5f.part", 120),
            _aged(temp / ".held-r.mp4.111111111111.part", 7200)]    # held, but hours old
    kept = [_aged(temp / ".held-r.mp4.222222222222.part", 120),      # held: being written
            _aged(temp / ".fresh-r.mp4.333333333333.part", 10),      # too young to judge
            _aged(temp / ".notes.part", 7200),                       # a client's files
            _aged(temp / ".clip.mp4.not-hex-at-all.part", 7200),
            _aged(temp / "speech.wav", 7200)]
    prune_finished(sqlite_store, settings)
    assert [p.name for p in gone if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []


def test_retention_and_partials_follow_the_result_container(data_dir, sqlite_store):
    """A transparent job's .webm / .mov result and a job's uploaded background image go with
    the job; the partial .mov a running transparent job writes stays."""
    settings = Settings(data_dir=data_dir)
    image = upload_dir(settings, "sky") / "background-0123.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"png")
    for job_id, spec in (("clear", JobSpec("v", "a", options={"background": "transparent"})),
                         ("sky", JobSpec("v", "a", background=str(image)))):
        sqlite_store.submit(job_id, spec)
        job = sqlite_store.claim("w")
        out = result_path(settings, job)
        _aged(out, 0)
        sqlite_store.succeed(job_id, "w", str(out))
    assert sqlite_store.get("clear").result == str(settings.results_dir / "clear.webm")
    assert sqlite_store.get("sky").spec.background == str(image)     # stored and read back
    with sqlite_store.engine.begin() as conn:
        conn.execute(jobs.update().values(finished_at=jobs.c.finished_at - 8 * 86400))
    sqlite_store.submit("held", JobSpec("v", "a", options={"background": "transparent",
                                                           "container": "mov"}))
    held = result_path(settings, sqlite_store.claim("w"))
    assert held.name == "held.mov"
    writing = _aged(held.with_name(".held.mov.0a1b2c3d4e5f.part"), 120)
    assert prune_finished(sqlite_store, settings) == 2
    assert sorted(p.name for p in settings.results_dir.iterdir()) == [writing.name]
    assert not upload_dir(settings, "sky").exists()


def _entry_files(templates: Path, digest: str) -> list[Path]:
    return sorted(templates.glob(f"{digest}.*"))


def test_template_cache_stays_under_its_size_least_recently_used_first(
        data_dir, sqlite_store, tiny_template, tiny_speech, template_frames, tmp_path):
    """Every new avatar adds its face analysis and masks to templates/: housekeeping keeps
    them under DHSERVE_TEMPLATE_CACHE_MB, the template used last stays, what an older
    format or a killed writer left goes, and a pruned template simply renders again."""
    settings = Settings(data_dir=data_dir)
    cache = AnalysisCache(settings.templates_dir)
    mirrored = encode_video(tmp_path / "mirrored.mp4",
                            [cv2.resize(f, (256, 256))[:, ::-1] for f in template_frames[:25]])
    colour = RenderOptions(background="#00b140")
    for template in (tiny_template, mirrored):
        assert not render(template, tiny_speech, tmp_path / "out.mp4", colour,
                          cache).analysis_cached
    used, unused = file_digest(tiny_template), file_digest(mirrored)
    for digest, days in ((used, 2), (unused, 1)):        # `used` was made first ...
        for path in _entry_files(settings.templates_dir, digest):
            os.utime(path, (time.time() - days * 86400,) * 2)
    assert render(tiny_template, tiny_speech, tmp_path / "out.mp4", colour,
                  cache).analysis_cached                 # ... and used again since
    entry_size = sum(p.stat().st_size for p in _entry_files(settings.templates_dir, used))
    old_format = settings.templates_dir / f"{used}.masks.v3.npz"
    old_format.write_bytes(b"an entry of an older dhserve")
    left = _aged(settings.templates_dir / ".tmp-killed.zlib", 7200)
    writing = _aged(settings.templates_dir / ".tmp-writing.zlib", 10)
    small = Settings(data_dir=data_dir, template_cache_mb=1.5 * entry_size / 2**20)
    prune_finished(sqlite_store, small)
    assert _entry_files(settings.templates_dir, unused) == []
    assert len(_entry_files(settings.templates_dir, used)) == 2   # analysis + masks
    assert not old_format.exists() and not left.exists() and writing.exists()
    again = render(mirrored, tiny_speech, tmp_path / "out.mp4", colour, cache)
    assert not again.analysis_cached and again.frames == 15       # computed again, rendered
    prune_finished(sqlite_store, settings)                        # 2 GB: nothing goes
    assert len(list(settings.templates_dir.glob("*.npz"))) == 2     # the analyses ...
    assert len(list(settings.templates_dir.glob("*.masks.v*.bin"))) == 2    # ... and masks


def test_a_rerun_removes_the_partial_file_of_the_attempt_that_was_killed(
        data_dir, sqlite_store, thread_worker, tiny_speech, tmp_path):
    out = data_dir / "temp" / "code-r.mp4"
    left = _aged(out.with_name(".code-r.mp4.0123456789ab.part"), 10)  # young: not swept
    other = _aged(out.with_name(".other-r.mp4.0123456789ab.part"), 10)
    sqlite_store.submit("code", JobSpec(str(tmp_path / "absent.mp4"), str(tiny_speech),
                                        output=str(out)))
    thread_worker()
    assert wait_for(lambda: finished(sqlite_store, "code"), 30, "the job")[0].error_code \
        == "input.not_found"
    wait_for(lambda: not left.exists(), 5, "the earlier attempt's part to go")
    assert other.exists()


class _PostgresProxy:
    """A TCP proxy in front of PostgreSQL that can be cut (connections dropped, new ones
    refused) and restored on the same port: an outage the store meets for real."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._serve()

    def _serve(self) -> None:
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)    # wakes accept(); close alone does not
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sockets.clear()

    def restore(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self._serve()


def test_a_store_outage_is_logged_when_it_starts_and_when_it_ends(postgres_url, tmp_path,
                                                                   caplog):
    import logging
    from urllib.parse import urlsplit

    from dhserve.jobs.worker import _Running

    where = urlsplit(postgres_url)
    proxy = _PostgresProxy(where.hostname, where.port or 5432)
    url = postgres_url.replace(where.netloc, f"{where.username}@127.0.0.1:{proxy.port}")
    store = JobStore(url)
    worker = RenderWorker(Settings(data_dir=tmp_path, database_url=url), store=store,
                          worker_id="w1")
    try:
        store.register_worker("w1", "host", 1, "cpu")
        store.submit("long", JobSpec("v", "a"))
        running = _Running(store.claim("w1"))
        caplog.set_level(logging.INFO, logger="dhserve.jobs")
        proxy.cut()
        for n in range(6):                  # renewals with progress, heartbeats, idle waits
            worker.renew(running, 10 + n, "lip-sync")
            worker.heartbeat()
            worker._wakeup.wait(0.05)
        proxy.restore()
        worker.renew(running, 50, "lip-sync")
        worker.heartbeat()
        worker.renew(running, 51, "lip-sync")
        worker._wakeup.wait(0.05)
        worker._wakeup.wait(0.05)
    finally:
        worker._wakeup.close()
        store.close()
        proxy.cut()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.name == "dhserve.jobs.worker"]
    assert len(lines) == 2, lines
    assert lines[0][1].startswith("job store unreachable (lease renewal: ")
    assert lines[1][1].startswith("job store reachable again after ")
    assert "(12 failed call(s))" in lines[1][1]     # 6 renewals, 6 heartbeats
    assert not any(r.exc_info for r in caplog.records)
    assert running.stop_reason is None              # the lease is still ours
    listen = [r.getMessage() for r in caplog.records if r.name == "dhserve.jobs.wakeup"]
    assert len(listen) == 2, listen                 # lost it, and has it again
    assert listen[0].startswith("lost the LISTEN connection")
    assert listen[1] == "listening for new jobs again"


def test_neural_jobs_share_the_sessions_loaded_once(data_dir, sqlite_store, thread_worker,
                                                    tiny_template, tiny_speech):
    import onnx_models

    def submit(job_id, **options):
        sqlite_store.submit(job_id, JobSpec(str(tiny_template), str(tiny_speech),
                                            options=options))

    onnx_models.wav2lip_invert(data_dir / "models" / "wav2lip_gan_96.onnx")
    submit("plain")
    submit("restore-without-model", face_restore=True)
    worker = thread_worker()
    plain, refused = wait_for(lambda: finished(sqlite_store, "plain",
                                               "restore-without-model"), 60, "two jobs")
    assert plain.state is JobState.SUCCEEDED
    assert plain.result_info["backend"] == "wav2lip"          # auto: the model file is there
    assert refused.error_code == "model.missing"
    assert "needs models/GFPGANv1.4.onnx" in refused.error_message
    onnx_models.restore_invert(data_dir / "models" / "GFPGANv1.4.onnx")
    submit("restore", face_restore=True)
    submit("restore-again", face_restore=True, backend="wav2lip")
    jobs = wait_for(lambda: finished(sqlite_store, "restore", "restore-again"), 60, "restores")
    assert all(job.state is JobState.SUCCEEDED for job in jobs), jobs
    assert list(worker._backends) == ["wav2lip"]        # one backend, its session made once
    assert worker._restorer is not None


def test_cancel_and_stop_reach_a_download_within_two_seconds(sqlite_store, thread_worker,
                                                             tiny_speech):
    """A server that trickles one byte every half second holds nothing: a cancel ends the
    job, and a stopping worker (SIGTERM) hands its job back, each within 2 s."""
    from test_downloads import Trickle, base, stub

    def downloading(job_id: str) -> bool:
        return sqlite_store.get(job_id).stage == "downloading"

    with stub(Trickle) as server:
        slow = JobSpec(f"{base(server)}/slow.mp4", str(tiny_speech))
        sqlite_store.submit("canceled", slow)
        worker = thread_worker(allowed_networks="127.0.0.1/32", download_timeout_seconds=600,
                               heartbeat_seconds=10, lease_seconds=60)
        wait_for(lambda: downloading("canceled"), 30, "the download to start")
        time.sleep(1)
        asked = time.monotonic()
        sqlite_store.cancel("canceled")
        job = wait_for(lambda: finished(sqlite_store, "canceled"), 10, "the cancel")[0]
        assert job.state is JobState.CANCELED
        assert time.monotonic() - asked < 2.0

        sqlite_store.submit("handed-back", slow)
        wait_for(lambda: downloading("handed-back"), 30, "the second download")
        time.sleep(1)
        asked = time.monotonic()
        worker.stop()                       # what SIGTERM calls; the grace is 30 s
        wait_for(lambda: not sqlite_store.workers(), 10, "the worker to stop")
        assert time.monotonic() - asked < 2.0
        job = sqlite_store.get("handed-back")
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)
