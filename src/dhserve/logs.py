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
        from concurrent_log_handler import ConcurrentRotatingFileHandler

        # made first: logging's shutdown closes handlers newest first, so this one's queue is
        # written out before the file handler closes
        self.target = ConcurrentRotatingFileHandler(filename, maxBytes=maxBytes,
                                                    backupCount=backupCount, encoding=encoding)
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
