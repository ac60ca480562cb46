"""The HTTP API served by a real Gunicorn (gthread workers) with real `dhserve worker`
processes: what a HeyGem client sees in production."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import dhserve_process, wait_for

from dhserve.engine.media import probe

FAST = {"DHSERVE_HEARTBEAT_SECONDS": "1", "DHSERVE_LEASE_SECONDS": "5",
        "DHSERVE_POLL_SECONDS": "0.5"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """Gunicorn + render workers over one data dir, started from a neutral directory."""

    def __init__(self, root: Path, workers: int, extra_env: dict[str, str] | None = None):
        self.data = root / "data"
        self.temp = self.data / "temp"
        self.temp.mkdir(parents=True)
        self.env = {**FAST, "DHSERVE_DATA_DIR": str(self.data), **(extra_env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "gunicorn.log"
        self.processes = [subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "-w", "2",
             "-b", f"127.0.0.1:{self.port}", "dhserve.api:create_app()"],
            cwd=root, env={**os.environ, **self.env}, stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT)]
        self.processes += [dhserve_process("worker", env=self.env, log=root / f"worker{i}.log")
                           for i in range(workers)]
        wait_for(self._ready, 90, "gunicorn and a ready render worker", every=0.3)

    def _ready(self) -> bool:
        assert all(p.poll() is None for p in self.processes), self.log.read_text()[-3000:]
        try:
            return requests.get(self.url + "/readyz", timeout=10).status_code == 200
        except (requests.ConnectionError, requests.Timeout):   # not up yet, or a busy machine
            return False

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def server(tmp_path):
    started: list[Server] = []

    def start(workers: int = 1, **env) -> Server:
        started.append(Server(tmp_path, workers, env))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def submit(srv: Server, **body) -> dict:
    response = requests.post(srv.url + "/easy/submit", json=body, timeout=30)
    assert response.status_code == 200
    return response.json()


def query(srv: Server, code: str) -> dict:
    response = requests.get(srv.url + "/easy/query", params={"code": code}, timeout=30)
    assert response.status_code == 200
    return response.json()


def test_official_client_flow(server, tiny_template, tiny_speech):
    """What the HeyGem desktop client does: files into temp/, submit bare names, poll every
    2 s until status 2, join `result` onto its temp folder and play the file."""
    srv = server()
    code = str(uuid.uuid4())
    shutil.copy(tiny_template, srv.temp / f"{code}.mp4")
    shutil.copy(tiny_speech, srv.temp / f"{code}.wav")
    accepted = submit(srv, audio_url=f"{code}.wav", video_url=f"{code}.mp4", code=code,
                      chaofen=0, watermark_switch=0, pn=1)
    assert accepted == {"code": 10000, "data": {}, "msg": 10000, "success": True}
    deadline = time.monotonic() + 120
    while True:
        answer = query(srv, code)
        assert answer["code"] == 10000 and answer["data"]["status"] in (1, 2), answer
        if answer["data"]["status"] == 2:
            break
        assert time.monotonic() < deadline, answer
        time.sleep(2)
    info = probe(srv.temp / answer["data"]["result"].lstrip("/"), "result")
    assert info.video is not None and info.audio is not None
    assert (info.video.width, info.video.height) == (answer["data"]["width"],
                                                    answer["data"]["height"])
    assert abs(info.duration * 1000 - answer["data"]["video_duration"]) < 100
    log = srv.log.read_text()
    assert "POST /easy/submit 200" in log and f"job={code} heygem=10000" in log
    assert log.count("GET /easy/query 200") == log.count(f"job={code}") - 1   # one per request


def test_fifty_parallel_submits_all_complete_and_codes_are_unique(server, tiny_template,
                                                                  tiny_speech):
    srv = server(workers=2)
    shutil.copy(tiny_template, srv.temp / "avatar.mp4")
    shutil.copy(tiny_speech, srv.temp / "speech.wav")
    codes = [f"job-{i:02d}" for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda c: submit(srv, audio_url="speech.wav",
                                                 video_url="avatar.mp4", code=c), codes))
    assert [a["code"] for a in answers] == [10000] * 50
    again = submit(srv, audio_url="speech.wav", video_url="avatar.mp4", code=codes[0])
    assert again["code"] == 10000                                  # same payload: same job
    other = submit(srv, audio_url="speech.wav", video_url="avatar.mp4", code=codes[0], pn=0)
    assert other["code"] == 10005

    def all_done():
        states = [query(srv, c)["data"]["status"] for c in codes]
        assert 3 not in states
        return all(s == 2 for s in states)

    wait_for(all_done, 300, "50 jobs to complete", every=1.0)
    listed = requests.get(srv.url + "/v1/jobs", params={"limit": 500}, timeout=30).json()
    assert sorted(job["id"] for job in listed["jobs"]) == codes   # one job per code
    assert all(job["attempts"] == 1 for job in listed["jobs"])
    assert all((srv.temp / f"{c}-r.mp4").stat().st_size > 0 for c in codes)


def test_traversal_and_schemes_are_refused_over_http(server, tmp_path, tiny_template,
                                                     tiny_speech):
    srv = server()
    shutil.copy(tiny_template, srv.temp / "avatar.mp4")
    outside = tmp_path / "secret.wav"
    shutil.copy(tiny_speech, outside)
    (srv.temp / "link.wav").symlink_to(outside)
    shutil.copy(tiny_speech, srv.temp / "speech.wav")
    cases = {"../../secret.wav": "'..' is not allowed",
             "temp/../../secret.wav": "'..' is not allowed",
             "..%2f..%2fsecret.wav": "no such file",          # a name, never URL-decoded
             str(outside): "outside the folders inputs may come from",
             "link.wav": "outside the folders inputs may come from",
             "file://" + str(outside): "file: inputs are not accepted",
             "ftp://example.com/x.wav": "ftp: inputs are not accepted",
             "gopher://example.com/x": "gopher: inputs are not accepted"}
    for audio, reason in cases.items():
        code = f"t-{uuid.uuid4().hex[:8]}"
        assert submit(srv, audio_url=audio, video_url="avatar.mp4", code=code)["code"] == 10000
        data = query(srv, code)["data"]
        assert data["status"] == 3 and data["msg"].startswith("audio_url: "), (audio, data)
        assert reason in data["msg"], (audio, data)


def test_dhserve_web_serves_and_warns_when_exposed_without_a_key(tmp_path):
    """Also: a 20 kB `code` reaches the app through dhserve's Gunicorn (no bare 414: every
    /easy answer is an envelope), and GUNICORN_CMD_ARGS is applied as plain Gunicorn does."""
    port = free_port()
    log = tmp_path / "web.log"
    process = dhserve_process("web", "--bind", f"0.0.0.0:{port}",
                              env={"DHSERVE_DATA_DIR": str(tmp_path / "data"),
                                   "GUNICORN_CMD_ARGS": "--keep-alive 7"}, log=log)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/livez"), 60, "dhserve web")
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health["status"] == "degraded" and health["workers"] == []
        long_code = "c" * 20_000
        answer = requests.get(f"http://127.0.0.1:{port}/easy/query", params={"code": long_code},
                              timeout=10)
        assert answer.status_code == 200, answer.text[:300]
        assert answer.json()["code"] in (10002, 10004), answer.text[:300]
        assert long_code not in answer.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    text = log.read_text()
    assert "without an API key" in text
    assert "keep-alive 7 s (GUNICORN_CMD_ARGS applied)" in text


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code == 200
    except (requests.ConnectionError, requests.Timeout):   # not up yet, or a busy machine
        return False
