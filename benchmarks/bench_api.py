"""HTTP API figures: requests/s and latency of the HeyGem routes under a real Gunicorn.

    python benchmarks/bench_api.py [--seconds 10] [--clients 16] [--workers 2] [--threads 8]

The web tier alone (no render worker: the figure is the API's, not the renderer's) on SQLite
in a fresh data dir. Each phase runs `--clients` threads, each with a keep-alive session,
for `--seconds`: GET /livez (touches nothing: the baseline, in the same run), GET
/easy/query of existing jobs, GET /health, and POST /easy/submit with distinct codes (the
inputs are probed by content on every submit). Clients and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, make_request, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(me: int) -> None:
        nonlocal errors
        session = requests.Session()
        mine, bad, i = [], 0, 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            response = make_request(session, url, me, i)
            mine.append(time.perf_counter() - started)
            bad += response.status_code != 200
            i += 1
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "errors": errors,
            "requests": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dhserve-bench-api-"))
    data = root / "data"
    (data / "temp").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "avatar.mp4", data / "temp" / "avatar.mp4")
    shutil.copy(ROOT / "examples" / "speech.wav", data / "temp" / "speech.wav")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DHSERVE_DATA_DIR": str(data), "DHSERVE_MAX_QUEUED": "1000000"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", str(args.workers),
         "--threads", str(args.threads), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
         "dhserve.api:create_app()"], cwd=root, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/livez", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("gunicorn did not start")
            time.sleep(0.2)
        body = {"audio_url": "speech.wav", "video_url": "avatar.mp4"}
        codes = [f"seed-{i}" for i in range(100)]
        for code in codes:
            requests.post(url + "/easy/submit", json={**body, "code": code}, timeout=30)
        run = uuid.uuid4().hex[:6]
        phases = {
            "GET /livez (baseline)": lambda s, u, me, i: s.get(u + "/livez"),
            "GET /easy/query": lambda s, u, me, i: s.get(u + "/easy/query",
                                                         params={"code": codes[i % 100]}),
            "GET /health": lambda s, u, me, i: s.get(u + "/health"),
            "POST /easy/submit": lambda s, u, me, i: s.post(
                u + "/easy/submit", json={**body, "code": f"{run}-{me}-{i}"}),
        }
        print(f"gunicorn gthread {args.workers} workers x {args.threads} threads, "
              f"{args.clients} clients, {args.seconds:g} s per phase, {os.cpu_count()} cores")
        baseline = None
        for name, request in phases.items():
            figures = load(url, request, args.clients, args.seconds)
            baseline = baseline or figures["rps"]
            print(f"{name:<24} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:6.1f} ms  "
                  f"p99 {figures['p99_ms']:6.1f} ms  errors {figures['errors']}  "
                  f"({figures['rps'] / baseline:.2f} x baseline)")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
