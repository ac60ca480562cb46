"""The REST API (/v1/jobs), auth, health and readiness, in-process with a real render worker;
every response is checked against /openapi.json."""

from __future__ import annotations

import io
import json
import os
import shutil

import av
import numpy as np
import pytest
from conftest import wait_for

from dhserve.jobs import JobState


@pytest.fixture
def inputs(tiny_template, tiny_speech):
    def put(svc):
        svc.temp.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_template, svc.temp / "avatar.mp4")
        shutil.copy(tiny_speech, svc.temp / "speech.wav")
        return {"video": "avatar.mp4", "audio": "speech.wav"}
    return put


def finished(svc, job_id):
    job = svc.client.get(f"/v1/jobs/{job_id}").get_json()
    return job if job["state"] not in ("queued", "running") else None


def test_json_submit_poll_and_download_with_ranges(service, inputs):
    svc = service()
    response = svc.client.post("/v1/jobs", json={**inputs(svc), "options": {"loop": "restart"}})
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
    assert job["state"] == "queued" and job["options"] == {"loop": "restart"}
    early = svc.client.get(f"/v1/jobs/{job['id']}/result")
    assert (early.status_code, early.get_json()["code"]) == (409, "job.not_ready")
    svc.start_worker()
    done = wait_for(lambda: finished(svc, job["id"]), 60, "the job")
    assert done["state"] == "succeeded" and done["progress"] == 100, done
    assert done["result"]["width"] == 256 and done["result"]["frames"] > 0

    whole = svc.client.get(done["result"]["url"])
    assert whole.status_code == 200 and whole.mimetype == "video/mp4"
    assert (done["result"]["container"], done["result"]["content_type"]) == ("mp4", "video/mp4")
    assert f"filename={job['id']}.mp4" in whole.headers["Content-Disposition"]
    assert "background" not in done["inputs"]
    assert whole.headers["Accept-Ranges"] == "bytes"
    size = len(whole.data)
    with av.open(io.BytesIO(whole.data)) as container:
        assert container.streams.video[0].width == 256
    part = svc.client.get(done["result"]["url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == whole.data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{size}"
    tail = svc.client.get(done["result"]["url"], headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.data == whole.data[-50:]
    beyond = svc.client.get(done["result"]["url"], headers={"Range": f"bytes={size + 10}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"


def test_multipart_upload_and_idempotency_key(service, tiny_template, tiny_speech):
    svc = service()

    def upload(key, options=None):
        form = {"video": (io.BytesIO(tiny_template.read_bytes()), "avatar.mp4"),
                "audio": (io.BytesIO(tiny_speech.read_bytes()), "speech.wav")}
        if options is not None:
            form["options"] = json.dumps(options)
        return svc.client.post("/v1/jobs", data=form, content_type="multipart/form-data",
                               headers={"Idempotency-Key": key})

    first = upload("order-17")
    assert first.status_code == 202 and first.get_json()["id"] == "order-17"
    again = upload("order-17")                      # a retried request: the same job
    assert again.status_code == 200 and again.get_json()["id"] == "order-17"
    assert again.get_json()["inputs"] == first.get_json()["inputs"]
    other = upload("order-17", {"loop": "restart"})
    assert other.status_code == 409 and other.get_json()["code"] == "job.conflict"
    assert [job.id for job in svc.store.list()] == ["order-17"]
    assert len(list((svc.settings.uploads_dir / "order-17").iterdir())) == 2
    assert (svc.settings.uploads_dir / ".spool").is_dir()    # spooled beside, not in /tmp
    bad_key = upload("../etc")
    assert bad_key.status_code == 400 and bad_key.get_json()["field"] == "Idempotency-Key"


def test_bad_requests_get_problem_documents(service, inputs):
    svc = service()
    names = inputs(svc)
    cases = [
        ({"audio": "speech.wav"}, 400, "request.invalid", "video"),
        ({**names, "video": "../../etc/passwd"}, 422, "input.path_not_allowed", "video"),
        ({**names, "audio": "/etc/hostname"}, 422, "input.path_not_allowed", "audio"),
        ({**names, "video": "file:///etc/passwd"}, 422, "input.scheme_not_allowed", "video"),
        ({**names, "video": "ftp://example.com/a.mp4"}, 422, "input.scheme_not_allowed",
         "video"),
        ({**names, "options": {"crf": 99}}, 422, "options.invalid", "crf"),
        ({**names, "options": {"max_audio_seconds": 1e9}}, 422, "options.invalid",
         "max_audio_seconds"),
        ({**names, "options": {"face_restore": True}}, 422, "model.missing", "face_restore"),
        ({**names, "options": {"backend": "nope"}}, 422, "options.unknown_backend", "backend"),
        ({**names, "priority": "high"}, 400, "request.invalid", "priority"),
        ({**names, "priority": 2**70}, 400, "request.invalid", "priority"),
        ({**names, "video": "v" * 5000}, 400, "request.invalid", "video"),
        ({**names, "video": "x" * 300 + ".mp4"}, 422, "input.not_found", "video"),
        ({**names, "video": "https://example.com/a\r\nHost: evil"}, 422,
         "input.path_not_allowed", "video"),
        ({**names, "audio": "avatar.mp4", "video": "speech.wav"}, 422, "video.no_video_stream",
         "video"),
    ]
    for body, status, code, field in cases:
        response = svc.client.post("/v1/jobs", json=body)
        problem = response.get_json()
        assert (response.status_code, problem["code"], problem.get("field")) == \
            (status, code, field), problem
        assert response.mimetype == "application/problem+json" and problem["detail"]
    assert svc.client.post("/v1/jobs", data="not json").status_code == 400
    assert svc.client.get("/v1/jobs?state=lost").get_json()["field"] == "state"
    assert svc.client.get("/v1/jobs?limit=0").status_code == 400
    assert svc.client.get("/v1/jobs/none").get_json()["code"] == "job.not_found"
    assert svc.client.delete("/v1/jobs/none").status_code == 404
    assert svc.store.list() == []


def test_list_cancel_and_queue_full(service, inputs):
    svc = service(max_queued=2)                     # no worker: jobs stay queued
    names = inputs(svc)
    ids = [svc.client.post("/v1/jobs", json={**names, "priority": i}).get_json()["id"]
           for i in range(2)]
    full = svc.client.post("/v1/jobs", json=names)
    assert full.status_code == 429 and full.headers["Retry-After"].isdigit()
    assert full.get_json()["code"] == "queue.full"
    listed = svc.client.get("/v1/jobs?state=queued&limit=1").get_json()["jobs"]
    assert [job["id"] for job in listed] == [ids[1]]        # newest first
    canceled = svc.client.delete(f"/v1/jobs/{ids[0]}")
    assert canceled.status_code == 200 and canceled.get_json()["state"] == "canceled"
    again = svc.client.delete(f"/v1/jobs/{ids[0]}")
    assert again.status_code == 409 and again.get_json()["code"] == "job.finished"
    assert svc.client.get(f"/v1/jobs/{ids[0]}/result").status_code == 409
    assert svc.store.counts()[JobState.QUEUED] == 1


def test_oversized_upload_is_refused_with_413(service):
    svc = service(max_input_mb=0.5)
    big = io.BytesIO(b"\0" * (2 * 2**20))
    response = svc.client.post("/v1/jobs", data={"video": (big, "a.mp4"), "audio": (
        io.BytesIO(b"x"), "a.wav")}, content_type="multipart/form-data")
    assert response.status_code == 413 and response.get_json()["code"] == "request.too_large"
    one = io.BytesIO(b"\0" * (600 * 1024))        # the body fits, the file does not
    response = svc.client.post("/v1/jobs", data={"video": (one, "a.mp4"), "audio": (
        io.BytesIO(b"x"), "a.wav")}, content_type="multipart/form-data")
    assert response.status_code == 413 and response.get_json()["code"] == "input.too_large"
    assert [p.name for p in svc.settings.uploads_dir.iterdir()] == [".spool"]  # nothing left
    huge_json = svc.client.post("/v1/jobs", data='{"video": "' + "v" * (2 << 20) + '"}',
                                content_type="application/json")
    assert huge_json.status_code == 413 and huge_json.get_json()["code"] == "request.too_large"


def test_api_key_guards_every_route_but_livez(service, inputs):
    svc = service(api_key="s3cret")
    names = inputs(svc)
    for method, path in [("GET", "/health"), ("GET", "/readyz"), ("GET", "/v1/jobs"),
                         ("GET", "/openapi.json"), ("GET", "/v1/jobs/x/result")]:
        response = svc.client.open(path, method=method)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = svc.client.open(path, method=method,
                                headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    assert svc.client.get("/livez").status_code == 200
    ok = svc.client.post("/v1/jobs", json=names, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 202


def test_health_and_readiness_follow_the_render_workers(service):
    svc = service()
    assert svc.client.get("/readyz").status_code == 503
    health = svc.client.get("/health").get_json()
    assert health["status"] == "degraded" and health["workers"] == []
    assert health["device"] == "cpu" and health["backend"] == "classic"
    assert health["queue"]["depth"] == 0 and "available" in health["gpu"]
    worker = svc.start_worker()
    assert svc.client.get("/readyz").status_code == 200
    health = svc.client.get("/health").get_json()
    assert health["status"] == "ok"
    [shown] = health["workers"]
    assert shown["id"] == worker.id and shown["ready"] and shown["heartbeat_age_seconds"] < 3
    worker.stop(grace=0)
    wait_for(lambda: svc.client.get("/readyz").status_code == 503, 10, "readyz to say 503")


def test_openapi_document_is_valid_and_served(service):
    from openapi_spec_validator import validate

    svc = service()
    document = svc.client.get("/openapi.json").get_json()
    validate(document)
    assert {"/easy/submit", "/easy/query", "/v1/jobs", "/v1/jobs/{job_id}",
            "/v1/jobs/{job_id}/result", "/health", "/livez", "/readyz"} <= set(document["paths"])
    rules = {rule.rule.replace("<job_id>", "{job_id}") for rule in svc.app.url_map.iter_rules()
             if rule.endpoint != "static"}
    assert rules == set(document["paths"])      # every route documented, nothing invented


def test_uploads_go_with_their_job_when_retention_prunes_it(service, tiny_template,
                                                             tiny_speech):
    from dhserve.jobs.retention import prune_finished

    svc = service(retention_days=0.0)
    form = {"video": (io.BytesIO(tiny_template.read_bytes()), "avatar.mp4"),
            "audio": (io.BytesIO(tiny_speech.read_bytes()), "speech.wav")}
    job = svc.client.post("/v1/jobs", data=form, content_type="multipart/form-data").get_json()
    uploads = svc.settings.uploads_dir / job["id"]
    assert len(list(uploads.iterdir())) == 2
    orphan = svc.settings.uploads_dir / "never-a-job"     # a request that died mid-way
    orphan.mkdir()
    (orphan / "video-x.mp4").write_bytes(b"x")
    fresh = svc.settings.uploads_dir / "in-flight"         # one still being received
    fresh.mkdir()
    os.utime(orphan, (0, 0))
    svc.client.delete(f"/v1/jobs/{job['id']}")
    assert prune_finished(svc.store, svc.settings) == 1
    assert not uploads.exists() and not orphan.exists() and fresh.exists()
    assert svc.client.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_a_playlist_upload_is_refused_before_anything_it_names_is_opened(service, tmp_path,
                                                                          tiny_template):
    svc = service()
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(tiny_template.read_bytes())
    playlist = (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n"
                "#EXT-X-ENDLIST\n").encode()
    before = secret.stat().st_atime_ns
    os.utime(secret, ns=(before - 10**9, secret.stat().st_mtime_ns))
    response = svc.client.post("/v1/jobs", data={
        "video": (io.BytesIO(playlist), "v.m3u8"),
        "audio": (io.BytesIO(tiny_template.read_bytes()), "a.mp4")},
        content_type="multipart/form-data")
    assert response.status_code == 422
    assert (response.get_json()["code"], response.get_json()["field"]) == \
        ("input.not_media", "video")
    assert secret.stat().st_atime_ns == before - 10**9        # never read
    assert svc.store.list() == []


def test_cancel_a_running_job_answers_202_and_it_stops(service, inputs, example_speech):
    from conftest import write_wav

    from dhserve.engine.audio import decode_speech

    svc = service()
    names = inputs(svc)
    wav = decode_speech(example_speech)
    write_wav(svc.temp / "long.wav", np.tile(wav, 4)[: 40 * 16000])
    job_id = svc.client.post("/v1/jobs", json={**names, "audio": "long.wav"}).get_json()["id"]
    svc.start_worker()
    wait_for(lambda: svc.store.get(job_id).state is JobState.RUNNING, 30, "the render to start",
             every=0.02)
    response = svc.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202 and response.get_json()["cancel_requested"] is True
    done = wait_for(lambda: finished(svc, job_id), 30, "the render to stop")
    assert done["state"] == "canceled" and done["error"]["code"] == "render.canceled"


def test_a_worker_that_went_silent_is_shown_and_not_counted_ready(service):
    """A worker killed with -9 leaves its row: /health shows it silent, /readyz says 503."""
    svc = service()                                   # heartbeat 1 s: silent after 3 s
    svc.store.register_worker("ghost", "host-a", 4242, "cuda:0")
    svc.store.worker_heartbeat("ghost", "busy", "job-x", ready=True, backend="classic")
    assert svc.client.get("/readyz").status_code == 200
    wait_for(lambda: svc.client.get("/readyz").status_code == 503, 10, "the worker to go silent")
    [ghost] = svc.client.get("/health").get_json()["workers"]
    assert (ghost["id"], ghost["state"], ghost["ready"], ghost["job"]) == \
        ("ghost", "silent", False, "job-x")
    assert ghost["heartbeat_age_seconds"] >= 3


def _nvidia_smi_gpus() -> int:
    import shutil as sh
    import subprocess

    if not sh.which("nvidia-smi"):
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True,
                             text=True)
    return listing.stdout.count("GPU ") if listing.returncode == 0 else 0


@pytest.mark.gpu
@pytest.mark.skipif(_nvidia_smi_gpus() == 0, reason="no NVIDIA GPU (nvidia-smi -L)")
def test_health_reports_the_gpus_nvidia_smi_sees(service):
    gpu = service().client.get("/health").get_json()["gpu"]
    assert gpu["available"] is True and len(gpu["devices"]) == _nvidia_smi_gpus()
    assert all(d["memory_total_mb"] > 1000 and d["name"] for d in gpu["devices"])
