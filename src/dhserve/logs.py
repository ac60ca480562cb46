"""The service's log lines: one format for every process (pid, and the job code where there is
one), written to stderr and to <data dir>/log/dh.log. The file is rotated by size; several
processes write it safely because ConcurrentRotatingFileHandler locks around each write and
rotation (a plain RotatingFileHandler per process would rotate under the others)."""

from __future__ import annotations

import logging
import logging.config
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


def logging_config(settings: Settings, level: str = "INFO",
                   to_file: bool = True) -> dict[str, Any]:
    """A logging.config dict: root (and Gunicorn's loggers, for its logconfig_dict) to stderr
    and, when `to_file`, to dh.log."""
    handlers: dict[str, Any] = {
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                   "formatter": "dhserve", "filters": ["context"]}}
    if to_file:
        handlers["file"] = {
            "class": "concurrent_log_handler.ConcurrentRotatingFileHandler",
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
