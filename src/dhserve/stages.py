"""The names of a job's stages, one vocabulary for the render pipeline (what runs now), the
job store and worker (where the job is in its life) and the APIs that show them. A stage is
stored and shown as its string value, so the values are part of the API."""

from __future__ import annotations

from enum import Enum


class Stage(str, Enum):
    # the job's life (jobs/store.py, jobs/worker.py)
    QUEUED = "queued"
    STARTING = "starting"
    DOWNLOADING = "downloading"
    CANCELING = "canceling"
    CANCELED = "canceled"
    REQUEUED_STOPPED = "requeued: worker stopped"
    REQUEUED_LOST = "requeued: worker lost"
    FAILED = "failed"
    # the render (engine/pipeline.py)
    PROBING = "probing"
    DECODING_AUDIO = "decoding audio"
    ANALYSING_FACE = "analysing face"
    LIP_SYNC = "lip-sync"          # the stage whose frames are counted (frames/s)
    ENCODING = "encoding"
    DONE = "done"

    def __str__(self) -> str:
        return self.value
