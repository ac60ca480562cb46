"""GET /metrics: scraped before, during and after real renders, parsed with prometheus_client's
own text parser; in-process (one process, the default registry) and under real Gunicorn with
several web workers and a supervised render worker (multiprocess mode)."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import ROOT, wait_for
from prometheus_client.parser import text_string_to_metric_families
from serving_support import PYTHON, ServiceProcess, children, dhserve_cli, stage_example

from dhserve import metrics
from dhserve.config import Settings
from dhserve.jobs import JobSpec, JobState, JobStore, migrate
from dhserve.jobs.schema import workers
from dhserve.runtime.gpu import gpu_summary
from dhserve.top import run_top

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition; a (name, labels) pair seen twice is invalid output."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    return sum(value for (n, have), value in samples.items()
               if n == name and set(labels.items()) <= set(have))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(have) for (n, have) in samples if n == name]


# -- in-process --------------------------------------------------------------------------------

def test_counters_and_gauges_follow_a_render(service, tiny_template):
    svc = service()
    stage_example(svc.temp, speech_repeats=5, video=tiny_template)         # ~59 s of video at 256x256

    made = []

    def scrape() -> Samples:
        made.append(1)
        response = svc.client.get("/metrics")               # checked against /openapi.json
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(response.get_data(as_text=True))

    before = scrape()

    def delta(samples: Samples, name: str, **labels: str) -> float:
        return total(samples, name, **labels) - total(before, name, **labels)

    assert svc.client.post("/easy/submit", json={
        "video_url": "avatar.mp4", "audio_url": "speech.wav", "code": "m-render"}
    ).get_json()["code"] == 10000
    queued = svc.client.post("/v1/jobs", json={"video": "avatar.mp4", "audio": "speech.wav",
                                               "priority": -1},
                             headers={"Idempotency-Key": "m-queued"})
    assert queued.status_code == 202
    assert svc.client.post("/v1/jobs", json={"video": "avatar.mp4", "audio": "speech.wav",
                                             "priority": -1},
                           headers={"Idempotency-Key": "m-queued"}).status_code == 200
    refused = {"video_url": "avatar.mp4", "audio_url": "avatar.mp4", "code": "m-refused"}
    assert svc.client.post("/easy/submit", json=refused).get_json()["code"] == 10000
    assert svc.client.get("/easy/query?code=m-refused").get_json()["data"]["status"] == 3
    waiting = scrape()
    assert total(waiting, "dhserve_queue_depth") == 2
    assert total(waiting, "dhserve_jobs", state="queued") == 2
    assert delta(waiting, "dhserve_jobs_submitted_total", api="heygem") == 2
    assert delta(waiting, "dhserve_jobs_finished_total", state="failed") == 1  # on arrival
    assert delta(waiting, "dhserve_jobs_submitted_total", api="v1") == 1      # not the replay
    assert total(waiting, "dhserve_workers", state="idle") == 0

    worker = svc.start_worker()

    def rendering() -> Samples | None:
        samples = scrape()
        return samples if total(samples, "dhserve_worker_frames_per_second",
                                worker=worker.id) > 0 else None

    during = wait_for(rendering, 60, "frames per second of the running render", every=0.1)
    assert total(during, "dhserve_workers", state="busy") == 1
    assert total(during, "dhserve_queue_depth") == 1                 # the other one waits
    assert total(during, "dhserve_jobs", state="running") == 1
    assert 0 <= total(during, "dhserve_worker_heartbeat_age_seconds", worker=worker.id) <= 3
    assert delta(during, "dhserve_job_queue_wait_seconds_count") == 1
    assert delta(during, "dhserve_jobs_finished_total") == 1
    assert total(during, "dhserve_process_resident_memory_bytes") > 50 * 2**20

    shown = io.StringIO()
    assert run_top(svc.store, svc.settings, once=True, out=shown) == 0
    line = next(line for line in shown.getvalue().splitlines() if worker.id[:29] in line)
    assert "busy" in line and "m-render" in line and "lip-sync" in line
    assert float(re.search(r"(\d+\.\d) +\S+s$", line).group(1)) > 0      # fps, heartbeat

    assert svc.client.delete("/v1/jobs/m-queued").status_code == 200    # canceled at once
    canceled = scrape()
    assert delta(canceled, "dhserve_jobs_finished_total", state="canceled") == 1
    assert total(canceled, "dhserve_queue_depth") == 0

    wait_for(lambda: svc.client.get("/easy/query?code=m-render").get_json()["data"]["status"]
             != 1, 120, "the render to finish", every=0.2)
    after = scrape()
    assert svc.store.get("m-render").state.value == "succeeded"
    assert delta(after, "dhserve_jobs_finished_total", state="succeeded") == 1
    assert delta(after, "dhserve_jobs_finished_total") == 3
    assert delta(after, "dhserve_job_render_duration_seconds_count", state="succeeded") == 1
    elapsed = svc.store.get("m-render").result_info["elapsed"]
    # claim to recorded outcome: the render plus its inputs and the store's writes (seconds
    # on a loaded 2-core machine, never minutes)
    assert elapsed <= delta(after, "dhserve_job_render_duration_seconds_sum") < elapsed + 30
    assert delta(after, "dhserve_render_frames_per_second_count") == 1
    frames = svc.store.get("m-render").result_info["frames"]
    assert delta(after, "dhserve_render_frames_per_second_sum") == pytest.approx(
        frames / elapsed, rel=1e-6)
    assert delta(after, "dhserve_job_queue_wait_seconds_count") == 1
    assert total(after, "dhserve_workers", state="idle") == 1
    assert not series(after, "dhserve_worker_frames_per_second")     # idle: no render speed
    assert total(after, "dhserve_queue_depth") == 0
    for route, method, status, count in [("/easy/submit", "POST", "200", 2),
                                         ("/v1/jobs", "POST", "202", 1),
                                         ("/v1/jobs", "POST", "200", 1),
                                         ("/v1/jobs/<job_id>", "DELETE", "200", 1)]:
        assert delta(after, "dhserve_http_request_duration_seconds_count", route=route,
                     method=method, status=status) == count, route
    scrapes = delta(after, "dhserve_http_request_duration_seconds_count", route="/metrics")
    assert scrapes == len(made) - 1                 # every one before this one, none lost
    assert delta(after, "dhserve_http_request_duration_seconds_count",
                 route="/easy/query") >= 1
    routes = {labels["route"] for labels in series(after, "dhserve_http_request_duration_"
                                                           "seconds_count")}
    assert not [route for route in routes if "m-queued" in route]   # rules, never raw paths


def test_metrics_need_the_api_key_and_gpus_show_only_where_there_are(service):
    svc = service(api_key="k3y")
    assert svc.client.get("/metrics").status_code == 401
    answer = svc.client.get("/metrics", headers={"Authorization": "Bearer k3y"})
    assert answer.status_code == 200
    samples = parse(answer.get_data(as_text=True))
    assert total(samples, "dhserve_store_up") == 1
    assert total(samples, "dhserve_http_request_duration_seconds_count", route="/metrics",
                 status="401") >= 1
    gpus = gpu_summary()
    if gpus.get("available"):
        for device in gpus["devices"]:
            assert total(samples, "dhserve_gpu_memory_total_bytes",
                         gpu=str(device["index"])) > 0
    else:                       # no GPU: no series and no error, only the absence
        assert not [name for name, _ in samples if name.startswith("dhserve_gpu_")]


def test_an_unreachable_store_leaves_the_rest_of_the_metrics(service, postgres_url):
    """The job store goes away: /metrics still answers, says so, and keeps what it has."""
    import psycopg

    svc = service(database_url=postgres_url)
    assert total(parse(svc.client.get("/metrics").get_data(as_text=True)),
                 "dhserve_store_up") == 1
    schema = postgres_url.rpartition("%3D")[2]
    plain = postgres_url.split("?")[0].replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")       # the tables are gone
    try:
        answer = svc.client.get("/metrics")
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")         # for the fixture's clean-up
    assert answer.status_code == 200
    samples = parse(answer.get_data(as_text=True))
    assert total(samples, "dhserve_store_up") == 0
    assert not series(samples, "dhserve_queue_depth") and not series(samples, "dhserve_jobs")
    assert total(samples, "dhserve_http_request_duration_seconds_count", route="/metrics") >= 1


def test_importing_the_metrics_makes_nothing_and_the_store_counts_nothing(tmp_path):
    """Metrics are built by an explicit init (serving/roles.py), not by an import: importing
    dhserve.metrics makes no folder; the job store never loads the metrics."""
    folder = tmp_path / "not-yet"
    probe = ("import sys; import dhserve.metrics; import dhserve.jobs.store\n"
             "from dhserve.jobs import JobStore\n"
             "print('prometheus_client' in sys.modules, 'dhserve.metrics' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
                          check=True)
    assert not folder.exists()
    store_probe = "import sys; import dhserve.jobs.store; print('dhserve.metrics' in sys.modules)"
    store_only = subprocess.run([sys.executable, "-c", store_probe], capture_output=True,
                                text=True, check=True)
    assert store_only.stdout.split() == ["False"], store_only.stdout
    assert done.stdout.split() == ["True", "True"]


def test_a_store_that_never_answers_costs_a_scrape_seconds_not_minutes():
    """A PostgreSQL host that accepts the connection and then says nothing (as a hung or
    firewalled one): the scrape answers within the store's connect timeout, store down."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)                                    # never accepted, never answered
        port = silent.getsockname()[1]
        store = JobStore(f"postgresql+psycopg://dhserve@127.0.0.1:{port}/none", upgrade=False)
        try:
            started = time.monotonic()
            samples = parse(metrics.exposition(metrics.ServiceCollector(store, 30.0))
                            .decode())
            took = time.monotonic() - started
        finally:
            store.close()
    assert total(samples, "dhserve_store_up") == 0 and not series(samples, "dhserve_jobs")
    assert took < 20, f"the scrape took {took:.1f} s"


def test_the_reaper_forgets_long_silent_workers_that_hold_no_job(database_url):
    """A crashed worker's row (its dhserve_workers{state="silent"} series, its alerts) goes
    after 10 leases; one still holding a running job stays; a live one is never touched."""
    store = JobStore(database_url, lease_seconds=60)
    try:
        for worker_id in ("crashed", "stuck", "alive", "recent"):
            store.register_worker(worker_id, "box", 1, "cpu")
        store.submit("j", JobSpec("v.mp4", "a.wav"))
        assert store.claim("stuck").id == "j"               # its lease is still valid
        with store.engine.begin() as conn:
            for worker_id, silent_s in (("crashed", 601), ("stuck", 3600), ("recent", 300)):
                conn.execute(workers.update().where(workers.c.id == worker_id).values(
                    heartbeat_at=workers.c.heartbeat_at - silent_s))
        assert store.reap() == 0                            # no job row changed
        assert {w.id for w in store.workers()} == {"stuck", "alive", "recent"}
        assert store.get("j").state is JobState.RUNNING
    finally:
        store.close()


def test_frames_per_second_are_lip_syncs_and_written_once_by_the_lease(tmp_path):
    """A render's speed is measured while lip-sync writes frames; once it encodes, the
    worker's figure is cleared (not its last lip-sync value), and an idle worker has none."""
    from dhserve.config import Settings
    from dhserve.jobs.worker import RenderWorker, _JobProgress, _Running

    worker = RenderWorker(Settings(data_dir=tmp_path, heartbeat_seconds=1, lease_seconds=5))
    store = worker.store
    try:
        store.register_worker(worker.id, "box", os.getpid(), "cpu")
        store.submit("j", JobSpec("v.mp4", "a.wav"))
        running = _Running(store.claim(worker.id))
        progress = _JobProgress(worker, running)

        def fps() -> float | None:
            return next(w.fps for w in store.workers() if w.id == worker.id)

        progress.frames(25, 100)
        time.sleep(0.25)
        progress.frames(50, 100)
        progress.update(0.5, "lip-sync")
        assert 50 < fps() < 101 and running.fps == pytest.approx(fps(), abs=0.01)
        store.worker_heartbeat(worker.id, "busy", "j")       # the heartbeat leaves it alone
        assert fps() is not None
        time.sleep(0.25)                                    # a new stage is written at once
        progress.update(0.9, "encoding")
        assert running.fps is None and fps() is None
        assert store.get("j").stage == "encoding"
        store.worker_heartbeat(worker.id, "idle")
        assert fps() is None
    finally:
        store.close()


def test_migration_0002_upgrades_and_downgrades_a_store_with_workers(database_url):
    """A 0001 store with a worker row: to head (fps column, row kept) and back again."""
    import sqlalchemy as sa
    from alembic import command

    assert migrate.revisions()[:2] == ["0001", "0002"]
    store = JobStore(database_url, upgrade=False)
    try:
        def columns() -> set[str]:
            with store.engine.connect() as conn:
                return {c["name"] for c in sa.inspect(conn).get_columns("dhserve_workers")}

        def to(revision: str, step=command.upgrade) -> None:
            with store._write() as conn:
                step(migrate._config(conn), revision)

        to("0001")
        with store.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO dhserve_workers (id, host, pid, device, backend, state, ready, "
                "started_at, heartbeat_at) VALUES ('w', 'box', 7, 'cpu', 'classic', 'idle', "
                "true, 1, 2)"))
        assert "fps" not in columns()
        to("head")
        assert "fps" in columns()
        [worker] = store.workers()
        assert (worker.id, worker.state, worker.heartbeat_at, worker.fps) == ("w", "idle", 2, None)
        to("0001", command.downgrade)
        assert "fps" not in columns()
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id, heartbeat_at FROM dhserve_workers")).all() \
                == [("w", 2)]
            assert migrate.current(conn) == "0001"
    finally:
        store.close()


# -- Gunicorn, several workers -----------------------------------------------------------------

def scrape_url(url: str) -> Samples:
    response = requests.get(url + "/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def rss_pids(samples: Samples) -> set[int]:
    return {int(s["pid"]) for s in series(samples, "dhserve_process_resident_memory_bytes")}


def served_by(log: Path, route: str) -> set[int]:
    """Pids of the processes that logged answering `route` (the access log carries them)."""
    return {int(pid) for pid in re.findall(rf"\[(\d+)\] INFO dhserve\.api\.access: GET "
                                           rf"{re.escape(route)} 200", log.read_text())}


def test_split_service_metrics_add_up_across_web_workers(tmp_path, tiny_template, tiny_speech):
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--workers", "2")).wait_serving()
    folder = metrics_folder(service)
    try:
        assert str(folder).startswith("/dev/shm/") and list(folder.glob("*.db"))
        processes = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()
                     for pid in children(service.process.pid)}
        master = next(p for p, cmd in processes.items() if b"dhserve.serving.web" in cmd)
        renderer = next(p for p, cmd in processes.items() if b"worker" in cmd)
        web = set(children(master))
        assert len(web) == 2

        shutil.copy(tiny_template, service.temp / "avatar.mp4")
        shutil.copy(tiny_speech, service.temp / "speech.wav")
        service.submit("g-1")
        service.wait_done("g-1")
        first = scrape_url(service.url)
        assert rss_pids(first) == web | {renderer}
        livez = total(first, "dhserve_http_request_duration_seconds_count", route="/livez")
        for _ in range(30):
            assert requests.get(service.url + "/livez", timeout=10).status_code == 200

        def check(samples: Samples) -> None:
            """What every scrape must say, whichever web worker answers it."""
            assert total(samples, "dhserve_jobs_submitted_total", api="heygem") == 1
            assert total(samples, "dhserve_jobs_finished_total", state="succeeded") == 1
            assert total(samples, "dhserve_job_queue_wait_seconds_count") == 1
            assert total(samples, "dhserve_job_render_duration_seconds_count") == 1
            assert total(samples, "dhserve_render_frames_per_second_count") == 1
            assert total(samples, "dhserve_http_request_duration_seconds_count",
                         route="/livez") == livez + 30
            assert total(samples, "dhserve_workers", state="idle") == 1
            assert total(samples, "dhserve_queue_depth") == 0

        counts = []
        for _ in range(12):
            samples = scrape_url(service.url)
            check(samples)
            counts.append(total(samples, "dhserve_http_request_duration_seconds_count",
                                route="/metrics"))
        assert counts == [counts[0] + i for i in range(12)]   # each scrape sees all before it

        # a web worker that answered scrapes is killed: its gauges go, its counts stay
        killed = min(wait_for(lambda: served_by(service.data / "log" / "dh.log", "/metrics")
                              & web, 10, "the scrapes' access lines in dh.log"))
        os.kill(killed, signal.SIGKILL)
        replaced = wait_for(lambda: (now := set(children(master))) != web and len(now) == 2
                            and now, 30, "Gunicorn to replace the killed worker")
        wait_for(lambda: rss_pids(scrape_url(service.url)) == replaced | {renderer}, 30,
                 "the killed worker's memory gauge to go")
        samples = scrape_url(service.url)
        check(samples)
        assert total(samples, "dhserve_http_request_duration_seconds_count",
                     route="/metrics") >= counts[-1] + 2
        assert not list(folder.glob(f"gauge_liveall_{killed}.db"))

        # the render worker dies: the supervisor starts another and its gauge replaces the old
        os.kill(renderer, signal.SIGKILL)
        wait_for(lambda: renderer not in (pids := rss_pids(scrape_url(service.url))) and
                 len(pids) == 3, 60, "the restarted render worker's memory gauge")
        check_renderer = scrape_url(service.url)
        assert total(check_renderer, "dhserve_jobs_finished_total", state="succeeded") == 1
    finally:
        service.stop()
    assert not folder.exists()                  # `dhserve serve` removes it when it stops


def metrics_folder(service: ServiceProcess) -> Path:
    """Where the service's processes keep their metrics files: in RAM (/dev/shm), named for
    the data dir, so that a full data disk cannot fault their memory-mapped files (it was
    <data dir>/run/metrics; issue 15)."""
    folder = Settings(data_dir=service.data).metrics_path
    assert folder.parent == Path("/dev/shm") or not Path("/dev/shm").is_dir(), folder
    return folder


def test_gunicorn_conf_makes_a_fresh_metrics_folder(tmp_path):
    """A plain `gunicorn -c gunicorn.conf.py`: the master makes the metrics folder (in RAM,
    named for the data dir) fresh (an earlier run's counts do not leak in) before forking its
    workers, and removes it when it stops."""
    folder = Settings(data_dir=tmp_path / "data").metrics_path
    folder.mkdir(parents=True)
    earlier_run = ("from prometheus_client import Counter\n"
                   "Counter('dhserve_jobs_submitted', 'x', ['api']).labels('heygem').inc(7)")
    subprocess.run([sys.executable, "-c", earlier_run],
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}, check=True)
    assert list(folder.glob("counter_*.db"))
    service = ServiceProcess(tmp_path, [PYTHON, "-m", "gunicorn", "-c",
                                        str(ROOT / "gunicorn.conf.py"),
                                        "dhserve.api:create_app()"],
                             {"DHSERVE_LAYOUT": "split", "GUNICORN_WORKERS": "2"})
    try:
        service.wait_serving("/livez")
        wait_for(lambda: len(children(service.process.pid)) == 2, 30, "two web workers")
        web = set(children(service.process.pid))
        samples = wait_for(lambda: (s := scrape_url(service.url)) and rss_pids(s) == web and s,
                           30, "both workers' memory gauges")
        assert total(samples, "dhserve_jobs_submitted_total") == 0     # the stale file is gone
        assert not series(samples, "dhserve_worker_heartbeat_age_seconds")   # no renderer
        replaced = hup_replaces_workers(service, service.process.pid, web)
        assert list(folder.glob("gauge_liveall_*.db"))
        assert not [p for p in web if list(folder.glob(f"gauge_liveall_{p}.db"))]
        assert len(replaced) == 2
    finally:
        service.stop()
    assert not folder.exists()                  # the master's on_exit removed it


def hup_replaces_workers(service: ServiceProcess, master: int, old: set[int]) -> set[int]:
    """SIGHUP to a Gunicorn master (it reloads its configuration and replaces its workers):
    the old workers' memory gauges leave /metrics, the new ones' come. Returns the new pids."""
    os.kill(master, signal.SIGHUP)
    new = wait_for(lambda: (now := set(children(master))) and not now & old and
                   len(now) == len(old) and now, 60, "Gunicorn to replace its workers")
    wait_for(lambda: rss_pids(scrape_url(service.url)) & (old | new) == new, 30,
             "the old workers' memory gauges to go and the new ones' to come")
    return new


def test_a_worker_started_by_hand_counts_in_dhserve_web(tmp_path, tiny_template, tiny_speech):
    """`dhserve web` plus `dhserve worker` and `dhserve jobs cancel` started by hand on the
    same machine: their renders, waits and cancels reach the web tier's /metrics; the worker's
    memory gauge goes when it exits, its counts stay; a HUP keeps all of it."""
    service = ServiceProcess(tmp_path, dhserve_cli("web", "--workers", "1")).wait_serving(
        "/livez")                                       # /readyz: once a worker is ready
    hand = [PYTHON, "-m", "dhserve.cli", "--data-dir", str(service.data)]
    worker = subprocess.Popen([*hand, "worker"], env=service.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=tmp_path)
    folder = metrics_folder(service)
    try:
        assert (folder / "owner.pid").is_file()         # `dhserve web`'s master made it
        shutil.copy(tiny_template, service.temp / "avatar.mp4")
        shutil.copy(tiny_speech, service.temp / "speech.wav")
        service.submit("w-1")
        service.wait_done("w-1")
        samples = wait_for(lambda: (s := scrape_url(service.url)) and
                           worker.pid in rss_pids(s) and s, 30, "the worker's memory gauge")
        assert total(samples, "dhserve_jobs_finished_total", state="succeeded") == 1
        assert total(samples, "dhserve_job_render_duration_seconds_count",
                     state="succeeded") == 1
        assert total(samples, "dhserve_job_queue_wait_seconds_count") == 1
        assert total(samples, "dhserve_render_frames_per_second_count") == 1

        os.kill(worker.pid, signal.SIGTERM)                 # idle: it exits at once
        assert worker.wait(timeout=60) == 0
        assert not list(folder.glob(f"gauge_liveall_{worker.pid}.db"))
        answer = requests.post(service.url + "/v1/jobs", json={
            "video": "avatar.mp4", "audio": "speech.wav"}, headers={"Idempotency-Key": "w-2"},
            timeout=30)
        assert answer.status_code == 202, answer.text
        canceled = subprocess.run([*hand, "jobs", "cancel", answer.json()["id"]],
                                  env=service.env, capture_output=True, text=True, timeout=60,
                                  check=False)
        assert canceled.returncode == 0, canceled.stderr
        web = set(children(service.process.pid))
        hup_replaces_workers(service, service.process.pid, web)
        samples = scrape_url(service.url)
        assert worker.pid not in rss_pids(samples)
        assert total(samples, "dhserve_jobs_finished_total", state="succeeded") == 1
        assert total(samples, "dhserve_jobs_finished_total", state="canceled") == 1
        assert total(samples, "dhserve_job_render_duration_seconds_count") == 1
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        service.stop()
