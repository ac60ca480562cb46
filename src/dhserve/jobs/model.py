"""What a job is: its states, its record, and the errors the queue answers with."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dhserve.errors import DhserveError

if TYPE_CHECKING:
    from dhserve.config import Settings


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})
# A worker counts as alive while its last heartbeat is younger than this many intervals.
HEARTBEAT_STALE_FACTOR = 3.0


@dataclass(frozen=True)
class JobSpec:
    """What a client asks for; two submits with the same id must carry the same spec."""

    video: str                      # path or http(s) URL of the template
    audio: str                      # path or http(s) URL of the speech
    output: str | None = None       # where the result goes; None: <data dir>/results/<id>.mp4
    options: dict[str, Any] = field(default_factory=dict)   # RenderOptions choices
    priority: int = 0               # higher runs first

    def payload(self) -> dict[str, Any]:
        return {"video": self.video, "audio": self.audio, "output": self.output,
                "options": dict(sorted(self.options.items())), "priority": self.priority}


@dataclass(frozen=True)
class Job:
    """One row of the jobs table. Times are epoch seconds taken from the database's clock."""

    id: str
    state: JobState
    spec: JobSpec
    progress: int = 0               # 0..100
    stage: str = ""
    result: str | None = None       # path of the finished MP4
    result_info: dict[str, Any] = field(default_factory=dict)  # frames, size, duration, cost
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0               # claims so far
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False


@dataclass(frozen=True)
class WorkerInfo:
    """A render worker as it last reported itself."""

    id: str
    host: str
    pid: int
    device: str
    backend: str
    state: str                      # starting, idle, busy, stopping
    job_id: str | None
    ready: bool                     # models loaded, claiming
    started_at: float
    heartbeat_at: float
    fps: float | None = None        # the running render's output frames per second

    def heartbeat_age(self, now: float) -> float:
        """Seconds since its last heartbeat, by the store's clock `now`."""
        return max(now - self.heartbeat_at, 0.0)

    def silent(self, now: float, heartbeat_seconds: float) -> bool:
        """No heartbeat for HEARTBEAT_STALE_FACTOR intervals: gone, or hung."""
        return self.heartbeat_age(now) > heartbeat_seconds * HEARTBEAT_STALE_FACTOR


class JobError(DhserveError):
    """A request the queue cannot honour; the code says which rule it broke."""


def not_found(job_id: str) -> JobError:
    return JobError("job.not_found", f"no job with id {job_id!r}")


def conflict(job_id: str) -> JobError:
    return JobError("job.conflict", f"job {job_id!r} exists with different inputs or options")


def queue_full(limit: int) -> JobError:
    return JobError("queue.full", f"busy: {limit} jobs are already waiting; retry later")


def not_cancelable(job: Job) -> JobError:
    return JobError("job.finished", f"job {job.id!r} already finished ({job.state.value})")


def result_path(settings: Settings, job: Job) -> Path:
    """Where a job's result goes: the output it names (HeyGem's temp/<code>-r.mp4), else
    results/<id>.mp4."""
    return Path(job.spec.output) if job.spec.output else settings.results_dir / f"{job.id}.mp4"
