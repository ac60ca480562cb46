"""Job queue figures: submit rate and claim-to-start latency, SQLite and PostgreSQL.

    python benchmarks/bench_jobs.py [--submits 2000] [--samples 20] [--postgres URL] [--json]

Submit rate: one client submitting serially, and four clients at once; the baseline is a bare
one-row INSERT transaction on the same database in the same run, so the ratio shows what the
queue's rules (idempotency check, queue bound, notify) cost. Claim latency: real `dhserve
worker` processes (1 and 4) wait idle; jobs are submitted one at a time and the latency is
started_at - created_at, both read from the database's clock. The jobs name a missing input,
so they fail at once: the figure is the queue's, not the renderer's.
Targets (issue 3): >= 500 submits/s on SQLite on 2 cores; claim latency <= 50 ms when idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from dhserve.jobs import JobSpec, JobStore
from dhserve.jobs.schema import jobs

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

CLIENT = """
import sys, time
from dhserve.jobs import JobSpec, JobStore
store = JobStore(sys.argv[1], max_queued=10**9)
n, me = int(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
for i in range(n):
    store.submit(f"{me}-{i}", JobSpec("/media/avatar.mp4", "/media/speech.wav"))
print(time.perf_counter() - start)
"""


def bare_insert_rate(url: str, n: int) -> float:
    """Baseline: one-row INSERT transactions through the same engine, nothing else."""
    store = JobStore(url)
    start = time.perf_counter()
    for i in range(n):
        with store._write() as conn:
            conn.execute(jobs.insert().values(
                id=f"bare-{i}", seq=-1 - i, state="succeeded", priority=0, progress=0, stage="",
                spec={}, attempts=0, created_at=0.0, cancel_requested=False))
    rate = n / (time.perf_counter() - start)
    with store.engine.begin() as conn:
        conn.execute(jobs.delete().where(jobs.c.id.like("bare-%")))
    store.close()
    return rate


def submit_rate(url: str, n: int, clients: int) -> float:
    run = uuid.uuid4().hex[:6]
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, url, str(n // clients),
                               f"{run}-c{c}"], stdout=subprocess.PIPE, text=True)
             for c in range(clients)]
    seconds = [float(p.communicate()[0]) for p in procs]
    store = JobStore(url)
    with store.engine.begin() as conn:      # the claim-latency runs need an empty queue
        conn.execute(jobs.delete().where(jobs.c.id.like(f"{run}-%")))
    store.close()
    return (n // clients) * clients / max(seconds)


def claim_latency(url: str, data_dir: Path, workers: int, samples: int) -> dict[str, float]:
    store = JobStore(url, max_queued=10**9)
    env_args = ["--data-dir", str(data_dir), "worker", "--database-url", url]
    procs = [subprocess.Popen([sys.executable, "-m", "dhserve.cli", *env_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(workers)]
    try:
        deadline = time.monotonic() + 120
        while sum(w.ready for w in store.workers()) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.2)
        time.sleep(1.0)                     # let every worker settle into its idle wait
        latencies = []
        for i in range(samples):
            job_id = f"lat-{uuid.uuid4().hex[:8]}-{i}"
            store.submit(job_id, JobSpec("/nonexistent/avatar.mp4", "/nonexistent/a.wav"))
            while (job := store.get(job_id)).started_at is None:
                time.sleep(0.002)
            latencies.append((job.started_at - job.created_at) * 1000)
            time.sleep(0.3)                 # back to idle before the next one
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        store.close()
    return {"median_ms": statistics.median(latencies), "max_ms": max(latencies),
            "p90_ms": statistics.quantiles(latencies, n=10)[-1]}


def postgres_schema(url: str) -> str:
    schema = f"dhserve_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def bench(name: str, url: str, args, work: Path) -> dict:
    JobStore(url).close()                   # migrate once, outside the timings
    figures: dict = {"engine": name}
    figures["bare_insert_per_s"] = bare_insert_rate(url, args.submits)
    figures["submit_per_s_1_client"] = submit_rate(url, args.submits, 1)
    figures["submit_per_s_4_clients"] = submit_rate(url, args.submits, 4)
    figures["submit_vs_bare_insert"] = (figures["submit_per_s_1_client"]
                                        / figures["bare_insert_per_s"])
    for workers in (1, 4):
        figures[f"claim_latency_{workers}_worker"] = claim_latency(
            url, work / f"{name}-{workers}", workers, args.samples)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="PostgreSQL server URL ('' to skip)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results.append(bench("sqlite", f"sqlite:///{work / 'bench.db'}", args, work))
        if args.postgres:
            try:
                schema = postgres_schema(args.postgres)
            except psycopg.OperationalError as exc:
                print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
            else:
                url = f"{args.postgres}?options=-csearch_path%3D{schema}"
                try:
                    results.append(bench("postgresql", url, args, work))
                finally:
                    drop_schema(args.postgres, schema)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(f"{r['engine']}:")
        print(f"  submit: {r['submit_per_s_1_client']:.0f}/s (1 client), "
              f"{r['submit_per_s_4_clients']:.0f}/s (4 clients); bare INSERT "
              f"{r['bare_insert_per_s']:.0f}/s; ratio {r['submit_vs_bare_insert']:.2f}")
        for workers in (1, 4):
            lat = r[f"claim_latency_{workers}_worker"]
            print(f"  claim latency, {workers} idle worker(s): median {lat['median_ms']:.1f} ms,"
                  f" p90 {lat['p90_ms']:.1f} ms, max {lat['max_ms']:.1f} ms")


if __name__ == "__main__":
    main()
