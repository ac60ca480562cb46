"""The HeyGem contract (/easy/submit, /easy/query) in-process, with a real render worker."""

from __future__ import annotations

import io
import json
import shutil

import av
import pytest
from conftest import wait_for

from dhserve.jobs import JobState, JobStore

ENVELOPE_KEYS = ["code", "data", "msg", "success"]


def submit(svc, **body):
    response = svc.client.post("/easy/submit", json=body)
    assert response.status_code == 200
    return response.get_json()


def query(svc, code):
    response = svc.client.get(f"/easy/query?code={code}")
    assert response.status_code == 200
    return response.get_json()


@pytest.fixture
def media(tiny_template, tiny_speech):
    """Copies the inputs into temp/ the way the desktop client does; returns bare names."""
    def put(svc, video="avatar.mp4", audio="speech.wav"):
        svc.temp.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_template, svc.temp / video)
        shutil.copy(tiny_speech, svc.temp / audio)
        return video, audio
    return put


def test_submit_query_until_done_then_the_same_answer_again(service, media):
    svc = service()
    svc.start_worker()
    video, audio = media(svc)
    raw = svc.client.post("/easy/submit", json={"audio_url": audio, "video_url": video,
                                                "code": "task-1"})
    assert list(json.loads(raw.get_data(as_text=True))) == ENVELOPE_KEYS   # keys sorted
    assert raw.get_json() == {"code": 10000, "data": {}, "msg": 10000, "success": True}

    seen = []

    def done():
        answer = query(svc, "task-1")
        assert answer["code"] == 10000 and answer["success"] is True and answer["msg"] == ""
        seen.append(answer["data"]["progress"])
        return answer if answer["data"]["status"] != 1 else None

    answer = wait_for(done, 90, "the task to finish", every=0.05)
    data = answer["data"]
    assert data["status"] == 2, data
    assert seen == sorted(seen) and all(isinstance(p, int) for p in seen)
    assert data["progress"] == 100 and data["result"] == "/task-1-r.mp4"
    result = svc.temp / data["result"].lstrip("/")
    with av.open(str(result)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (data["width"], data["height"]) == (256, 256)
        assert container.streams.audio
    assert 550 <= data["video_duration"] <= 700          # 0.6 s of speech, in ms
    assert data["cost"] > 0
    assert query(svc, "task-1") == answer                 # kept, not deleted on first read


def test_every_submit_code(service, media, tmp_path):
    svc = service(max_queued=1)                           # no worker: jobs stay queued
    video, audio = media(svc)
    body = {"audio_url": audio, "video_url": video, "code": "a"}
    for missing in ("audio_url", "video_url", "code"):
        answer = submit(svc, **{k: v for k, v in body.items() if k != missing})
        assert answer == {"code": 10002, "data": {}, "msg": f"{missing}参数缺失",
                          "success": True}
    assert submit(svc, **body)["code"] == 10000
    assert submit(svc, **body)["code"] == 10000           # same code, same payload: idempotent
    assert submit(svc, **{**body, "pn": 0}) == {"code": 10005, "data": {},
                                               "msg": "任务已存在，正在执行中", "success": True}
    assert submit(svc, **{**body, "code": "b"}) == {"code": 10001, "data": {}, "msg": "忙碌中",
                                                   "success": True}
    assert svc.store.counts()[JobState.QUEUED] == 1
    assert query(svc, "a")["data"]["status"] == 1
    assert query(svc, "nope") == {"code": 10004, "data": {}, "msg": "任务不存在",
                                  "success": True}
    assert query(svc, "")["code"] == 10002


def test_flags_map_to_render_options(service, media):
    svc = service()
    video, audio = media(svc)
    submit(svc, audio_url=audio, video_url=video, code="p0", pn=0)
    submit(svc, audio_url=audio, video_url=video, code="p1", pn="1")
    assert svc.store.get("p0").spec.options == {"loop": "restart"}
    assert svc.store.get("p1").spec.options == {"loop": "pingpong"}
    assert svc.store.get("p1").spec.output == str((svc.temp / "p1-r.mp4").resolve())
    answer = submit(svc, audio_url=audio, video_url=video, code="bad", chaofen="yes")
    assert answer["code"] == 10002 and answer["msg"].startswith("chaofen: must be 0 or 1")
    shutil.copy(svc.temp / video, svc.temp / "take:1.mp4")      # a colon, not a scheme
    assert submit(svc, audio_url=audio, video_url="take:1.mp4", code="colon")["code"] == 10000
    assert query(svc, "colon")["data"]["status"] == 1


def refused(svc, code, **body) -> str:
    """Submits; the input is refused on arrival: accepted, then status 3 with the reason
    (how HeyGem clients learn about input problems). Returns the reason."""
    assert submit(svc, code=code, **body)["code"] == 10000
    data = query(svc, code)["data"]
    assert (data["status"], data["result"]) == (3, ""), data
    return data["msg"]


def test_features_without_their_files_are_refused_by_name(service, media):
    svc = service()
    video, audio = media(svc)
    names = {"audio_url": audio, "video_url": video}
    reason = refused(svc, "c", chaofen=1, **names)
    assert reason.startswith("chaofen: ") and "GFPGANv1.4.onnx" in reason
    assert refused(svc, "w", watermark_switch=1, **names) == \
        "watermark_switch: needs an image; set DHSERVE_WATERMARK_IMAGE"
    assert refused(svc, "d", digital_auth=1, **names) == \
        "digital_auth: needs an image; set DHSERVE_AI_LABEL_IMAGE"
    assert svc.store.counts()[JobState.QUEUED] == 0
    assert submit(svc, code="c", chaofen=1, **names)["code"] == 10000    # replay: same job


def test_watermark_and_label_from_configured_images_are_rendered(service, media, tmp_path):
    import cv2
    import numpy as np

    from dhserve.engine.media import read_frames

    mark = np.zeros((40, 40, 4), np.uint8)
    mark[..., 1] = mark[..., 3] = 255                     # opaque green square
    cv2.imwrite(str(tmp_path / "mark.png"), mark)
    svc = service(watermark_image=tmp_path / "mark.png", ai_label_image=tmp_path / "mark.png")
    svc.start_worker()
    video, audio = media(svc)
    for code, flags in (("plain", {}), ("marked", {"watermark_switch": 1, "digital_auth": 1})):
        assert submit(svc, audio_url=audio, video_url=video, code=code, **flags)["code"] == 10000
    for code in ("plain", "marked"):
        wait_for(lambda c=code: query(svc, c)["data"]["status"] == 2, 60, f"job {code}")
    plain, marked = (next(iter(read_frames(svc.temp / f"{c}-r.mp4"))).astype(int)
                     for c in ("plain", "marked"))
    green = np.array([0, 255, 0])
    for corner in (marked[10:30, 10:30], marked[-30:-10, -30:-10]):   # top-left, bottom-right
        assert np.abs(corner - green).mean() < 25
    assert np.abs(marked[100:150, 100:150] - plain[100:150, 100:150]).mean() < 3


def test_unreadable_media_is_refused_naming_the_field(service, media, tmp_path):
    svc = service()
    video, audio = media(svc)
    (svc.temp / "notes.mp4").write_text("this is text, whatever the extension says")
    assert refused(svc, "n", audio_url=audio, video_url="notes.mp4") == \
        "video_url: not an audio, video or image file that can be read"
    assert refused(svc, "m", audio_url="missing.wav", video_url=video).startswith(
        "audio_url: no such file")
    assert refused(svc, "s", audio_url=video, video_url=audio) == \
        "video_url: file has no video stream"                              # swapped
    # a playlist would make FFmpeg open the files it names, wherever they are
    (tmp_path / "secret.mp4").write_bytes((svc.temp / video).read_bytes())
    (svc.temp / "list.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
                                        f"{tmp_path / 'secret.mp4'}\n#EXT-X-ENDLIST\n")
    assert refused(svc, "p", audio_url=audio, video_url="list.m3u8") == \
        "video_url: not an audio, video or image file that can be read"
    assert svc.store.counts()[JobState.QUEUED] == 0


def test_malformed_requests_answer_10002_with_nothing_recorded(service, media):
    svc = service()
    video, audio = media(svc)
    answer = submit(svc, audio_url=audio, video_url=video, code="../x")
    assert answer["code"] == 10002 and answer["msg"].startswith("code: ")
    answer = submit(svc, audio_url=audio, video_url="v" * 5000, code="long")
    assert answer["code"] == 10002 and answer["msg"].startswith("video_url: is 5000 characters")
    answer = submit(svc, audio_url=audio, video_url=video, code="f", pn="sometimes")
    assert answer["code"] == 10002 and answer["msg"].startswith("pn: must be 0 or 1")
    big = svc.client.post("/easy/submit", data="{" + " " * (2 << 20) + "}",
                          content_type="application/json")
    assert big.status_code == 200 and big.get_json()["code"] == 10002
    assert "over the limit of 1 MB" in big.get_json()["msg"]
    answer = submit(svc, audio_url=["a"], video_url="/etc/passwd", code="t")   # both checked
    assert answer["code"] == 10002 and answer["msg"].startswith("audio_url: must be")
    for method, path in (("GET", "/easy/submit"), ("POST", "/easy/query"), ("GET", "/easy/x")):
        wrong = svc.client.client.open(path, method=method)      # not in the document
        assert wrong.status_code == 200 and wrong.get_json()["code"] == 10002, path
    assert svc.store.list() == []
    form = svc.client.post("/easy/submit", data={"audio_url": audio, "video_url": video,
                                                 "code": "form"})       # form-encoded works too
    assert form.get_json()["code"] == 10000 and query(svc, "form")["data"]["status"] == 1


def test_a_failed_render_answers_status_3_with_the_reason(service, media, tmp_path):
    import numpy as np
    from conftest import encode_video

    svc = service()
    svc.start_worker()
    _, audio = media(svc)
    blank = [np.full((128, 128, 3), 90, np.uint8)] * 10
    encode_video(svc.temp / "noface.mp4", blank)
    assert submit(svc, audio_url=audio, video_url="noface.mp4", code="f")["code"] == 10000
    answer = wait_for(lambda: (a := query(svc, "f"))["data"]["status"] != 1 and a, 60,
                      "the render to fail")
    assert answer["data"]["status"] == 3 and answer["data"]["result"] == ""
    assert answer["data"]["msg"].startswith("video_url: ") and "face" in answer["data"]["msg"]


def test_an_unreachable_store_answers_9999_and_the_process_stays_up(service, media):
    from api_support import CheckedClient

    from dhserve.api import create_app
    from dhserve.config import Settings

    broken = JobStore("postgresql+psycopg://postgres@127.0.0.1:1/test", upgrade=False)
    svc = service()
    media(svc)
    app = create_app(Settings(data_dir=svc.settings.data_dir), store=broken)
    client = CheckedClient(app)
    answer = client.post("/easy/submit", json={"audio_url": "speech.wav",
                                               "video_url": "avatar.mp4", "code": "x"})
    assert answer.get_json() == {"code": 9999, "data": {}, "msg": "系统异常", "success": True}
    assert client.get("/easy/query?code=x").get_json()["code"] == 9999
    assert client.get("/v1/jobs/x").status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get("/livez").status_code == 200
    upload = client.post("/v1/jobs", content_type="multipart/form-data", data={
        "video": (io.BytesIO((svc.temp / "avatar.mp4").read_bytes()), "a.mp4"),
        "audio": (io.BytesIO((svc.temp / "speech.wav").read_bytes()), "a.wav")})
    assert upload.status_code == 503
    assert [p.name for p in svc.settings.uploads_dir.iterdir()] == [".spool"]   # none kept


def test_refusals_are_bounded_like_the_queue(service, media):
    svc = service(max_queued=2)
    video, _ = media(svc)
    for code in ("r1", "r2"):
        assert submit(svc, audio_url="/etc/hostname", video_url=video, code=code)["code"] == \
            10000
    assert submit(svc, audio_url="/etc/hostname", video_url=video, code="r3")["code"] == 10001
    assert submit(svc, audio_url="/etc/hostname", video_url=video, code="r1")["code"] == 10000
    assert sorted(job.id for job in svc.store.list()) == ["r1", "r2"]


def test_a_running_task_answers_its_stage_in_chinese(service, media):
    from dhserve.api.heygem import STAGE_NAMES

    svc = service()
    video, audio = media(svc)
    assert submit(svc, audio_url=audio, video_url=video, code="task-zh")["code"] == 10000
    queued = query(svc, "task-zh")["data"]
    assert (queued["status"], queued["msg"]) == (1, "排队中")     # no worker yet
    svc.start_worker()
    seen = []

    def done():
        data = query(svc, "task-zh")["data"]
        if data["status"] == 1:
            seen.append(data["msg"])
        return data if data["status"] != 1 else None

    assert wait_for(done, 90, "the task to finish", every=0.02)["msg"] == "完成"
    chinese = set(STAGE_NAMES.values())
    assert seen and all(msg in chinese for msg in seen), seen
