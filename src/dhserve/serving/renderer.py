"""The all-in-one layout's renderer: the render worker loop as a background thread of the one
web worker, started after the fork (Gunicorn's post_worker_init), so its models load in the
process that uses them."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from dhserve.config import Settings, diagnostic_environment
from dhserve.jobs.worker import RenderWorker
from dhserve.serving.plan import ServingPlan
from dhserve.serving.watchdog import MemoryWatchdog

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
LOCK_POLL_S = 0.5


@contextmanager
def device_lock(settings: Settings, stopping: threading.Event) -> Iterator[bool]:
    """On a GPU, holds a machine-local lock for (data dir, GPU) — flock: released when the
    process ends, however it ends; yields False if `stopping` is set while waiting. On the CPU
    there is nothing to guard (several CPU renderers are allowed)."""
    if settings.device == "cpu":
        yield True
        return
    gpu = diagnostic_environment()["CUDA_VISIBLE_DEVICES"] or settings.device
    key = hashlib.sha1(str(settings.data_dir.resolve()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"dhserve-renderer-{key}-gpu{gpu}.lock"
    with open(path, "a") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("renderer waits for the previous one on GPU %s to finish", gpu)
                    waited = True
                if stopping.wait(LOCK_POLL_S):
                    yield False
                    return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class InProcessRenderer:
    """Runs RenderWorker in a thread; restarts it (with back-off) if it crashes, and calls
    `on_recycle` when it exits to recycle (memory over the limit, SIGHUP): the host process
    then exits gracefully and its supervisor starts a fresh one."""

    def __init__(self, settings: Settings, max_memory_mb: float,
                 on_recycle: Callable[[str], None]):
        self.settings = settings
        self.max_memory_mb = max_memory_mb
        self.on_recycle = on_recycle
        self._worker: RenderWorker | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dhserve-render", daemon=True)

    @classmethod
    def from_plan(cls, settings: Settings, plan: ServingPlan,
                  on_recycle: Callable[[str], None]) -> InProcessRenderer:
        """The renderer of an all-in-one process: its plan's device, batch size and limit."""
        return cls(replace(settings, device=plan.devices[0].setting,
                           batch_size=plan.batch_size), plan.max_memory_mb, on_recycle)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        """One renderer per GPU: after a HUP, the new worker's renderer waits until the old one
        finished its job and let go (no second copy of the models on the GPU)."""
        with device_lock(self.settings, self._stopping) as held:
            if held:
                self._render_until_stopped()

    def _render_until_stopped(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                worker = RenderWorker(self.settings,
                                      recycle_check=MemoryWatchdog(self.max_memory_mb).over_limit)
                self._worker = worker
                if self._stopping.is_set():  # stop() came between the check and the assignment
                    return
                worker.run(install_signals=False)
            except Exception:
                log.exception("renderer failed; starting it again in %g s", backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if worker.recycle_reason and not self._stopping.is_set():
                self.on_recycle(worker.recycle_reason)
            return

    def recycle(self, reason: str) -> None:
        """Finish the running job, then exit (and call on_recycle)."""
        if self._worker is not None:
            self._worker.recycle(reason)

    def stop(self, grace: float) -> None:
        """Stops claiming; the running render gets `grace` seconds, then is handed back."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.stop(grace)

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the thread; True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
