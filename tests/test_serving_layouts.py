"""Both serving layouts, as real process trees: `dhserve serve` (split: Gunicorn web tier plus
supervised render workers) and `gunicorn -c gunicorn.conf.py` (all-in-one: the one worker
renders in a background thread). HeyGem's flow end to end, recycling during a render (HUP, the
memory limit) without a lost job or a 5xx, supervision, the CUDA-free master, dh.log."""

from __future__ import annotations

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


def v1_job(service: ServiceProcess, code: str) -> dict:
    return requests.get(f"{service.url}/v1/jobs/{code}", timeout=10).json()


def render_while_running(service: ServiceProcess, code: str, action) -> list[int | str]:
    """Submits `code`; once it renders, does `action` while clients poll; returns every
    status the clients saw until the job finished."""
    service.submit(code)
    wait_for(lambda: service.query(code)["progress"] > 5, 60, f"{code} rendering", every=0.2)
    traffic = Traffic(service, code)
    try:
        action()
        service.wait_done(code, timeout=120)
        time.sleep(1.5)                       # and past the recycled worker's replacement
    finally:
        statuses = traffic.stop()
    return statuses


def assert_all_ok(statuses: list[int | str]) -> None:
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
        import os
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
    stage_example(service.temp, speech_repeats=4)
    try:
        before = service.health()["workers"][0]["pid"]
        statuses = render_while_running(service, "hup-1",
                                        lambda: service.signal(signal.SIGHUP))
        job = v1_job(service, "hup-1")
        after = wait_for(lambda: [w["pid"] for w in service.health()["workers"]
                                  if w["ready"]], 30, "the new worker's renderer")
    finally:
        service.stop()
    assert job["state"] == "succeeded" and job["attempts"] == 1   # finished, not handed back
    assert before not in after                                   # by the worker that left
    assert_all_ok(statuses)


def test_memory_limit_recycles_after_the_render(tmp_path):
    service = all_in_one(tmp_path, GUNICORN_MAX_MEMORY="1").wait_serving()   # always over
    stage_example(service.temp, speech_repeats=3)
    try:
        before = service.health()["workers"][0]["pid"]
        statuses = render_while_running(service, "mem-1", lambda: None)
        job = v1_job(service, "mem-1")
        after = wait_for(lambda: [w["pid"] for w in service.health()["workers"]
                                  if w["ready"] and w["pid"] != before], 30, "a new worker")
    finally:
        service.stop()
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert after and before not in after
    assert re.search(rf"Worker {before}: recycling after its job \(RSS \d+ MB is over the 1 MB",
                     service.output())
    assert_all_ok(statuses)


def test_split_hup_recycles_every_process_without_losing_the_render(tmp_path):
    service = ServiceProcess(tmp_path, dhserve_cli("serve")).wait_serving()
    stage_example(service.temp, speech_repeats=4)
    try:
        before = service.health()["workers"][0]["pid"]
        statuses = render_while_running(service, "hup-2",
                                        lambda: service.signal(signal.SIGHUP))
        job = v1_job(service, "hup-2")
        wait_for(lambda: any(w["ready"] and w["pid"] != before
                             for w in service.health()["workers"]), 60, "a new renderer")
    finally:
        assert service.stop() == 0
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert "worker" in service.output() and "recycling (SIGHUP)" in service.output()
    assert_all_ok(statuses)


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
