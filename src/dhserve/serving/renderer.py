"""The all-in-one layout's renderer: the render worker loop as a background thread of the one
web worker, started after the fork (Gunicorn's post_worker_init), so its models load in the
process that uses them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dhserve.config import Settings
from dhserve.jobs.worker import RenderWorker
from dhserve.serving.watchdog import MemoryWatchdog

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


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

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            watchdog = MemoryWatchdog(self.max_memory_mb)
            worker = RenderWorker(self.settings, recycle_check=watchdog.over_limit)
            self._worker = worker
            if self._stopping.is_set():      # stop() came between the check and the assignment
                return
            try:
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
