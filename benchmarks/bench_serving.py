"""Serving figures: does the API stay fast while a render runs, and the render while it serves?

    python benchmarks/bench_serving.py [--seconds 20] [--clients 50] [--rate 300]
        [--layouts split,all-in-one,sync] [--repeat-speech 60]

For each layout, in the same run, a real `dhserve serve --mode gunicorn` on a fresh data dir
(CPU renderer): split (2 gthread web workers + a `dhserve worker` process; split-nice0: the
same with DHSERVE_RENDER_NICE=0, the renderer at the web tier's priority), all-in-one (one
gthread worker rendering in a background thread) and sync (all-in-one with
GUNICORN_WORKER_CLASS=sync: one request at a time, the naive layout). Once /readyz answers
200: a warm-up job (examples/speech.wav) so the avatar's face analysis is cached for both
measured jobs; then a job on examples/speech.wav (11.8 s) repeated --repeat-speech times (60:
~12 min of video, which must outlast both load windows: a job that ends inside them is
noted) with no HTTP load (render alone); then the same job again, and once it is lip-syncing:
(1) `--clients` closed-loop keep-alive clients for `--seconds`, each alternating GET
/easy/query?code=<that job> and GET /health (half of them start with each); (2) an open loop
offering `--rate` requests/s of the same two for `--seconds`, latency counted from each
request's scheduled start. Printed: requests/s, p50/p99 latency, non-200 answers per phase,
both jobs' render seconds (HeyGem's `cost`) and their ratio, plus the progress rate during
the load windows against the alone job's over a window of the same length (the whole job's
cost also counts the time after the load ended). The clients share the machine's cores with
the server and the renderer. Figures only: nothing is asserted; exit status 0.

Why two phases: 50 closed-loop clients with no think time keep 50 requests in flight, so by
Little's law their mean latency is 50 / throughput; "p99 <= 50 ms" with them would take more
than 1000 requests/s. A rate target ("p99 at 300 requests/s") is a statement about an
offered rate, which the open loop measures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import requests

sys.path.insert(0, str(Path(__file__).parent))
from bench_api import ROOT, free_port, load

DHSERVE = ROOT / ".venv" / "bin" / "dhserve"
LAYOUTS = {"split": ("split", {}), "all-in-one": ("all-in-one", {}),
           "sync": ("all-in-one", {"GUNICORN_WORKER_CLASS": "sync"}),
           # the render worker at the web tier's CPU priority: what DHSERVE_RENDER_NICE buys
           "split-nice0": ("split", {"DHSERVE_RENDER_NICE": "0"})}
TARGET = ("target on 2 cores, split: p99 <= 50 ms at >= 300 req/s; "
          "render within 10 % of alone")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (dhserve's children run in their own sessions)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    found, frontier = [], [pid]
    while frontier:
        pid = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == pid]
        found += kids
        frontier += kids
    return found


def offered(url: str, make_request, rate: float, seconds: float,
            senders: int = 64) -> dict[str, float]:
    """Open loop: request k starts at k/rate s whatever earlier answers did, and its latency
    counts from that scheduled start, so a server that falls behind shows it (no coordinated
    omission). The figure a rate target ("p99 at 300 requests/s") is about."""
    local = threading.local()
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(due: float, k: int) -> None:
        nonlocal errors
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = make_request(local.session, url, k, 0)
        with lock:
            latencies.append(time.perf_counter() - due)
            errors += response.status_code != 200

    began = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        for k in range(int(rate * seconds)):
            due = began + k / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(one, due, k)
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "errors": errors,
            "requests": len(latencies)}


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to dhserve; after 60 s, SIGKILL its group and every process it started."""
    family = descendants(server.pid)
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        print(f"  dhserve (pid {server.pid}) did not stop in 60 s: killing it", flush=True)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    for pid in family:                        # leftovers of a stop that went wrong
        try:
            if b"dhserve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def query(url: str, code: str) -> dict:
    return requests.get(url + "/easy/query", params={"code": code}, timeout=30).json()["data"]


def submit(url: str, code: str, audio: str) -> None:
    body = {"video_url": "avatar.mp4", "audio_url": audio, "code": code}
    answer = requests.post(url + "/easy/submit", json=body, timeout=30).json()
    if answer["code"] != 10000:
        raise RuntimeError(f"submit {code}: {answer}")


def follow(url: str, code: str, seconds: float, during=None) -> dict:
    """Waits until the job lip-syncs, runs `during()` (or sleeps `seconds`), then waits for
    the end; returns its cost, progress %/s over that window and whether it ended inside."""
    while (data := query(url, code))["status"] == 1 and data.get("msg") != "lip-sync":
        time.sleep(0.2)
    began, first = time.perf_counter(), data.get("progress", 0)
    figures = during() if during else time.sleep(seconds)
    data = query(url, code)
    rate = (data["progress"] - first) / (time.perf_counter() - began)
    early = data["status"] != 1
    while data["status"] == 1:
        time.sleep(0.5)
        data = query(url, code)
    if data["status"] != 2:
        raise RuntimeError(f"job {code} failed: {data.get('msg')}")
    return {"cost": data["cost"], "rate": rate, "early": early,
            "video_s": data["video_duration"] / 1000, "load": figures}


def hit(session: requests.Session, url: str, me: int, i: int, code: str):
    """One request of the load: /easy/query and /health in turn; a failure counts non-200."""
    try:
        if (me + i) % 2:
            return session.get(url + "/health", timeout=30)
        return session.get(url + "/easy/query", params={"code": code}, timeout=30)
    except requests.RequestException:
        return SimpleNamespace(status_code=0)


def run_layout(name: str, args: argparse.Namespace) -> dict:
    layout, extra = LAYOUTS[name]
    data = Path(tempfile.mkdtemp(prefix=f"dhserve-bench-serving-{name}-"))
    temp = data / "temp"
    temp.mkdir()
    shutil.copy(ROOT / "examples" / "avatar.mp4", temp / "avatar.mp4")
    shutil.copy(ROOT / "examples" / "speech.wav", temp / "speech.wav")
    with wave.open(str(ROOT / "examples" / "speech.wav")) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    with wave.open(str(temp / "long.wav"), "wb") as out:
        out.setparams(params)
        out.writeframes(frames * args.repeat_speech)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(data / "server.out", "wb") as log:        # the server keeps its own copy
        server = subprocess.Popen(
            [str(DHSERVE), "--data-dir", str(data), "serve", "--layout", layout, "--mode",
             "gunicorn", "--bind", f"127.0.0.1:{port}"], env={**os.environ, **extra},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=data)
    try:
        deadline = time.monotonic() + 180
        while not _answers(url + "/readyz"):
            if time.monotonic() > deadline or server.poll() is not None:
                tail = (data / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name}: /readyz never answered 200; server said:\n{tail}")
            time.sleep(0.5)
        run = uuid.uuid4().hex[:6]
        submit(url, f"warmup-{run}", "speech.wav")
        follow(url, f"warmup-{run}", 0)
        submit(url, f"alone-{run}", "long.wav")
        alone = follow(url, f"alone-{run}", 2 * args.seconds)   # as long as both loads
        code = f"loaded-{run}"
        submit(url, code, "long.wav")

        def request(session, url, me, i):
            return hit(session, url, me, i, code)

        loaded = follow(url, code, 2 * args.seconds, lambda: (
            load(url, request, args.clients, args.seconds),
            offered(url, request, args.rate, args.seconds)))
    finally:
        stop(server)
        worker = [line for line in (data / "server.out").read_text(errors="replace").splitlines()
                  if "Using worker:" in line]
        shutil.rmtree(data, ignore_errors=True)
    return {"alone": alone, "loaded": loaded,
            "worker": worker[-1].rsplit(":", 1)[1].strip() if worker else "?"}


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--layouts", default="split,all-in-one,sync",
                        help=f"any of {', '.join(LAYOUTS)}")
    parser.add_argument("--rate", type=float, default=300.0,
                        help="requests/s offered in the open-loop phase")
    parser.add_argument("--repeat-speech", type=int, default=60,
                        help="times examples/speech.wav (11.8 s) repeats in the measured jobs")
    args = parser.parse_args()
    names = [n.strip() for n in args.layouts.split(",") if n.strip()]
    unknown = set(names) - set(LAYOUTS)
    if unknown:
        parser.error(f"unknown layouts {sorted(unknown)}; known: {', '.join(LAYOUTS)}")
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.clients} clients for {args.seconds:g} s alternating GET /easy/query and GET "
          f"/health; speech x{args.repeat_speech}; CPU render, classic backend by default")
    results = {}
    for name in names:
        print(f"running {name} ...", flush=True)
        results[name] = run_layout(name, args)
    print(f"\n{'layout':<11}{'worker':>8}{'load':>15}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'non-200':>8}{'alone s':>9}{'loaded s':>9}{'ratio':>7}{'window':>8}")
    for name, r in results.items():
        alone, loaded = r["alone"], r["loaded"]
        window = loaded["rate"] / alone["rate"] if alone["rate"] else float("nan")
        for label, figures in zip((f"{args.clients} clients", f"{args.rate:g}/s offered"),
                                  loaded["load"]):
            print(f"{name:<11}{r['worker']:>8}{label:>15}{figures['rps']:8.0f}"
                  f"{figures['p50_ms']:8.1f}{figures['p99_ms']:8.1f}{figures['errors']:8d}"
                  f"{alone['cost']:9.1f}{loaded['cost']:9.1f}"
                  f"{loaded['cost'] / alone['cost']:7.2f}{window:8.2f}")
    print(f"(ratio: loaded / alone render seconds; window: progress rate during the two load "
          f"windows / alone's, below 1 is slower; video {alone['video_s']:.1f} s per job)")
    print(f"\n{TARGET}")
    for name, r in results.items():
        closed, opened = r["loaded"]["load"]
        ratio = r["loaded"]["cost"] / r["alone"]["cost"]
        kept_up = opened["rps"] >= 0.97 * args.rate and args.rate >= 300
        said = [(f"{args.rate:g}/s offered: {opened['rps']:.0f} req/s, p99 "
                 f"{opened['p99_ms']:.0f} ms ("
                 f"{'meets' if opened['p99_ms'] <= 50 and kept_up else 'misses'})"),
                (f"{args.clients} closed-loop clients: {closed['rps']:.0f} req/s, p99 "
                 f"{closed['p99_ms']:.0f} ms"),
                f"render {ratio - 1:+.0%} ({'within' if ratio <= 1.10 else 'outside'} 10 %)"]
        early = [job for job in ("alone", "loaded") if r[job]["early"]]
        if early:
            said.append(f"NOTE: the {' and '.join(early)} job ended before its window did "
                        "(raise --repeat-speech)")
        print(f"  {name}: " + "; ".join(said))
    print(f"\n{args.clients} closed-loop clients with no think time keep {args.clients} requests "
          "in flight: by Little's law mean latency = clients / throughput, so p99 <= 50 ms "
          f"there would need > {args.clients / 0.05:.0f} req/s. The rate target is judged on "
          "the open-loop phase.")


if __name__ == "__main__":
    main()
