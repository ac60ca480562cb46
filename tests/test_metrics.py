"""GET /metrics: scraped before, during and after real renders, parsed with prometheus_client's
own text parser; in-process (one process, the default registry) and under real Gunicorn with
several web workers and a supervised render worker (multiprocess mode)."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import requests
from conftest import EXAMPLES, ROOT, wait_for
from prometheus_client.parser import text_string_to_metric_families
from serving_support import PYTHON, ServiceProcess, children, dhserve_cli

from dhserve.monitor import run_top
from dhserve.runtime.gpu import gpu_summary

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


def stage(temp: Path, video: Path, speech_repeats: int) -> None:
    """temp/avatar.mp4 and temp/speech.wav (the example speech, repeated) for a submit."""
    temp.mkdir(parents=True, exist_ok=True)
    shutil.copy(video, temp / "avatar.mp4")
    with wave.open(str(EXAMPLES / "speech.wav")) as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
    with wave.open(str(temp / "speech.wav"), "wb") as out:
        out.setparams(params)
        out.writeframes(frames * speech_repeats)


# -- in-process --------------------------------------------------------------------------------

def test_counters_and_gauges_follow_a_render(service, tiny_template):
    svc = service()
    stage(svc.temp, tiny_template, speech_repeats=5)         # ~59 s of video at 256x256

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
    assert elapsed <= delta(after, "dhserve_job_render_duration_seconds_sum") < elapsed + 5
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
    try:
        folder = service.data / "run" / "metrics"
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
        killed = min(served_by(service.data / "log" / "dh.log", "/metrics") & web)
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


def test_gunicorn_conf_makes_a_fresh_metrics_folder(tmp_path):
    """A plain `gunicorn -c gunicorn.conf.py`: the master makes <data dir>/run/metrics fresh
    (an earlier run's counts do not leak in) before forking its workers."""
    folder = tmp_path / "data" / "run" / "metrics"
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
    finally:
        service.stop()
