"""What a job is: its states, its record, where its result goes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dhserve.config import KEEP, TRANSPARENT

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
# The containers a job's result can be written in, with the Content-Type it is served with.
# An alpha channel (a transparent background) needs webm or mov; everything else is an mp4.
CONTENT_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime"}
BACKGROUND = "background"       # the option, and the name of the optional image input


def background_option(value: object) -> bool:
    """Whether a background is an option (keep, transparent, a #rrggbb colour), as opposed
    to an image, which a job takes as an input."""
    return isinstance(value, str) and (value in (KEEP, TRANSPARENT) or (
        value.startswith("#") and not {".", "/"} & set(value)))    # '#1.png' is a file


def default_container(background: object) -> str:
    """The container a background gives unless one is chosen: alpha needs webm."""
    return "webm" if background == TRANSPARENT else "mp4"


@dataclass(frozen=True)
class JobSpec:
    """What a client asks for; two submits with the same id must carry the same spec."""

    video: str                      # path or http(s) URL of the template
    audio: str                      # path or http(s) URL of the speech
    output: str | None = None       # where the result goes; None: results/<id>.<container>
    options: dict[str, Any] = field(default_factory=dict)   # RenderOptions choices + container
    priority: int = 0               # higher runs first
    background: str | None = None   # path or http(s) URL of a background image, if any

    def payload(self) -> dict[str, Any]:
        """The spec as stored; `background` only when given, so that a job submitted before
        image backgrounds existed compares equal when it is submitted again."""
        payload = {"video": self.video, "audio": self.audio, "output": self.output,
                   "options": dict(sorted(self.options.items())), "priority": self.priority}
        if self.background is not None:
            payload["background"] = self.background
        return payload

    @property
    def container(self) -> str:
        """The result's container: the one chosen (options.container), else the output
        name's, else webm for a transparent background and mp4 for any other. Admission
        refuses a choice that cannot hold the background (jobs/options.py)."""
        chosen = self.options.get("container")
        if isinstance(chosen, str) and chosen in CONTENT_TYPES:
            return chosen
        named = Path(self.output).suffix.lower().lstrip(".") if self.output else ""
        if named in CONTENT_TYPES:
            return named
        return default_container(self.options.get(BACKGROUND))


@dataclass(frozen=True)
class Job:
    """One row of the jobs table. Times are epoch seconds taken from the database's clock."""

    id: str
    state: JobState
    spec: JobSpec
    progress: int = 0               # 0..100
    stage: str = ""
    result: str | None = None       # path of the finished video
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
    results/<id>.<container> (.mp4, or .webm / .mov for a transparent background)."""
    if job.spec.output:
        return Path(job.spec.output)
    return settings.results_dir / f"{job.id}.{job.spec.container}"


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
