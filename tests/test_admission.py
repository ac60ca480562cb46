"""Admission without Flask: what `admit` answers for a replay when the disk is short."""

from __future__ import annotations

import pytest

from dhserve.config import Settings
from dhserve.errors import StorageFull
from dhserve.jobs.admission import admit
from dhserve.jobs.model import JobSpec, JobState
from dhserve.jobs.store import JobStore

SPEC = JobSpec("/m/avatar.mp4", "/m/speech.wav")
NO_SPACE = 1e12      # MB: more than any disk has


@pytest.fixture
def store(tmp_path):
    store = JobStore.from_settings(Settings(data_dir=tmp_path))
    yield store
    store.engine.dispose()


def test_a_storage_full_job_is_not_queued_again_while_space_is_still_short(tmp_path, store):
    short = Settings(data_dir=tmp_path, min_free_mb=NO_SPACE)
    job, created = admit(short, store, "full-1", SPEC, record_refusal=True)
    assert created and job.state is JobState.FAILED and job.error_code == "storage.full"
    again, created = admit(short, store, "full-1", SPEC, record_refusal=True)
    assert not created and again.state is JobState.FAILED
    with pytest.raises(StorageFull):                # a new job is refused outright
        admit(short, store, "full-2", SPEC)
    space = Settings(data_dir=tmp_path, min_free_mb=0)
    requeued, created = admit(space, store, "full-1", SPEC, record_refusal=True)
    assert created and requeued.state is JobState.QUEUED
