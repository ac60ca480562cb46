"""A full data disk (issue 15): the web tier keeps answering — /livez, /health saying why it is
degraded, queries of existing jobs — its workers do not die (prometheus_client's memory-mapped
files used to live in the data dir: SIGBUS, hundreds of restarts a second), dh.log failures
are said once and not per line, and when space returns everything works again without a
restart. The data dir is a real small tmpfs, filled to the last byte."""

from __future__ import annotations

import errno
import itertools
import os
import re
import signal
import time
from pathlib import Path

import pytest
import requests
from conftest import small_tmpfs, wait_for
from serving_support import ServiceProcess, children, dhserve_cli, stage_example

SIZE_MB = 16


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs mounted as tmp_path/data."""
    with small_tmpfs(tmp_path / "data", f"{SIZE_MB}m") as data:
        yield data


def fill(folder: Path) -> Path:
    """Writes a file until the disk says ENOSPC; returns it."""
    filler = folder / "filler.bin"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with open(filler, "ab", buffering=0) as out:       # the last bytes too
        try:
            while True:
                out.write(b"\0")
        except OSError:
            pass
    return filler


def web_workers(service: ServiceProcess) -> set[int]:
    """The Gunicorn master's children (the web workers)."""
    master = next(p for p in children(service.process.pid)
                  if b"dhserve.serving.web" in Path(f"/proc/{p}/cmdline").read_bytes())
    return set(children(master))


RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[\d+\] ", re.MULTILINE)


def tracebacks(output: str) -> list[str]:
    """Log records (with the lines that follow them) that carry a traceback."""
    starts = [m.start() for m in RECORD.finditer(output)] + [len(output)]
    records = [output[a:b] for a, b in itertools.pairwise(starts)]
    return [r for r in records if "Traceback" in r]


def get(service: ServiceProcess, path: str) -> requests.Response:
    return requests.get(service.url + path, timeout=10)


def test_web_tier_answers_on_a_full_disk_and_recovers(small_disk, tmp_path):
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--layout", "split",
                                                   "--mode", "gunicorn"),
                             {"DHSERVE_MIN_FREE_MB": "2"}).wait_serving()
    try:
        stage_example(service.temp)
        service.submit("before-full")
        service.wait_done("before-full")
        assert service.health()["status"] == "ok"
        workers = web_workers(service)
        log = service.data / "log" / "dh.log"

        filler = fill(small_disk)
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < 4:          # polls while the disk is full
            answers += [get(service, "/livez").status_code,
                        get(service, "/easy/query?code=before-full").status_code]
        assert set(answers) == {200}, answers
        health = get(service, "/health")
        assert health.status_code == 200, health.text[:500]
        body = health.json()
        assert body["status"] == "degraded" and body["storage"]["ok"] is False, body
        assert any(r.startswith("storage: ") and "DHSERVE_MIN_FREE_MB" in r
                   for r in body["reasons"]), body["reasons"]
        task = get(service, "/easy/query?code=before-full").json()["data"]
        assert task["status"] == 2 and task["result"] == "/before-full-r.mp4", task
        assert get(service, "/v1/jobs/before-full").json()["state"] == "succeeded"
        assert web_workers(service) == workers          # no worker died or was replaced
        # a worker that ends (a recycle, a crash) is replaced by one that boots and serves
        gone = min(workers)
        os.kill(gone, signal.SIGKILL)
        workers = wait_for(lambda: (now := web_workers(service)) and gone not in now and
                           len(now) == 2 and now, 30, "Gunicorn to replace the killed worker")
        for _ in range(20):
            assert get(service, "/easy/query?code=before-full").status_code == 200
        assert web_workers(service) == workers
        full_log_size = log.stat().st_size

        filler.unlink()                                 # space returns
        body = wait_for(lambda: (h := service.health())["status"] == "ok" and h, 60,
                        "/health to be ok again")
        assert body["storage"]["ok"] and body["reasons"] == []
        for _ in range(5):
            assert get(service, "/easy/query?code=before-full").status_code == 200
        wait_for(lambda: log.stat().st_size > full_log_size, 10,
                 "dh.log to be written again")
        assert web_workers(service) == workers
    finally:
        service.stop()
    output = service.output()
    assert "Logging error" not in output, output[-3000:]
    assert not tracebacks(output), tracebacks(output)[:2]
    assert "SIGBUS" not in output and len(re.findall(r"was sent SIG", output)) == 1  # ours
    said = re.findall(r"dhserve: cannot write \S*dh\.log .*", output)
    # once per process that logged (supervisor, Gunicorn master, 3 web workers, renderer)
    assert 1 <= len(said) <= 6, said
    assert len(re.findall(r"dhserve: writing \S*dh\.log works again", output)) >= 1
    assert len(re.findall(r"web \(gunicorn\) started", output)) == 1
