"""Gunicorn server hooks for dhserve: the master stays CUDA-free and checks it; each worker is
pinned to its GPU before anything can initialise CUDA; in the all-in-one layout the renderer
starts after the fork and a worker leaving (HUP, max_requests, memory) lets its job finish.
This module is imported by the master: it must not import the engine (ONNX Runtime and
MediaPipe start threads and hold locks that a forked child inherits broken)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dhserve.config import METRICS_DIR_ENV, Settings, active_metrics_dir
from dhserve.serving.cuda_guard import (
    NVML_CHECK,
    cuda_initialised_here,
    engine_in_master,
    refusal,
)
from dhserve.serving.metrics_files import fresh_metrics_dir, mark_dead, remove_metrics_dir
from dhserve.serving.plan import ServingPlan
from dhserve.serving.roles import become_web_worker, start_renderer, web_watchdog
from dhserve.serving.supervisor import watch_supervisor
from dhserve.serving.watchdog import MemoryWatchdog

if TYPE_CHECKING:
    from dhserve.serving.renderer import InProcessRenderer

log = logging.getLogger("dhserve.serving")

GUARD_EXIT_STATUS = 4            # Gunicorn's "app failed to load"
WATCHDOG_INTERVAL_S = 1.0
EXIT_MARGIN_S = 5.0              # a leaving worker hands its job back this long before the
                                 # master's graceful_timeout would kill it
HAND_BACK_S = 3.0                # a render stops at its next frame batch: well within this
LEAVE_POLL_S = 0.2


def effective_settings(cfg: Any) -> str:
    """What Gunicorn runs with, after GUNICORN_CMD_ARGS and its command line: the line the
    master logs once it listens."""
    applied = " (GUNICORN_CMD_ARGS applied)" if cfg.get_cmd_args_from_env() else ""
    line = cfg.limit_request_line or "unlimited"
    return (f"{cfg.workers} x {cfg.worker_class_str} worker(s), {cfg.threads} thread(s), "
            f"timeout {cfg.timeout} s, keep-alive {cfg.keepalive} s{applied}, "
            f"request line {line}")


def in_effect(cfg: Any) -> dict[str, str]:
    """The plan's variables that GUNICORN_CMD_ARGS or Gunicorn's command line may have
    changed, as Gunicorn runs them (a worker's /health then reports what really serves)."""
    return {"GUNICORN_WORKERS": str(cfg.workers), "GUNICORN_THREADS": str(cfg.threads),
            "GUNICORN_WORKER_CLASS": cfg.worker_class_str, "GUNICORN_TIMEOUT": str(cfg.timeout),
            "GUNICORN_GRACEFUL_TIMEOUT": str(cfg.graceful_timeout),
            "GUNICORN_KEEPALIVE": str(cfg.keepalive)}


@dataclass
class WorkerState:
    """What dhserve keeps on a Gunicorn worker (`worker.dhserve`), from post_fork on."""

    watchdog: MemoryWatchdog                    # web-only workers: checked after requests
    renderer: InProcessRenderer | None = None   # all-in-one: the render loop in a thread
    requests: int = 0                           # served, for the renderer's max_requests
    checked: float = 0.0                        # when the watchdog last looked (monotonic)
    stop_lock: threading.Lock = field(default_factory=threading.Lock)
    stop_deadline: float | None = None          # set once the renderer's stop has begun


def state_of(worker: Any) -> WorkerState | None:
    """The worker's state; None before post_fork ran (a worker that failed to boot)."""
    return getattr(worker, "dhserve", None)


class ServingHooks:
    """The hooks, bound to one plan; their names are Gunicorn's."""

    def __init__(self, settings: Settings, plan: ServingPlan):
        self.settings = settings
        self.plan = plan
        self.metrics_dir: Path | None = None
        os.environ.setdefault(*NVML_CHECK)     # inherited by every worker

    def as_options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "on_starting", "when_ready", "post_fork", "post_worker_init", "post_request",
            "worker_int", "worker_abort", "worker_exit", "child_exit", "on_exit")}

    # -- master ------------------------------------------------------------------------------

    def on_starting(self, server: Any) -> None:
        for line in self.plan.describe():
            server.log.info("dhserve %s", line)

    def _share_metrics_dir(self) -> None:
        """Before the first fork, once the port is ours (so a second Gunicorn started by
        mistake cannot empty a running one's folder): every worker's metrics go to one folder.
        One given (PROMETHEUS_MULTIPROC_DIR, e.g. by `dhserve serve`, whose render workers
        already write there) is used as it is; otherwise Settings.metrics_path (in RAM,
        where a full data disk cannot fault its memory-mapped files) is made fresh, and
        removed by on_exit."""
        given = self.settings.metrics_dir
        if given is not None:
            self.metrics_dir = Path(given).resolve()
            self.metrics_dir.mkdir(parents=True, exist_ok=True)
            return
        self.metrics_dir = fresh_metrics_dir(self.settings.metrics_path)
        os.environ[METRICS_DIR_ENV] = str(self.metrics_dir)     # inherited by every worker

    def child_exit(self, server: Any, worker: Any) -> None:
        """In the master, once a worker has exited (however it ended, SIGKILL included):
        its live gauges leave /metrics. After a HUP Gunicorn runs these hooks on a new
        ServingHooks whose when_ready never ran: the folder is then the one in this process's
        environment, set by the first when_ready (or by `dhserve serve`)."""
        mark_dead(worker.pid, self.metrics_dir or active_metrics_dir())

    def on_exit(self, server: Any) -> None:
        """The master is stopping, its workers gone: the metrics folder it made goes too (one
        given to it, or made by `dhserve serve`, is left to its owner)."""
        folder = self.metrics_dir or active_metrics_dir()
        if folder is not None:
            remove_metrics_dir(folder)

    def when_ready(self, server: Any) -> None:
        """Last moment before the first fork: refuse what would break the workers, judged on
        Gunicorn's effective settings (command-line flags and GUNICORN_CMD_ARGS included)."""
        cfg = server.cfg
        evidence = cuda_initialised_here()
        problem = (refusal(evidence) if evidence else
                   engine_in_master() or
                   ("preload_app is on (--preload?): the app and what it imports would load in "
                    "the master and be inherited by every forked worker. Turn it off; dhserve "
                    "loads its models in each worker after the fork." if cfg.preload_app else
                    None))
        if (problem is None and self.plan.renders_in_web_workers and cfg.workers > 1
                and self.plan.devices[0].gpu is not None):
            problem = (f"{cfg.workers} workers with the all-in-one layout would each load the "
                       f"models on {self.plan.devices[0].label}: use 1 worker, or the split "
                       "layout (dhserve serve) for several web workers.")
        if problem:
            server.log.error(problem)
            server.halt("refused to start", GUARD_EXIT_STATUS)
        server.log.info("master is CUDA-free; workers load their models after the fork")
        server.log.info("gunicorn in effect: %s", effective_settings(cfg))
        self._share_metrics_dir()
        watch_supervisor(lambda: os.kill(os.getpid(), signal.SIGTERM))

    # -- worker ------------------------------------------------------------------------------

    def post_fork(self, server: Any, worker: Any) -> None:
        """Before the app (or anything else) can touch CUDA in this worker: it becomes a web
        worker of the plan (serving/roles.py: its GPU pinned, its metrics and log writer)."""
        os.environ.update(self.plan.environment())        # /health shows this plan,
        os.environ.update(in_effect(server.cfg))          # as Gunicorn runs it
        where = become_web_worker(self.plan)
        server.log.info("Worker %s: %s", worker.pid, where)
        worker.dhserve = WorkerState(web_watchdog(self.plan))

    def post_worker_init(self, worker: Any) -> None:
        def leave(reason: str) -> None:
            worker.log.info("Worker %s: recycling after its job (%s)", worker.pid, reason)
            os.kill(os.getpid(), signal.SIGTERM)   # seen by gthread and sync workers alike

        state = worker.dhserve
        state.renderer = start_renderer(self.settings, self.plan, leave)
        if state.renderer is not None:
            threading.Thread(target=self._stop_when_leaving, args=(worker,), daemon=True,
                             name="dhserve-leave-watch").start()

    def _stop_when_leaving(self, worker: Any) -> None:
        """The render's grace starts when the worker starts leaving — when the master's kill
        clock starts too — not after Gunicorn has drained its connections (a slow upload in
        flight would eat the time the hand-back needs)."""
        while worker.alive:
            time.sleep(LEAVE_POLL_S)
        self._begin_stop(worker)

    def _begin_stop(self, worker: Any) -> float:
        """Starts the renderer's stop once; returns when it must have ended (monotonic)."""
        state = worker.dhserve
        with state.stop_lock:
            if state.stop_deadline is None:
                grace = max(0.0, min(self.settings.stop_grace_seconds,
                                     worker.cfg.graceful_timeout - EXIT_MARGIN_S))
                state.stop_deadline = time.monotonic() + grace + HAND_BACK_S
                state.renderer.stop(grace)
            return state.stop_deadline

    def post_request(self, worker: Any, req: Any, environ: Any, resp: Any) -> None:
        """Recycling by requests and memory. A web-only worker leaves after this request; an
        all-in-one worker's renderer finishes its job first (Gunicorn's own max_requests is
        off there: it would cut the render short, again and again under steady polling)."""
        state = worker.dhserve
        if state.renderer is not None:
            state.requests += 1
            if self.plan.max_requests and state.requests == self.plan.max_requests:
                state.renderer.recycle(f"{self.plan.max_requests} requests served")
            return
        now = time.monotonic()
        if now - state.checked < WATCHDOG_INTERVAL_S:
            return
        state.checked = now
        reason = state.watchdog.over_limit()
        if reason and worker.alive:
            worker.log.info("Worker %s: recycling (%s)", worker.pid, reason)
            worker.alive = False

    def worker_int(self, worker: Any) -> None:
        """SIGINT/SIGQUIT (a quick stop, or the second Ctrl-C): hand the job back now, before
        Gunicorn exits the process under the render."""
        self._hand_back(worker)

    def worker_abort(self, worker: Any) -> None:
        """SIGABRT (the master's timeout): the job goes back to the queue, not lost."""
        self._hand_back(worker)

    def _hand_back(self, worker: Any) -> None:
        state = state_of(worker)
        renderer = state.renderer if state is not None else None
        if renderer is not None:
            renderer.stop(0)
            renderer.join(HAND_BACK_S)

    def worker_exit(self, server: Any, worker: Any) -> None:
        """The worker is leaving: its render finishes within the grace (what is left of
        Gunicorn's graceful_timeout, as in effect), else is handed back."""
        state = state_of(worker)
        renderer = state.renderer if state is not None else None
        if renderer is None:
            return
        deadline = self._begin_stop(worker)
        if not renderer.join(max(0.0, deadline - time.monotonic())):
            server.log.warning("Worker %s: renderer did not stop in time", worker.pid)
