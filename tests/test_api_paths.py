"""What answers reveal: no absolute path of the server in any answer. Inputs are named as the
client named them; files are shown relative to the data dir (HeyGem's result relative to
temp/, as its clients join it)."""

from __future__ import annotations

import shutil

from conftest import wait_for

from dhserve.errors import NoFace
from dhserve.jobs import JobSpec


def no_server_path(svc, response) -> dict:
    text = response.get_data(as_text=True)
    for spelling in {str(svc.settings.data_dir), str(svc.settings.data_dir.resolve())}:
        assert spelling not in text, text
    return response.get_json()


def test_missing_inputs_are_named_as_the_client_named_them(service):
    svc = service()
    v1 = no_server_path(svc, svc.client.post("/v1/jobs", json={"video": "nothere.mp4",
                                                               "audio": "sub/speech.wav"}))
    assert (v1["code"], v1["field"]) == ("input.not_found", "video")
    assert v1["detail"] == "no such file: nothere.mp4"
    answer = no_server_path(svc, svc.client.post("/easy/submit", json={
        "audio_url": "speech.wav", "video_url": "nothere.mp4", "code": "missing"}))
    assert answer["code"] == 10000
    data = no_server_path(svc, svc.client.get("/easy/query?code=missing"))["data"]
    assert data["status"] == 3 and data["msg"] == "video_url: no such file: nothere.mp4"


def test_errors_recorded_with_server_paths_are_shown_without_them(service):
    svc = service()
    local = svc.settings.temp_dir.resolve() / "avatar.mp4"
    failure = NoFace("video", f"no face found in {local}")
    svc.store.submit("recorded", JobSpec(str(local), str(local)), failed=failure)
    doc = no_server_path(svc, svc.client.get("/v1/jobs/recorded"))
    assert doc["error"]["message"] == "video: no face found in temp/avatar.mp4"
    assert doc["inputs"] == {"video": "temp/avatar.mp4", "audio": "temp/avatar.mp4"}
    data = no_server_path(svc, svc.client.get("/easy/query?code=recorded"))["data"]
    assert data["msg"] == "video_url: no face found in temp/avatar.mp4"
    listed = no_server_path(svc, svc.client.get("/v1/jobs"))
    assert listed["jobs"][0]["inputs"]["video"] == "temp/avatar.mp4"


def test_results_are_relative_to_temp_for_heygem_else_to_the_data_dir(service, tiny_template,
                                                                       tiny_speech):
    svc = service()
    svc.temp.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_template, svc.temp / "avatar.mp4")
    shutil.copy(tiny_speech, svc.temp / "speech.wav")
    svc.start_worker()
    created = svc.client.post("/v1/jobs", json={"video": "avatar.mp4", "audio": "speech.wav"},
                              headers={"Idempotency-Key": "rest-job"})
    assert no_server_path(svc, created)["inputs"] == {"video": "temp/avatar.mp4",
                                                      "audio": "temp/speech.wav"}
    svc.client.post("/easy/submit", json={"audio_url": "speech.wav", "video_url": "avatar.mp4",
                                          "code": "heygem-job"})

    def done(code):
        data = no_server_path(svc, svc.client.get(f"/easy/query?code={code}"))["data"]
        return data if data["status"] != 1 else None

    rest = wait_for(lambda: done("rest-job"), 90, "the /v1 job to finish")
    heygem = wait_for(lambda: done("heygem-job"), 90, "the HeyGem job to finish")
    assert (rest["status"], heygem["status"]) == (2, 2), (rest, heygem)
    assert rest["result"] == "results/rest-job.mp4"
    assert (svc.settings.data_dir / rest["result"]).is_file()
    assert heygem["result"] == "/heygem-job-r.mp4"
    no_server_path(svc, svc.client.get("/v1/jobs/rest-job"))
