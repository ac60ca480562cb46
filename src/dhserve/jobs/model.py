"""What a job is: its states, its record, where its result goes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def result_path(settings: Settings, job: Job) -> Path:
    """Where a job's result goes: the output it names (HeyGem's temp/<code>-r.mp4), else
    results/<id>.mp4."""
    return Path(job.spec.output) if job.spec.output else settings.results_dir / f"{job.id}.mp4"


# Where a job's inputs live in the data dir, in one place for the API (which writes uploads),
# the worker (which downloads) and retention (which removes both).
SPOOL = ".spool"


def upload_dir(settings: Settings, job_id: str) -> Path:
    """The folder of a job's uploaded inputs: uploads/<job id>/ (goes with the job)."""
    return settings.uploads_dir / job_id


def spool_dir(settings: Settings) -> Path:
    """Where uploaded files spool while a request is parsed, as anonymous files that are no
    job's: uploads/.spool/ (never a job id: ids cannot start with a dot)."""
    return settings.uploads_dir / SPOOL


def downloads_root(settings: Settings) -> Path:
    """The folder of the URL inputs the workers download: downloads/<job id>-<attempt tag>/."""
    return settings.data_dir / "downloads"


def download_dir(settings: Settings, job_id: str, tag: str) -> Path:
    """The folder of one attempt's downloads; `tag` keeps two attempts of a job apart."""
    return downloads_root(settings) / f"{job_id}-{tag}"


def download_owner(folder: Path) -> str:
    """The job id a download folder belongs to."""
    return folder.name.rsplit("-", 1)[0]
