"""The render worker: loads the engine once in its own process, then claims and renders jobs.

It never forks after loading models. A heartbeat thread keeps the lease of the running job and
the worker's own row fresh; progress is written at most about once a second. Stopping (SIGTERM,
SIGINT, or stop()) stops claiming, gives the running render a grace period, then hands the job
back so another worker takes it at once (a job still downloading its inputs is handed back at
once: downloads look at cancel and stop a few times a second). Recycling (SIGHUP, recycle(),
or the memory check after a job) stops claiming and exits once the running job is done: no
grace period, no hand-back.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dhserve import metrics
from dhserve.config import Settings, diagnostic_environment
from dhserve.engine.face import AnalysisCache
from dhserve.engine.face.restore import FaceRestorer
from dhserve.engine.lipsync import LipSyncBackend, create_backend, resolve_backend
from dhserve.engine.pipeline import render
from dhserve.engine.preflight import RenderOptions
from dhserve.engine.progress import Progress
from dhserve.errors import Canceled, DhserveError, RenderInternal, first_line
from dhserve.jobs.admission import check_background_image
from dhserve.jobs.downloads import download, is_url
from dhserve.jobs.model import BACKGROUND, Job, JobState, download_dir, result_path
from dhserve.jobs.options import job_render_options
from dhserve.jobs.retention import prune_finished, remove_earlier_partials
from dhserve.jobs.store import JobStore
from dhserve.jobs.wakeup import Wakeup
from dhserve.logs import job_context
from dhserve.signals import handle_signals
from dhserve.stages import Stage

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
HOUSEKEEPING_INTERVAL_S = 3600.0
STORE_ERRORS = (sa.exc.DBAPIError,)
FPS_WINDOW_S = 5.0          # frames per second are measured over the last few seconds


class _Running:
    """The job in hand and why it should stop, if it should."""

    def __init__(self, job: Job):
        self.job = job
        self.stop_reason: str | None = None       # "canceled", "handback" or "lost"
        self.stopped = threading.Event()
        self.started = time.monotonic()
        self.claimed_at = time.time()             # file times compare with this clock
        self.fps: float | None = None             # output frames/s, recent (None: not yet)
        self.outcome: str | None = None           # the final state it is recorded with
        self.render_fps: float | None = None      # frames / seconds of the whole render

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopped.set()


class _JobProgress(Progress):
    """Writes progress to the store (throttled), renewing the lease as it goes."""

    def __init__(self, worker: RenderWorker, running: _Running):
        self.worker = worker
        self.running = running
        self._last_write = 0.0
        self._last_stage = ""
        self._frames: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, fraction: float, stage: str) -> None:
        if stage != Stage.LIP_SYNC and self.running.fps is not None:
            self.running.fps = None         # frames/s are lip-sync's: not kept into encoding
            self._frames.clear()
        now = time.monotonic()
        if now - self._last_write < PROGRESS_INTERVAL_S and (
                stage == self._last_stage or now - self._last_write < 0.2):
            return
        self._last_write, self._last_stage = now, stage
        self.worker.renew(self.running, min(int(fraction * 100), 99), stage)

    def check_canceled(self) -> None:
        if self.running.stopped.is_set():
            raise Canceled(f"render stopped: {self.running.stop_reason}")

    def frames(self, done: int, total: int) -> None:
        """Frames per second over the last FPS_WINDOW_S, written with the next progress."""
        now = time.monotonic()
        window = self._frames
        window.append((now, done))
        while len(window) > 2 and now - window[1][0] >= FPS_WINDOW_S:
            window.popleft()
        first_t, first_done = window[0]
        if now > first_t:
            self.running.fps = (done - first_done) / (now - first_t)


class _StoreOutage:
    """Logs a job store outage twice, when calls start failing and when one succeeds again,
    not once per failed call (renewals fail about once a second while a render runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0

    def failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
            self._failures += 1
        if first:
            log.warning("job store unreachable (%s: %s); retrying, quietly until it answers",
                        what, first_line(exc))

    def succeeded(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            lasted, failures = time.monotonic() - self._since, self._failures
            self._since, self._failures = None, 0
        log.warning("job store reachable again after %.0f s (%d failed call(s))", lasted,
                    failures)


class RenderWorker:
    """Claims jobs from `store` and renders them with engine objects made once, here."""

    def __init__(self, settings: Settings, store: JobStore | None = None,
                 worker_id: str | None = None,
                 recycle_check: Callable[[], str | None] | None = None):
        """`recycle_check` runs after each job: a reason (e.g. memory over the limit) makes
        the worker exit then, with `recycle_reason` set, for its supervisor to start anew."""
        self.settings = settings
        self.recycle_check = recycle_check
        self.recycle_reason: str | None = None
        self.store = store or JobStore.from_settings(settings)
        self.store.on_finished = metrics.count_finished   # the outcomes it records count here
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.cache = AnalysisCache(settings.templates_dir)
        self._backends: dict[str, LipSyncBackend] = {}
        self._restorer: FaceRestorer | None = None
        self._running: _Running | None = None
        self._stopping = threading.Event()
        self._stop_asked = False
        self._exited = threading.Event()
        self._wakeup = Wakeup(self.store)
        self._next_housekeeping = 0.0
        self._next_reap = 0.0
        self._outage = _StoreOutage()
        self.jobs_done = 0

    # -- life cycle ----------------------------------------------------------------------

    def load(self) -> None:
        """Registers the worker and loads the default backend: models live in this process."""
        self.store.register_worker(self.id, socket.gethostname(), os.getpid(),
                                   device_label(self.settings.device))
        backend = self._backend(self.settings.backend)
        self.store.worker_heartbeat(self.id, "idle", ready=True, backend=backend.name)
        metrics.record_rss()
        log.info("worker %s ready on %s (backend %s)", self.id, self.settings.device,
                 backend.name)

    def run(self, max_jobs: int | None = None, install_signals: bool = True) -> int:
        """Claims and renders until stopped (or after `max_jobs`); returns jobs processed."""
        if install_signals:
            self._install_signal_handlers()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="dhserve-heartbeat",
                                     daemon=True)
        try:
            self.load()
            heartbeat.start()
            while not self._stopping.is_set():
                if max_jobs is not None and self.jobs_done >= max_jobs:
                    break
                self._housekeeping()
                try:
                    job = self.store.claim(self.id) if self.store.has_queued() else None
                except STORE_ERRORS as exc:
                    self._outage.failed("claim", exc)
                    self._stopping.wait(self.settings.poll_seconds)
                    continue
                self._outage.succeeded()
                if job is None:
                    self._wakeup.wait(self.settings.poll_seconds)
                    continue
                with job_context(job.id):
                    self._process(job)
                self.jobs_done += 1
                reason = self.recycle_check() if self.recycle_check else None
                if reason:
                    self.recycle(reason)
        finally:
            self._exited.set()
            if heartbeat.is_alive():
                heartbeat.join(timeout=5)
            self._close()
        return self.jobs_done

    def stop(self, grace: float | None = None) -> None:
        """Stops claiming; the running render gets `grace` seconds, then its job is handed
        back. Safe from signal handlers and other threads."""
        grace = self.settings.stop_grace_seconds if grace is None else grace
        already, self._stop_asked = self._stop_asked, True      # a second stop: hand back now
        self._stopping.set()
        self._wakeup.interrupt()
        running = self._running
        if running is None:
            return
        if grace <= 0 or already:
            running.stop("handback")
        else:
            log.info("worker %s stopping: job %s gets %g s to finish", self.id,
                     running.job.id, grace)
            timer = threading.Timer(grace, running.stop, args=("handback",))
            timer.daemon = True
            timer.start()

    def recycle(self, reason: str) -> None:
        """Stops claiming; the running job (if any) finishes, then run() returns."""
        if self.recycle_reason is None:
            self.recycle_reason = reason
            log.info("worker %s recycling (%s)%s", self.id, reason,
                     " after its current job" if self._running else "")
        self._stopping.set()
        self._wakeup.interrupt()

    def _install_signal_handlers(self) -> None:
        handle_signals({signal.SIGTERM: self.stop, signal.SIGINT: self.stop,
                        signal.SIGHUP: lambda: self.recycle("SIGHUP")})

    def _close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        if self._restorer is not None:
            self._restorer.close()
        try:
            self.store.remove_worker(self.id)
        except Exception:
            log.warning("could not deregister worker %s", self.id, exc_info=True)
        self._wakeup.close()
        log.info("worker %s stopped after %d job(s)", self.id, self.jobs_done)

    # -- one job -------------------------------------------------------------------------

    def _backend(self, name: str) -> LipSyncBackend:
        """Backends are made on first use and kept: their sessions serve every later job."""
        name = resolve_backend(name, self.settings)
        if name not in self._backends:
            self._backends[name] = create_backend(name, self.settings)
        return self._backends[name]

    def _face_restorer(self, options: RenderOptions) -> FaceRestorer | None:
        if options.face_restore and self._restorer is None:
            self._restorer = FaceRestorer.from_settings(self.settings)
        return self._restorer if options.face_restore else None

    def _process(self, job: Job) -> None:
        running = _Running(job)
        self._running = running
        if self._stopping.is_set():         # stop() raced with the claim
            running.stop("handback")
        log.info("claimed (attempt %d)", job.attempts)
        metrics.observe_claim((job.started_at or job.created_at) - job.created_at)
        downloads = download_dir(self.settings, job.id, uuid.uuid4().hex[:8])
        try:
            self._store_call(self.store.worker_heartbeat, self.id, "busy", job.id)
            outcome = self._render(job, running, downloads)
        finally:
            self._running = None
            shutil.rmtree(downloads, ignore_errors=True)
        # Recorded only while the lease is ours; a store that cannot be reached now leaves
        # the lease to expire, and the job is rendered again (delivery is at-least-once).
        recorded = self._store_call(outcome)
        if recorded is False:
            log.warning("outcome not recorded, the lease was lost (%s)",
                        running.stop_reason or "expired")
        elif recorded is None and running.outcome:
            log.warning("outcome (%s) not recorded: the job store is unreachable; the job "
                        "runs again once its lease expires", running.outcome)
        elif recorded and running.outcome:
            metrics.observe_render(running.outcome, time.monotonic() - running.started,
                                   running.render_fps)
        remove_earlier_partials(result_path(self.settings, job), running.claimed_at)
        metrics.record_rss()
        self._store_call(self.store.worker_heartbeat, self.id,
                         "stopping" if self._stopping.is_set() else "idle")

    def _render(self, job: Job, running: _Running,
                downloads: Path) -> Callable[[], bool | None]:
        """Renders the job; returns how to record its outcome in the store."""
        progress = _JobProgress(self, running)
        try:
            options = job_render_options(self.settings, job.spec.options)
            video = self._input(job.spec.video, "video", downloads, progress, options)
            audio = self._input(job.spec.audio, "audio", downloads, progress, options)
            if job.spec.background is not None:     # an image: the render's background
                image = self._input(job.spec.background, BACKGROUND, downloads, progress,
                                    options)
                check_background_image(image, self.settings)   # header: the render decodes
                options = dataclasses.replace(options, background=str(image))
            out = result_path(self.settings, job)
            backend = self._backend(options.backend)
            result = render(video, audio, out, options, self.cache, progress, backend=backend,
                            restorer=self._face_restorer(options), settings=self.settings)
        except Canceled:
            return self._stopped(job, running)
        except DhserveError as exc:
            log.info("failed: %s %s", exc.code, exc.message)
            running.outcome = JobState.FAILED.value
            return functools.partial(self.store.fail, job.id, self.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("internal error")
            running.outcome = JobState.FAILED.value
            return functools.partial(self.store.fail, job.id, self.id, RenderInternal.code,
                                     f"internal error: {type(exc).__name__}: {exc}")
        log.info("succeeded: %d frames in %.1f s", result.frames,
                 result.elapsed)
        info = {"frames": result.frames, "width": result.width, "height": result.height,
                "fps": float(result.fps), "duration": result.duration,
                "elapsed": result.elapsed, "analysis_cached": result.analysis_cached,
                "warnings": result.warnings, "backend": backend.name}
        running.outcome, running.render_fps = JobState.SUCCEEDED.value, result.render_fps
        return functools.partial(self.store.succeed, job.id, self.id, str(out), info)

    def _store_call(self, call: Callable[..., Any], *args: Any) -> Any:
        """Runs a store call; an unreachable store is logged (None returned), never fatal."""
        try:
            result = call(*args)
        except STORE_ERRORS as exc:
            self._outage.failed(getattr(getattr(call, "func", call), "__name__", "call"), exc)
            return None
        self._outage.succeeded()
        return result

    def _input(self, value: str, field: str, folder: Path, progress: _JobProgress,
               options: RenderOptions) -> Path:
        if not is_url(value):
            return Path(value)
        progress.update(0.0, Stage.DOWNLOADING)
        progress.check_canceled()
        return download(value, field, folder, int(options.max_input_mb * 2**20),
                        self.settings.download_timeout_seconds,
                        allowed=self.settings.allowed_network_list,
                        should_stop=functools.partial(self._download_should_stop, progress))

    def _download_should_stop(self, progress: _JobProgress) -> bool:
        """Asked by a download a few times a second (from its watch thread): renews the
        lease at most once a second, which is how a cancel is learned, and says whether the
        job must stop. A stopping worker hands a downloading job back at once: there is no
        render yet that a grace period would save."""
        if self._stop_asked:
            progress.running.stop("handback")
        progress.update(0.0, Stage.DOWNLOADING)
        return progress.running.stopped.is_set()

    def _stopped(self, job: Job, running: _Running) -> Callable[[], bool | None]:
        reason = running.stop_reason
        if reason == "handback":
            log.info("handed back: the worker is stopping")
            return functools.partial(self.store.release, job.id, self.id)
        if reason == "canceled":
            log.info("canceled")
            running.outcome = JobState.CANCELED.value
            return functools.partial(self.store.mark_canceled, job.id, self.id)
        log.warning("lease lost; another worker owns it now")
        return lambda: None

    # -- heartbeat and housekeeping --------------------------------------------------------

    def renew(self, running: _Running, progress: int | None = None,
              stage: str | None = None) -> None:
        """Renews the running job's lease; flags the render to stop if it was canceled or
        the lease went to another worker."""
        try:
            lease = self.store.renew(running.job.id, self.id, progress, stage, running.fps)
        except STORE_ERRORS as exc:
            self._outage.failed("lease renewal", exc)
            return
        except Exception:
            log.warning("job %s: lease renewal failed", running.job.id, exc_info=True)
            return
        self._outage.succeeded()
        if not lease.held:
            running.stop("lost")
        elif lease.cancel_requested:
            running.stop("canceled")

    def _heartbeat_loop(self) -> None:
        while not self._exited.wait(self.settings.heartbeat_seconds):
            self.heartbeat()

    def heartbeat(self) -> None:
        """Says the worker lives (and what it does), and renews the running job's lease."""
        running = self._running
        try:
            self.store.worker_heartbeat(
                self.id, "busy" if running else
                ("stopping" if self._stopping.is_set() else "idle"),
                running.job.id if running else None)
        except STORE_ERRORS as exc:
            self._outage.failed("heartbeat", exc)
        except Exception:
            log.warning("worker %s: heartbeat failed", self.id, exc_info=True)
        else:
            self._outage.succeeded()
        metrics.record_rss()
        if running is not None:
            self.renew(running)

    def _housekeeping(self) -> None:
        """Reaping and pruning are maintenance: a failure is logged, never fatal."""
        now = time.monotonic()
        try:
            if now >= self._next_reap:
                self._next_reap = now + max(self.settings.lease_seconds / 6, 0.5)
                self.store.reap()
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
                prune_finished(self.store, self.settings)
        except (*STORE_ERRORS, OSError) as exc:
            log.error("housekeeping failed: %s", first_line(exc))


def device_label(device: str) -> str:
    """The device as an operator knows it: under CUDA_VISIBLE_DEVICES=3, cuda:0 is GPU 3."""
    visible = diagnostic_environment()["CUDA_VISIBLE_DEVICES"] or ""
    if device.startswith("cuda") and visible:
        index = int(device.partition(":")[2] or 0)
        ids = visible.split(",")
        if index < len(ids):
            return f"{device} (GPU {ids[index]})"
    return device
