"""dhserve's Prometheus metrics, defined once, for every process that records them (web
workers, render workers, the all-in-one worker) and for GET /metrics, which exposes them.

Under `dhserve serve` and Gunicorn the processes share prometheus_client's multiprocess folder
(PROMETHEUS_MULTIPROC_DIR, set before any of them starts): each writes its own files and a
scrape merges them. A process without that variable (tests, `dhserve render`) keeps the default
in-memory registry. What is true of the whole service rather than of one process (the queue,
the workers' heartbeats, the GPUs) is read at scrape time by the answering web worker
(ServiceCollector), so several web workers never count it twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from dhserve.config import active_metrics_dir

# Read before prometheus_client is imported, as prometheus_client reads it itself.
MULTIPROCESS_DIR = active_metrics_dir()
if MULTIPROCESS_DIR is not None:
    MULTIPROCESS_DIR.mkdir(parents=True, exist_ok=True)

import psutil
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from dhserve.jobs.store import JobStore

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4     # the text format every Prometheus version reads
MIB = 2**20
RSS_INTERVAL_S = 1.0

JOBS_SUBMITTED = Counter(
    "dhserve_jobs_submitted", "Jobs created through the HTTP API, by API (replays of an "
    "existing id not counted; inputs refused on arrival counted).", ["api"])
JOBS_FINISHED = Counter(
    "dhserve_jobs_finished", "Jobs that reached a final state, by state, counted by the "
    "process that recorded it.", ["state"])
QUEUE_WAIT = Histogram(
    "dhserve_job_queue_wait_seconds", "From a job's submit to a render worker's claim of it, "
    "each claim (a requeued job's later claims are measured from its submit too: its earlier "
    "attempts included).",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
RENDER_DURATION = Histogram(
    "dhserve_job_render_duration_seconds", "Wall time of one render attempt, from claim to "
    "its recorded outcome, by outcome.", ["state"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600))
RENDER_FPS = Histogram(
    "dhserve_render_frames_per_second", "Output frames per second of each successful render "
    "(frames / wall time of the whole render).",
    buckets=(1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300))
HTTP_DURATION = Histogram(
    "dhserve_http_request_duration_seconds", "HTTP requests by route (the URL rule, not the "
    "path), method and status.", ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

_rss: Gauge | None = None
_rss_lock = threading.Lock()
_rss_checked = 0.0


def record_rss(throttle: bool = False) -> None:
    """Publishes this process's resident memory (dhserve_process_resident_memory_bytes, one
    series per live process: prometheus_client's own process collector does not work across
    processes). Made on first use, so a process that never calls this publishes nothing."""
    global _rss, _rss_checked
    now = time.monotonic()
    if throttle and now - _rss_checked < RSS_INTERVAL_S:
        return
    _rss_checked = now
    with _rss_lock:
        if _rss is None:
            _rss = Gauge("dhserve_process_resident_memory_bytes",
                         "Resident memory of each dhserve process (web and render workers).",
                         multiprocess_mode="liveall")
    _rss.set(psutil.Process().memory_info().rss)


def observe_claim(queued_seconds: float) -> None:
    QUEUE_WAIT.observe(max(queued_seconds, 0.0))


def observe_render(state: str, seconds: float, fps: float | None = None) -> None:
    RENDER_DURATION.labels(state).observe(max(seconds, 0.0))
    if fps:
        RENDER_FPS.observe(fps)


def count_finished(state: str, n: int = 1) -> None:
    if n > 0:
        JOBS_FINISHED.labels(state).inc(n)


class ServiceCollector:
    """The service as the job store and NVML see it, read when a scrape arrives."""

    def __init__(self, store: JobStore, silent_after_s: float, gpu_max_age_s: float = 2.0):
        self.store = store
        self.silent_after_s = silent_after_s
        self.gpu_max_age_s = gpu_max_age_s

    def collect(self) -> Iterator[Metric]:
        yield from self._store_metrics()
        yield from gpu_metrics(self.gpu_max_age_s)

    def _store_metrics(self) -> Iterator[Metric]:
        import sqlalchemy as sa

        from dhserve.jobs.model import JobState

        up = GaugeMetricFamily("dhserve_store_up", "1 when the job store answered this scrape.")
        try:
            now, counts, workers = self.store.overview()
        except sa.exc.SQLAlchemyError:      # unreachable, pool exhausted, tables gone
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("dhserve_queue_depth", "Jobs waiting for a render worker.")
        depth.add_metric([], counts[JobState.QUEUED])
        yield depth
        jobs = GaugeMetricFamily("dhserve_jobs", "Jobs in the store by state (finished ones "
                                 "until their retention ends).", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state.value], n)
        yield jobs
        labels = ["worker", "host", "device"]
        age = GaugeMetricFamily("dhserve_worker_heartbeat_age_seconds",
                                "Seconds since each render worker's last heartbeat.",
                                labels=labels)
        fps = GaugeMetricFamily("dhserve_worker_frames_per_second",
                                "Output frames per second of each busy render worker's "
                                "current render, over its last seconds.", labels=labels)
        by_state = GaugeMetricFamily("dhserve_workers", "Render workers by state (silent: no "
                                     "heartbeat for 3 intervals).", labels=["state"])
        states = dict.fromkeys(("starting", "idle", "busy", "stopping", "silent"), 0)
        for w in workers:
            seconds = w.heartbeat_age(now)
            age.add_metric([w.id, w.host, w.device], seconds)
            silent = seconds > self.silent_after_s
            state = "silent" if silent else w.state
            states[state] = states.get(state, 0) + 1
            if w.fps is not None and not silent:
                fps.add_metric([w.id, w.host, w.device], w.fps)
        for state, n in states.items():
            by_state.add_metric([state], n)
        yield from (age, fps, by_state)


def gpu_metrics(max_age_s: float) -> Iterator[Metric]:
    """Per GPU: utilisation and memory, from NVML; nothing at all where there is no GPU."""
    from dhserve.runtime.gpu import gpu_summary

    summary = gpu_summary(max_age=max_age_s)
    if not summary.get("available"):
        return
    labels = ["gpu", "name"]
    utilization = GaugeMetricFamily("dhserve_gpu_utilization_ratio", "Share of the last "
                                    "sample period a kernel ran on the GPU (NVML), 0..1.",
                                    labels=labels)
    used = GaugeMetricFamily("dhserve_gpu_memory_used_bytes", "GPU memory in use (NVML), all "
                             "processes.", labels=labels)
    total = GaugeMetricFamily("dhserve_gpu_memory_total_bytes", "GPU memory (NVML).",
                              labels=labels)
    for device in summary["devices"]:
        key = [str(device["index"]), device["name"]]
        if device["utilization_percent"] is not None:
            utilization.add_metric(key, device["utilization_percent"] / 100.0)
        used.add_metric(key, device["memory_used_mb"] * MIB)
        total.add_metric(key, device["memory_total_mb"] * MIB)
    yield from (utilization, used, total)


class _ThisProcess:
    """The default registry's metrics (this process only), for a single-process service."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(*collectors: object) -> bytes:
    """The text a scrape gets: every process's metrics (merged from the multiprocess folder,
    or this process's own) and the given collectors' figures."""
    registry = CollectorRegistry()
    if MULTIPROCESS_DIR is not None:
        MultiProcessCollector(registry, path=str(MULTIPROCESS_DIR))
    else:
        registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
