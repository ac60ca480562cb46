"""Backgrounds for jobs (/v1/jobs, /easy/submit): transparent results in WebM, a colour or an
image behind the person (uploaded, a server path, a URL), rendered by a real worker on the tiny
template; refusals before any work, naming the field, leaving no job and no file behind."""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from api_support import Service
from conftest import wait_for
from test_background import _vp9_rgba

from dhserve.errors import JobNotFound

LEFT, RIGHT = (220, 40, 40), (40, 60, 220)      # the image: two halves, RGB


def _finished(svc: Service, job_id: str) -> dict | None:
    job = svc.client.get(f"/v1/jobs/{job_id}").get_json()
    return job if job["state"] not in ("queued", "running") else None


def _two_halves(path: Path, size: int = 256) -> Path:
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[:, : size // 2], rgb[:, size // 2:] = LEFT, RIGHT
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """The files a client has: an image and a file that only pretends to be one."""
    folder = tmp_path_factory.mktemp("client-media")
    _two_halves(folder / "sky.png")
    (folder / "fake.png").write_text("not an image at all")
    return folder


@pytest.fixture(scope="module")
def image_server(media):
    """Serves the client's media over real HTTP (loopback, opened to the worker)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_template, tiny_speech, media):
    """One service with one render worker for the module: the renders share the analysis."""
    service = Service(tmp_path_factory.mktemp("backgrounds") / "data",
                      allowed_networks="127.0.0.1/32")
    service.temp.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_template, service.temp / "avatar.mp4")
    shutil.copy(tiny_speech, service.temp / "speech.wav")
    shutil.copy(media / "sky.png", service.temp / "sky.png")
    shutil.copy(media / "fake.png", service.temp / "fake.png")
    service.start_worker()
    yield service
    service.close()


INPUTS = {"video": "avatar.mp4", "audio": "speech.wav"}


def _corners(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rgb[:16, :16].astype(int), rgb[:16, -16:].astype(int)


def _first_frame(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return next(iter(container.decode(video=0))).to_ndarray(format="rgb24")


def _assert_over_the_image(svc: Service, job: dict) -> None:
    """The job's result is an MP4 whose backdrop is the two-halves image."""
    assert job["state"] == "succeeded", job
    assert (job["result"]["container"], job["result"]["content_type"]) == ("mp4", "video/mp4")
    video = svc.client.get(job["result"]["url"])
    assert video.mimetype == "video/mp4"
    left, right = _corners(_first_frame(video.data))
    assert np.abs(left - LEFT).max() <= 16 and np.abs(right - RIGHT).max() <= 16


def test_transparent_job_gives_a_webm_with_alpha(svc, tmp_path):
    answer = svc.client.post("/v1/jobs", json={**INPUTS,
                                               "options": {"background": "transparent"}})
    assert answer.status_code == 202, answer.get_json()
    job = wait_for(lambda: _finished(svc, answer.get_json()["id"]), 90, "the render")
    assert job["state"] == "succeeded", job
    assert job["result"]["container"] == "webm"
    assert job["result"]["content_type"] == "video/webm"
    assert job["options"] == {"background": "transparent"}       # as the client gave them
    whole = svc.client.get(job["result"]["url"])
    assert whole.status_code == 200 and whole.mimetype == "video/webm"
    assert f"filename={job['id']}.webm" in whole.headers["Content-Disposition"]
    part = svc.client.get(job["result"]["url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.mimetype == "video/webm"
    assert part.data == whole.data[:100]
    (tmp_path / "talk.webm").write_bytes(whole.data)
    frames = _vp9_rgba(tmp_path / "talk.webm")
    assert len(frames) == job["result"]["frames"]
    alpha = frames[0][..., 3]
    assert alpha[:8, :8].max() <= 8 and alpha[:8, -8:].max() <= 8      # the backdrop: gone
    assert alpha[128, 128] >= 250                                        # the face: opaque
    assert (svc.settings.results_dir / f"{job['id']}.webm").is_file()


def test_uploaded_image_goes_behind_the_person_and_with_the_job(svc, tiny_template,
                                                                tiny_speech, media):
    form = {"video": (io.BytesIO(tiny_template.read_bytes()), "avatar.mp4"),
            "audio": (io.BytesIO(tiny_speech.read_bytes()), "speech.wav"),
            "background": (io.BytesIO((media / "sky.png").read_bytes()), "sky.png")}
    answer = svc.client.post("/v1/jobs", data=form, content_type="multipart/form-data",
                             headers={"Idempotency-Key": "uploaded-sky"})
    assert answer.status_code == 202, answer.get_json()
    shown = answer.get_json()["inputs"]["background"]
    assert shown.startswith("uploads/uploaded-sky/background-") and shown.endswith(".png")
    assert str(svc.settings.data_dir) not in json.dumps(answer.get_json())
    job = wait_for(lambda: _finished(svc, "uploaded-sky"), 90, "the render")
    _assert_over_the_image(svc, job)
    assert (svc.settings.data_dir / shown).is_file()


def test_image_given_as_a_server_name_on_easy_submit(svc):
    answer = svc.client.post("/easy/submit", json={
        "audio_url": "speech.wav", "video_url": "avatar.mp4", "code": "easy-sky",
        "background": "sky.png"}).get_json()
    assert answer["code"] == 10000, answer

    def done():
        data = svc.client.get("/easy/query?code=easy-sky").get_json()["data"]
        return data if data["status"] != 1 else None

    data = wait_for(done, 90, "the render")
    assert data["status"] == 2 and data["result"] == "/easy-sky-r.mp4", data
    _assert_over_the_image(svc, svc.client.get("/v1/jobs/easy-sky").get_json())
    assert svc.client.get("/v1/jobs/easy-sky").get_json()["inputs"]["background"] == \
        "temp/sky.png"


def test_image_url_is_downloaded_by_the_worker(svc, image_server):
    answer = svc.client.post("/v1/jobs", json={**INPUTS, "background": f"{image_server}/sky.png"})
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["inputs"]["background"] == f"{image_server}/sky.png"
    job = wait_for(lambda: _finished(svc, answer.get_json()["id"]), 90, "the render")
    _assert_over_the_image(svc, job)
    fake = svc.client.post("/v1/jobs", json={**INPUTS,
                                             "background": f"{image_server}/fake.png"})
    assert fake.status_code == 202                 # a URL is judged once it is downloaded
    failed = wait_for(lambda: _finished(svc, fake.get_json()["id"]), 90, "the refusal")
    assert failed["state"] == "failed" and failed["error"]["code"] == "options.invalid"
    assert failed["error"]["message"].startswith("background: ")
    assert "not an image" in failed["error"]["message"]
    assert str(svc.settings.data_dir) not in failed["error"]["message"]
    assert not (svc.settings.results_dir / f"{failed['id']}.mp4").exists()


@pytest.mark.parametrize("key, body, field, words", [
    ("t-mp4", {"options": {"background": "transparent", "container": "mp4"}}, "container",
     "transparent output needs webm or mov"),
    ("webm-keep", {"options": {"container": "webm"}}, "container",
     "webm and mov carry a transparent background"),
    ("mov-colour", {"options": {"background": "#00b140", "container": "mov"}}, "container",
     "other backgrounds give an mp4"),
    ("fake-path", {"background": "fake.png"}, "background", "not an image"),
    ("both", {"background": "sky.png", "options": {"background": "#00b140"}}, "background",
     "give an image or options.background, not both"),
    ("colour-input", {"background": "#00b140"}, "background", "goes in options.background"),
    ("file-option", {"options": {"background": "sky.png"}}, "background",
     "an image background is the input `background`"),
    ("bad-colour", {"options": {"background": "#00b14"}}, "background", "#rrggbb"),
])
def test_refusals_name_the_field_and_queue_nothing(svc, key, body, field, words):
    answer = svc.client.post("/v1/jobs", json={**INPUTS, **body},
                             headers={"Idempotency-Key": key})
    problem = answer.get_json()
    assert answer.status_code == 422, problem
    assert (problem["code"], problem["field"]) == ("options.invalid", field)
    assert words in problem["detail"]
    assert str(svc.settings.data_dir) not in problem["detail"]
    with pytest.raises(JobNotFound):
        svc.store.get(key)


def test_missing_image_is_not_found_like_the_other_inputs(svc):
    answer = svc.client.post("/v1/jobs", json={**INPUTS, "background": "nowhere.png"})
    problem = answer.get_json()
    assert (answer.status_code, problem["code"], problem["field"]) == \
        (422, "input.not_found", "background")
    assert "nowhere.png" in problem["detail"]
    assert str(svc.settings.data_dir) not in problem["detail"]


@pytest.mark.parametrize("key, background, options, field", [
    ("upload-fake", "fake.png", {}, "background"),
    ("upload-with-colour", "sky.png", {"background": "#00b140"}, "background"),
    ("upload-webm", "sky.png", {"container": "webm"}, "container"),
])
def test_refused_upload_leaves_no_file_behind(svc, tiny_template, tiny_speech, media, key,
                                              background, options, field):
    form = {"video": (io.BytesIO(tiny_template.read_bytes()), "avatar.mp4"),
            "audio": (io.BytesIO(tiny_speech.read_bytes()), "speech.wav"),
            "background": (io.BytesIO((media / background).read_bytes()), background),
            "options": json.dumps(options)}
    answer = svc.client.post("/v1/jobs", data=form, content_type="multipart/form-data",
                             headers={"Idempotency-Key": key})
    problem = answer.get_json()
    assert answer.status_code == 422, problem
    assert (problem["code"], problem["field"]) == ("options.invalid", field)
    assert not (svc.settings.uploads_dir / key).exists()
    with pytest.raises(JobNotFound):
        svc.store.get(key)


def test_easy_refuses_transparent_the_heygem_way(svc):
    answer = svc.client.post("/easy/submit", json={
        "audio_url": "speech.wav", "video_url": "avatar.mp4", "code": "easy-clear",
        "background": "transparent"}).get_json()
    assert answer["code"] == 10000          # HeyGem's clients learn outcomes by polling
    data = svc.client.get("/easy/query?code=easy-clear").get_json()["data"]
    assert data["status"] == 3 and data["msg"] == (
        "background: HeyGem's result is an .mp4; use /v1/jobs with container webm or mov")
    job = svc.store.get("easy-clear")
    assert job.state.value == "failed" and job.error_code == "options.invalid"
    assert job.attempts == 0 and not (svc.temp / "easy-clear-r.mp4").exists()
    fake = svc.client.post("/easy/submit", json={
        "audio_url": "speech.wav", "video_url": "avatar.mp4", "code": "easy-fake",
        "background": "fake.png"}).get_json()
    assert fake["code"] == 10000
    data = svc.client.get("/easy/query?code=easy-fake").get_json()["data"]
    assert data["status"] == 3 and data["msg"].startswith("background: fake.png: ")
