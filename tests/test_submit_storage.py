"""A data dir that is (nearly) full: new jobs are refused with storage.full (/v1: 507; /easy:
a job that failed, status 3, which HeyGem's clients show as failed), an upload that fills
the disk leaves nothing behind, and once space returns, jobs are accepted again with no
restart. On a real small tmpfs mounted for the test (we run as root in CI)."""

from __future__ import annotations

import io
import os

import pytest
from api_support import Service
from conftest import small_tmpfs

MB = 2**20


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 8 MiB, unmounted afterwards."""
    with small_tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


@pytest.fixture
def on_disk(small_disk):
    made: list[Service] = []

    def make(**overrides) -> Service:
        made.append(Service(small_disk / "data", **overrides))
        return made[-1]

    yield make
    for svc in made:
        svc.close()


def fill(path, megabytes: float) -> None:
    with open(path, "wb") as out:
        out.write(b"\0" * int(megabytes * MB))


def easy_status(svc, code):
    answer = svc.client.post("/easy/submit", json={"audio_url": "s.wav", "video_url": "a.mp4",
                                                   "code": code}).get_json()
    assert answer == {"code": 10000, "data": {}, "msg": 10000, "success": True}, answer
    return svc.client.get(f"/easy/query?code={code}").get_json()["data"]


def test_new_jobs_are_refused_below_the_free_space_floor_until_space_returns(on_disk):
    svc = on_disk(min_free_mb=4)
    ballast = svc.settings.data_dir / "ballast"
    fill(ballast, 5)                                    # 8 MiB disk: under 3 MiB free
    response = svc.client.post("/v1/jobs", json={"video": "a.mp4", "audio": "s.wav"})
    assert response.status_code == 507
    problem = response.get_json()
    assert problem["code"] == "storage.full" and "MB free" in problem["detail"]
    assert str(svc.settings.data_dir) not in problem["detail"]
    data = easy_status(svc, "heygem-full")              # HeyGem's client polls for outcomes
    assert data["status"] == 3 and "storage is full" in data["msg"]
    assert svc.client.get("/livez").status_code == 200

    ballast.unlink()                                    # space returns: no restart needed
    again = svc.client.post("/v1/jobs", json={"video": "a.mp4", "audio": "s.wav"})
    assert again.get_json()["code"] == "input.not_found"    # past the space check
    assert "storage" not in easy_status(svc, "heygem-space")["msg"]


def upload(svc, video_mb: float, audio_mb: float, job_id: str):
    files = {"video": (io.BytesIO(b"v" * int(video_mb * MB)), "avatar.mp4"),
             "audio": (io.BytesIO(b"a" * int(audio_mb * MB)), "speech.wav")}
    return svc.client.post("/v1/jobs", data=files, content_type="multipart/form-data",
                           headers={"Idempotency-Key": job_id})


@pytest.mark.parametrize("video_mb, audio_mb, where", [
    (3, 3, "saving the upload"),        # both spool (6 MiB), the copy of the first fills it
    (10, 0.1, "reading the request"),   # bigger than the disk: the spool itself fills it
])
def test_an_upload_that_fills_the_disk_is_storage_full_and_leaves_nothing(
        on_disk, video_mb, audio_mb, where):
    svc = on_disk(min_free_mb=0)
    free_before = os.statvfs(svc.settings.data_dir).f_bavail
    response = upload(svc, video_mb, audio_mb, "big")
    assert response.status_code == 507, (where, response.get_json())
    assert response.get_json()["code"] == "storage.full"
    uploads = svc.settings.uploads_dir
    left = [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []
    assert left == [], left
    assert not (uploads / "big").exists()
    assert os.statvfs(svc.settings.data_dir).f_bavail >= free_before - 64   # blocks
    small = upload(svc, 0.01, 0.01, "small")            # the service still takes uploads
    assert small.status_code == 422 and small.get_json()["code"] == "input.not_media"
