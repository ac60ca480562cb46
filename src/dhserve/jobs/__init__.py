"""The durable job queue (SQLite or PostgreSQL) and the render worker that drains it."""

from dhserve.jobs.model import Job, JobError, JobSpec, JobState, WorkerInfo
from dhserve.jobs.store import JobStore, Lease

__all__ = ["Job", "JobError", "JobSpec", "JobState", "JobStore", "Lease", "WorkerInfo"]
