"""The service's log lines: one format for every process (pid, and the job code where there is
one), written to stderr and to <data dir>/log/dh.log. The file is rotated by size; several
processes write it safely because ConcurrentRotatingFileHandler locks around each write and
rotation (a plain RotatingFileHandler per process would rotate under the others). That lock is
taken by a writer thread of each process, never by a thread answering a request."""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import os
import queue
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from concurrent_log_handler import ConcurrentRotatingFileHandler

from dhserve.config import Settings

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s:%(job_tag)s %(message)s"
_JOB: ContextVar[str | None] = ContextVar("dhserve_job", default=None)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Lines logged by this thread inside the block carry `job=<job_id>`."""
    token = _JOB.set(job_id)
    try:
        yield
    finally:
        _JOB.reset(token)


class ContextFilter(logging.Filter):
    """Adds `job_tag` (" job=<code>" or "") to every record, for FORMAT."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _JOB.get()
        record.job_tag = f" job={job}" if job else ""
        return True


class SharedLogFile(ConcurrentRotatingFileHandler):
    """dh.log, shared by the service's processes. A write that fails (a full disk, a folder
    gone) is said once on stderr, and once more when writes work again, instead of logging's
    "--- Logging error ---" traceback for every line: the lines are lost meanwhile, the
    stderr handler still has them."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.failing: OSError | Exception | None = None   # why writes fail now; None: they work
        self._failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)
        if not self._failed_now and self.failing is not None:
            self.failing = None
            _say(f"dhserve: writing {self.baseFilename} works again")

    def doRollover(self) -> None:
        """A rotation that fails counts as a failed write (the library prints one report per
        line otherwise)."""
        try:
            super().doRollover()
        except OSError as exc:
            self._failed(exc)

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed(sys.exc_info()[1])

    def _failed(self, exc: BaseException | None) -> None:
        self._failed_now = True
        if self.stream is not None:          # a fresh file at the next write: what failed
            try:                             # to flush must not be written half later
                self.stream.close()
            except OSError:
                pass
            self.stream = None
        if self.failing is None:
            self.failing = exc if isinstance(exc, Exception) else OSError("unknown error")
            _say(f"dhserve: cannot write {self.baseFilename} ({self.failing}): its lines are "
                 "lost until it can be written again (stderr still has them)")


def _say(line: str) -> None:
    """One line to stderr, past logging (which is what fails)."""
    try:
        print(f"{line} [pid {os.getpid()}]", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class BackgroundFileHandler(logging.handlers.QueueHandler):
    """dh.log, written by a thread of its own in the processes that ask for it (web workers,
    render workers): the thread that logs (a request's, with its access line) only formats
    and queues the line. Every process locks the shared file for each write; under load,
    request threads waiting for that lock were most of the web tier's tail latency (split
    layout, 300 requests/s, no render: p99 84 ms; 39 ms with the writer thread).

    Elsewhere lines are written at once, by the thread that logs: a process that forks (the
    Gunicorn master) must not run the writer, or a child can inherit it mid-write, its file
    and lock state half-held (seen: workers hung at exit)."""

    def __init__(self, filename: str, maxBytes: int, backupCount: int,
                 encoding: str = "utf-8"):
        # made first: logging's shutdown closes handlers newest first, so this one's queue is
        # written out before the file handler closes
        self.target = SharedLogFile(filename, maxBytes=maxBytes, backupCount=backupCount,
                                    encoding=encoding)
        super().__init__(queue.SimpleQueue())
        self._listener: logging.handlers.QueueListener | None = None
        self._pid: int | None = None

    def start_writer(self) -> None:
        """From now on a thread of this process writes the lines. Only in a process that will
        not fork (subprocess's fork-and-exec is fine)."""
        if self._pid == os.getpid():
            return
        self.queue = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self.queue, self.target)
        self._listener.start()
        self._pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pid == os.getpid():
            super().emit(record)                        # queued for the writer
        else:
            self.target.handle(self.prepare(record))    # written now

    def close(self) -> None:
        if self._listener is not None and self._pid == os.getpid():
            self._listener.stop()             # writes the queued lines, then returns
            self._listener = None
        self._pid = None
        self.target.close()
        super().close()


def write_in_background() -> None:
    """This process writes dh.log from a thread of its own (see BackgroundFileHandler)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BackgroundFileHandler):
            handler.start_writer()


def logging_config(settings: Settings, level: str = "INFO",
                   to_file: bool = True) -> dict[str, Any]:
    """A logging.config dict: root (and Gunicorn's loggers, for its logconfig_dict) to stderr
    and, when `to_file`, to dh.log."""
    handlers: dict[str, Any] = {
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                   "formatter": "dhserve", "filters": ["context"]}}
    if to_file:
        handlers["file"] = {
            "class": "dhserve.logs.BackgroundFileHandler",
            "filename": str(settings.log_path), "maxBytes": int(settings.log_max_mb * 2**20),
            "backupCount": settings.log_backups, "formatter": "dhserve",
            "filters": ["context"], "encoding": "utf-8"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"dhserve": {"format": FORMAT}},
        "handlers": handlers,
        "root": {"level": "WARNING", "handlers": list(handlers)},
        "loggers": {"dhserve": {"level": level},
                    "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
                    "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False}},
    }


def configure_logging(settings: Settings, level: str = "INFO", to_file: bool = True) -> None:
    """Sets up this process's logging; a log file that cannot be written is said, not fatal."""
    if to_file:
        try:
            settings.log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"warning: cannot write {settings.log_path}: {exc}; logging to stderr only",
                  file=sys.stderr)
            to_file = False
    logging.config.dictConfig(logging_config(settings, level, to_file))
