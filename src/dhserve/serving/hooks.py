"""Gunicorn server hooks for dhserve: the master stays CUDA-free and checks it; each worker is
pinned to its GPU before anything can initialise CUDA; in the all-in-one layout the renderer
starts after the fork and a worker leaving (HUP, max_requests, memory) lets its job finish.
This module is imported by the master: it must not import the engine (ONNX Runtime and
MediaPipe start threads and hold locks that a forked child inherits broken)."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import replace
from typing import Any

from dhserve.config import Settings
from dhserve.serving.cuda_guard import NVML_CHECK, cuda_initialised_here, refusal
from dhserve.serving.plan import ServingPlan
from dhserve.serving.supervisor import watch_supervisor
from dhserve.serving.watchdog import MemoryWatchdog

log = logging.getLogger("dhserve.serving")

GUARD_EXIT_STATUS = 4            # Gunicorn's "app failed to load"
WATCHDOG_INTERVAL_S = 1.0
EXIT_MARGIN_S = 5.0              # a leaving worker hands its job back this long before the
                                 # master's graceful_timeout would kill it


class ServingHooks:
    """The hooks, bound to one plan; their names are Gunicorn's."""

    def __init__(self, settings: Settings, plan: ServingPlan):
        self.settings = settings
        self.plan = plan
        os.environ.setdefault(*NVML_CHECK)     # inherited by every worker

    def as_options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "on_starting", "when_ready", "post_fork", "post_worker_init", "post_request",
            "worker_exit")}

    # -- master ------------------------------------------------------------------------------

    def on_starting(self, server: Any) -> None:
        for line in self.plan.describe():
            server.log.info("dhserve %s", line)

    def when_ready(self, server: Any) -> None:
        """Last moment before the first fork: refuse to go on with CUDA in the master."""
        evidence = cuda_initialised_here()
        if evidence:
            server.log.error(refusal(evidence))
            server.halt("CUDA initialised in the master", GUARD_EXIT_STATUS)
        if server.cfg.preload_app:
            server.log.warning("preload_app is on: the app is imported in the master; dhserve "
                               "needs it off (its models always load in the workers)")
        server.log.info("master is CUDA-free; workers load their models after the fork")
        watch_supervisor(lambda: os.kill(os.getpid(), signal.SIGTERM))

    # -- worker ------------------------------------------------------------------------------

    def post_fork(self, server: Any, worker: Any) -> None:
        """Before the app (or anything else) can touch CUDA in this worker: pin its GPU."""
        os.environ.update(self.plan.environment())        # /health shows this plan
        if self.plan.renders_in_web_workers:
            device = self.plan.devices[0]
            os.environ.update(device.environment())
            if device.gpu is None:
                server.log.info("Worker %s: renders on the CPU (no GPU selected)", worker.pid)
            else:
                gpu = next(g for g in self.plan.gpus if g["index"] == device.gpu)
                server.log.info("Worker %s: GPU ok: GPU %s (%s, %.1f GiB) as cuda:0",
                                worker.pid, device.gpu, gpu["name"],
                                gpu["memory_total_mb"] / 1024)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""   # web only: it can never make a context
            server.log.info("Worker %s: web only, GPUs hidden (renderers are separate "
                            "processes)", worker.pid)

    def post_worker_init(self, worker: Any) -> None:
        worker.dhserve_watchdog = MemoryWatchdog(self.plan.max_memory_mb, check_gpu=False)
        worker.dhserve_checked = 0.0
        worker.dhserve_renderer = None
        if not self.plan.renders_in_web_workers:
            return
        from dhserve.serving.renderer import InProcessRenderer  # the engine: never in the master

        settings = replace(self.settings, device=self.plan.devices[0].setting,
                           batch_size=self.plan.batch_size)

        def recycle(reason: str) -> None:
            worker.log.info("Worker %s: recycling after its job (%s)", worker.pid, reason)
            worker.alive = False

        worker.dhserve_renderer = InProcessRenderer(settings, self.plan.max_memory_mb, recycle)
        worker.dhserve_renderer.start()

    def post_request(self, worker: Any, req: Any, environ: Any, resp: Any) -> None:
        """A web-only worker over the memory limit leaves after this request (the renderer of
        an all-in-one worker checks after each job instead)."""
        now = time.monotonic()
        if worker.dhserve_renderer is not None or now - worker.dhserve_checked < \
                WATCHDOG_INTERVAL_S:
            return
        worker.dhserve_checked = now
        reason = worker.dhserve_watchdog.over_limit()
        if reason and worker.alive:
            worker.log.info("Worker %s: recycling (%s)", worker.pid, reason)
            worker.alive = False

    def worker_exit(self, server: Any, worker: Any) -> None:
        """The worker is leaving: its render finishes within the grace, else is handed back."""
        renderer = getattr(worker, "dhserve_renderer", None)
        if renderer is None:
            return
        grace = max(0.0, min(self.settings.stop_grace_seconds,
                             self.plan.graceful_timeout - EXIT_MARGIN_S))
        renderer.stop(grace)
        if not renderer.join(grace + EXIT_MARGIN_S):
            server.log.warning("Worker %s: renderer did not stop in time", worker.pid)
