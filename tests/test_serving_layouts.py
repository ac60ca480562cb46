"""Both serving layouts, as real process trees: `dhserve serve` (split: Gunicorn web tier plus
supervised render workers) and `gunicorn -c gunicorn.conf.py` (all-in-one: the one worker
renders in a background thread). HeyGem's flow end to end, recycling during a render (HUP, the
memory limit) without a lost job or a 5xx, supervision, the CUDA-free master, dh.log."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import requests
from conftest import ROOT, wait_for
from serving_support import (
    PYTHON,
    ServiceProcess,
    Traffic,
    children,
    dhserve_cli,
    mapped_libraries,
    stage_example,
)

from dhserve.engine.media import probe


def all_in_one(tmp_path: Path, **env: str) -> ServiceProcess:
    """The literal command of the README, run from another directory."""
    return ServiceProcess(tmp_path, [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                                     "dhserve.api:create_app()"], env)


def recycled_during_render(service: ServiceProcess, code: str, recycle) -> None:
    """Renders `code` while clients poll /easy/query and /health, calling `recycle()` once it
    renders: the job must finish where it runs (one attempt: not handed back), every answer
    must be a 200, and a fresh renderer must take over from the one that rendered."""
    stage_example(service.temp, speech_repeats=4)
    before = service.health()["workers"][0]["pid"]
    service.submit(code)
    wait_for(lambda: service.query(code)["progress"] > 5, 60, f"{code} rendering", every=0.2)
    traffic = Traffic(service, code)
    try:
        recycle()
        service.wait_done(code, timeout=120)
        fresh = wait_for(lambda: [w["pid"] for w in service.health()["workers"]
                                  if w["ready"] and w["pid"] != before], 60, "a fresh renderer")
    finally:
        statuses = traffic.stop()
    job = requests.get(f"{service.url}/v1/jobs/{code}", timeout=10).json()
    assert (job["state"], job["attempts"]) == ("succeeded", 1), job
    assert fresh and before not in [w["pid"] for w in service.health()["workers"]
                                    if w["state"] != "silent"]
    bad = [s for s in statuses if s != 200]
    assert len(statuses) > 20 and not bad, f"{len(bad)} of {len(statuses)} not 200: {bad[:10]}"


def test_split_layout_serves_heygem_and_supervises_its_renderer(tmp_path):
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--layout", "split")).wait_serving()
    try:
        stage_example(service.temp)
        service.submit("split-1")
        task = service.wait_done("split-1")
        result = service.temp / "split-1-r.mp4"
        info = probe(result, "result")
        assert (info.video.width, info.video.height) == (task["width"], task["height"])
        assert abs(info.duration * 1000 - task["video_duration"]) < 100

        health = service.health()
        assert health["serving"]["layout"] == "split"
        assert health["serving"]["profile"] == "cpu"           # no GPU on this machine
        assert health["serving"]["render_devices"] == ["cpu"]
        [renderer] = [w for w in health["workers"] if w["state"] != "silent"]

        # the tree: supervisor → gunicorn master → web workers, and → the renderer
        tree = children(service.process.pid)
        assert renderer["pid"] in tree
        [master] = [p for p in tree if p != renderer["pid"]]
        assert mapped_libraries(master) == set()               # CUDA-free, engine-free
        for web_worker in children(master):
            assert mapped_libraries(web_worker) == set()
            assert f"Worker {web_worker}: web only, GPUs hidden" in service.output()
        assert "mediapipe" in mapped_libraries(renderer["pid"])      # the engine is here

        # a renderer that dies is started again and the service goes on
        os.kill(renderer["pid"], signal.SIGKILL)
        wait_for(lambda: any(w["ready"] and w["pid"] != renderer["pid"]
                             for w in service.health()["workers"]), 60, "a new renderer")
        service.submit("split-2")
        service.wait_done("split-2")
    finally:
        status = service.stop()
    assert status == 0
    output = service.output()
    assert re.search(r"renderer cpu \(pid \d+\) exited with status -9", output)
    assert "Traceback" not in output

    # dh.log: every process's lines, each with its pid; a job's lines carry its code
    log = (service.data / "log" / "dh.log").read_text()
    pids = set(re.findall(r"^\S+ \S+ \[(\d+)\] ", log, re.MULTILINE))
    assert len(pids) >= 4           # supervisor, gunicorn master, web worker(s), renderers
    assert re.search(r"\[\d+\] INFO dhserve.jobs.worker: job=split-1 claimed", log)
    assert re.search(r"\[\d+\] INFO dhserve.api.access: POST /easy/submit 200 .* job=split-2", log)


def test_all_in_one_layout_from_gunicorn_conf(tmp_path):
    service = all_in_one(tmp_path).wait_serving()
    try:
        stage_example(service.temp)
        service.submit("aio-1")
        service.wait_done("aio-1")
        assert (service.temp / "aio-1-r.mp4").stat().st_size > 10_000
        health = service.health()
        assert health["serving"]["layout"] == "all-in-one"
        assert health["serving"]["web_workers"] == 1
        [worker] = health["workers"]
        master = service.process.pid
        assert children(master) == [worker["pid"]]          # it renders in the web worker
        assert mapped_libraries(master) == set()
        assert "mediapipe" in mapped_libraries(worker["pid"])
    finally:
        assert service.stop() == 0
    output = service.output()
    assert "master is CUDA-free" in output
    assert re.search(r"Worker \d+: renders on the CPU", output)


def test_hup_during_a_render_lets_it_finish(tmp_path):
    service = all_in_one(tmp_path).wait_serving()
    try:
        recycled_during_render(service, "hup-1", lambda: service.signal(signal.SIGHUP))
    finally:
        assert service.stop() == 0
    assert "handed back" not in service.output()


def test_max_requests_recycles_after_the_render(tmp_path):
    """Gunicorn's own max_requests would stop the worker mid-render (and again in the next
    one under steady polling): the all-in-one worker recycles once its job is done."""
    service = all_in_one(tmp_path, GUNICORN_MAX_REQUESTS="200").wait_serving()
    try:
        recycled_during_render(service, "maxreq-1", lambda: None)
    finally:
        assert service.stop() == 0
    assert "recycling after its job (200 requests served)" in service.output()
    assert "handed back" not in service.output()


def test_second_stop_signal_hands_the_render_back_at_once(tmp_path):
    """SIGTERM (finish within the grace), then SIGINT (stop now): the job goes back to the
    queue instead of dying with the process."""
    service = all_in_one(tmp_path).wait_serving()
    stage_example(service.temp, speech_repeats=6)
    service.submit("second-1")
    wait_for(lambda: service.query("second-1")["progress"] > 5, 60, "rendering", every=0.2)
    service.signal(signal.SIGTERM)
    time.sleep(1)
    service.signal(signal.SIGINT)
    assert service.process.wait(timeout=20) == 0
    assert "handed back: the worker is stopping" in service.output()
    restarted = all_in_one(tmp_path).wait_serving()       # the job is rendered again
    try:
        restarted.wait_done("second-1")
    finally:
        restarted.stop()


def test_memory_limit_recycles_after_the_render(tmp_path):
    service = all_in_one(tmp_path, GUNICORN_MAX_MEMORY="1").wait_serving()   # always over
    try:
        before = service.health()["workers"][0]["pid"]
        recycled_during_render(service, "mem-1", lambda: None)
    finally:
        assert service.stop() == 0
    assert re.search(rf"Worker {before}: recycling after its job \(RSS \d+ MB is over the 1 MB",
                     service.output())


def test_split_hup_recycles_every_process_without_losing_the_render(tmp_path):
    service = ServiceProcess(tmp_path, dhserve_cli("serve")).wait_serving()
    try:
        recycled_during_render(service, "hup-2", lambda: service.signal(signal.SIGHUP))
    finally:
        assert service.stop() == 0
    assert re.search(r"worker \S+ recycling \(SIGHUP\) after its current job", service.output())


@pytest.mark.gpu
def test_split_layout_pins_one_renderer_per_gpu(tmp_path):
    """On a GPU machine: one renderer per GPU, each seeing only its own as cuda:0."""
    from dhserve.runtime.gpu import gpu_summary

    gpus = gpu_summary()
    if not gpus["available"]:
        pytest.skip("no GPU visible through NVML")
    service = ServiceProcess(tmp_path, dhserve_cli("serve")).wait_serving()
    try:
        health = service.health()
        workers = wait_for(lambda: [w for w in service.health()["workers"] if w["ready"]]
                           if len(service.health()["workers"]) == len(gpus["devices"])
                           else None, 120, "a renderer per GPU")
    finally:
        service.stop()
    assert health["serving"]["render_devices"] == [f"cuda:{d['index']}" for d in gpus["devices"]]
    assert sorted(w["device"] for w in workers) == sorted(
        f"cuda:0 (GPU {d['index']})" for d in gpus["devices"])


def test_render_grace_starts_when_the_worker_starts_leaving(tmp_path):
    """A slow request still in flight keeps a stopping worker draining; the render's grace
    must not wait for it (the master's kill clock is running): the job is handed back when
    the grace ends, while the drain goes on."""
    import socket

    from dhserve.config import Settings
    from dhserve.jobs import JobStore

    service = all_in_one(tmp_path, DHSERVE_STOP_GRACE_SECONDS="2",
                         GUNICORN_GRACEFUL_TIMEOUT="40").wait_serving()
    stage_example(service.temp, speech_repeats=8)
    service.submit("drain-1")
    wait_for(lambda: service.query("drain-1")["progress"] > 2, 60, "rendering", every=0.2)
    slow = socket.create_connection(("127.0.0.1", service.port))   # an upload in flight
    slow.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{")
    try:
        time.sleep(0.5)
        service.signal(signal.SIGTERM)
        store = JobStore.from_settings(Settings(data_dir=service.data))
        job = wait_for(lambda: (j := store.get("drain-1")).state.value == "queued" and j, 15,
                       "the job handed back within its 2 s grace")
        assert service.process.poll() is None           # still draining the slow request
        assert job.attempts == 0
    finally:
        slow.close()
        service.stop()
