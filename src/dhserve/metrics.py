"""dhserve's Prometheus metrics, defined once, for every process that records them (web
workers, render workers, the all-in-one worker) and for GET /metrics, which exposes them.

Each process role builds them with init() (serving/roles.py). Under `dhserve serve` and
Gunicorn the processes share prometheus_client's multiprocess folder: each writes its own files
and a scrape merges them. A process that records without init (tests, `dhserve render`) keeps
them in its own memory (prometheus_client's default registry). What is true of the whole
service rather than of one process (the queue, the workers' heartbeats, the GPUs) is read at
scrape time by the answering web worker (ServiceCollector), so several web workers never count
it twice. Importing this module defines nothing and reads nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from dhserve.config import METRICS_DIR_ENV
from dhserve.jobs.model import JobState
from dhserve.runtime.gpu import read_gpus

if TYPE_CHECKING:
    from dhserve.jobs.store import JobStore

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4     # the text format every Prometheus version reads
MIB = 2**20
RSS_INTERVAL_S = 1.0


class _Metrics:
    """This process's metric objects, made once by init()."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.jobs_submitted = Counter(
            "dhserve_jobs_submitted", "Jobs created through the HTTP API, by API (replays of "
            "an existing id not counted; inputs refused on arrival counted).", ["api"])
        self.jobs_finished = Counter(
            "dhserve_jobs_finished", "Jobs that reached a final state, by state, counted by "
            "the process that recorded it.", ["state"])
        self.queue_wait = Histogram(
            "dhserve_job_queue_wait_seconds", "From a job's submit to a render worker's claim "
            "of it, each claim (a requeued job's later claims are measured from its submit "
            "too: its earlier attempts included).",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
        self.render_duration = Histogram(
            "dhserve_job_render_duration_seconds", "Wall time of one render attempt, from "
            "claim to its recorded outcome, by outcome.", ["state"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600))
        self.render_fps = Histogram(
            "dhserve_render_frames_per_second", "Output frames per second of each successful "
            "render (frames / wall time of the whole render).",
            buckets=(1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300))
        self.http_duration = Histogram(
            "dhserve_http_request_duration_seconds", "HTTP requests by route (the URL rule, "
            "not the path), method and status.", ["route", "method", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                     30))
        self.rss: Gauge | None = None           # made on first use: see record_rss
        self.rss_checked = 0.0


_built: _Metrics | None = None
_lock = threading.Lock()


def init(folder: Path | None) -> None:
    """Builds this process's metrics, once, before it records any: in `folder`,
    prometheus_client's multiprocess folder that the service's processes share (made if
    missing), or with None in this process's memory. Called by each process role
    (serving/roles.py); a second call changes nothing (a different folder is logged)."""
    global _built
    with _lock:
        if _built is not None:
            if _built.folder != folder:
                log.warning("metrics not shared with the service (%s): this process built "
                            "them already (%s)", folder, _built.folder or "in memory")
            return
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            os.environ[METRICS_DIR_ENV] = str(folder)    # where prometheus_client opens files
            # prometheus_client picks how values are kept when it is imported; this process
            # may have imported it before it knew its folder (a forked Gunicorn worker did)
            values.ValueClass = values.MultiProcessValue()
        _built = _Metrics(folder)


def _metrics() -> _Metrics:
    if _built is None:
        init(None)
    assert _built is not None
    return _built


def record_rss(throttle: bool = False) -> None:
    """Publishes this process's resident memory (dhserve_process_resident_memory_bytes, one
    series per live process: prometheus_client's own process collector does not work across
    processes). Made on first use, so a process that never calls this publishes nothing."""
    m = _metrics()
    now = time.monotonic()
    if throttle and now - m.rss_checked < RSS_INTERVAL_S:
        return
    m.rss_checked = now
    with _lock:
        if m.rss is None:
            m.rss = Gauge("dhserve_process_resident_memory_bytes",
                          "Resident memory of each dhserve process (web and render workers).",
                          multiprocess_mode="liveall")
    m.rss.set(psutil.Process().memory_info().rss)


def count_submitted(api: str) -> None:
    """A job created through the HTTP API `api` (the blueprint: heygem, v1, …)."""
    _metrics().jobs_submitted.labels(api).inc()


def observe_claim(queued_seconds: float) -> None:
    _metrics().queue_wait.observe(max(queued_seconds, 0.0))


def observe_render(state: str, seconds: float, fps: float | None = None) -> None:
    m = _metrics()
    m.render_duration.labels(state).observe(max(seconds, 0.0))
    if fps:
        m.render_fps.observe(fps)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    _metrics().http_duration.labels(route, method, str(status)).observe(seconds)


def count_finished(state: str, n: int = 1) -> None:
    """Jobs that reached `state`: what a job store reports to its owner (JobStore's
    on_finished)."""
    if n > 0:
        _metrics().jobs_finished.labels(state).inc(n)


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
        import sqlalchemy as sa  # not in the Gunicorn master, which imports this module

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
        for job_state, n in counts.items():
            jobs.add_metric([job_state.value], n)
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
    summary = read_gpus(max_age=max_age_s)
    if not summary.available:
        return
    labels = ["gpu", "name"]
    utilization = GaugeMetricFamily("dhserve_gpu_utilization_ratio", "Share of the last "
                                    "sample period a kernel ran on the GPU (NVML), 0..1.",
                                    labels=labels)
    used = GaugeMetricFamily("dhserve_gpu_memory_used_bytes", "GPU memory in use (NVML), all "
                             "processes.", labels=labels)
    total = GaugeMetricFamily("dhserve_gpu_memory_total_bytes", "GPU memory (NVML).",
                              labels=labels)
    for device in summary.devices:
        key = [str(device.index), device.name]
        if device.utilization_percent is not None:
            utilization.add_metric(key, device.utilization_percent / 100.0)
        used.add_metric(key, device.memory_used_mb * MIB)
        total.add_metric(key, device.memory_total_mb * MIB)
    yield from (utilization, used, total)


class _ThisProcess:
    """The default registry's metrics (this process only), for a single-process service."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(*collectors: Collector) -> bytes:
    """The text a scrape gets: every process's metrics (merged from the multiprocess folder,
    or this process's own) and the given collectors' figures."""
    registry = CollectorRegistry()
    folder = _metrics().folder
    if folder is not None:
        MultiProcessCollector(registry, path=str(folder))
    else:
        registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
