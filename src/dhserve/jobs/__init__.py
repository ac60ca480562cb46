"""The durable job queue (SQLite or PostgreSQL) and the render worker that drains it.

The records (Job, JobSpec, JobState, WorkerInfo) and the store (JobStore, Lease) are named here
and loaded on first use, so that a process which needs only the records (the Gunicorn master,
through the metrics) does not load SQLAlchemy."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dhserve.jobs.model import Job, JobSpec, JobState, WorkerInfo
    from dhserve.jobs.store import JobStore, Lease

EXPORTS = {"Job": "dhserve.jobs.model", "JobSpec": "dhserve.jobs.model",
           "JobState": "dhserve.jobs.model", "WorkerInfo": "dhserve.jobs.model",
           "JobStore": "dhserve.jobs.store", "Lease": "dhserve.jobs.store"}

__all__ = ["Job", "JobSpec", "JobState", "JobStore", "Lease", "WorkerInfo"]


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(EXPORTS[name]), name)
