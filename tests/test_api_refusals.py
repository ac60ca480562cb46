"""Requests that are refused before any render: option values of every JSON type, bodies
that are not what the API reads, and the API key with HeyGem's clients (which cannot send
one). Each refusal is an answer with a code naming the field, never an internal error."""

from __future__ import annotations

import json

import pytest
from api_support import Service

from dhserve.api import auth
from dhserve.config import Settings, parse_networks

# One value of each JSON type (an integer and a fraction are both JSON numbers).
JSON_VALUES = {"string": "18", "integer": 18, "fraction": 18.5, "boolean": True,
               "array": [18], "object": {"a": 1}, "null": None}
# What each option a job may set takes, as a client reads the documentation.
JOB_OPTIONS = {"backend": "string", "loop": "string", "x264_preset": "string",
               "multiple_faces": "string", "crf": "integer", "face_restore": "boolean",
               "watermark": "boolean", "ai_label": "boolean"}
WRONG = [(option, kind) for option, wanted in JOB_OPTIONS.items() for kind in JSON_VALUES
         if kind != wanted]
HEYGEM_FLAGS = ("chaofen", "watermark_switch", "digital_auth", "pn")
BAD_FLAGS = {"word": "yes", "fraction": 0.5, "two": 2, "array": [1], "object": {"a": 1}}
BAD_BODIES = {
    "deeply nested": b"[" * 100000,
    "deeply nested object": b'{"a":' * 50000,
    "array": b'[{"video": "a.mp4"}]',
    "string": b'"video"',
    "number": b"17",
    "null": b"null",
    "not UTF-8": b'{"video": "\xff\xfe.mp4", "audio": "b.wav"}',
    "not JSON": b"video=a.mp4&audio=b.wav",
    "NaN": b'{"video": "a.mp4", "audio": "b.wav", "options": {"crf": NaN}}',
    "truncated": b'{"video": "a.mp4", "audio": ',
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("refusals") / "data")
    yield service
    service.close()


def easy_submit(svc, body=None, data=None, **kwargs):
    response = svc.client.post("/easy/submit", json=body, data=data, **kwargs)
    assert response.status_code == 200
    answer = response.get_json()
    assert list(answer) == ["code", "data", "msg", "success"]
    return answer


@pytest.mark.parametrize("option, kind", WRONG)
def test_v1_refuses_an_option_of_the_wrong_json_type(svc, option, kind):
    response = svc.client.post("/v1/jobs", json={"video": "a.mp4", "audio": "b.wav",
                                                 "options": {option: JSON_VALUES[kind]}})
    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert (problem["code"], problem["field"]) == ("options.invalid", option)
    assert problem["detail"].startswith("must be ")


def test_v1_options_must_be_an_object(svc):
    for options in (["crf"], "crf=18", 18):
        response = svc.client.post("/v1/jobs", json={"video": "a.mp4", "audio": "b.wav",
                                                     "options": options})
        assert response.status_code == 400
        assert response.get_json()["field"] == "options"


@pytest.mark.parametrize("flag", HEYGEM_FLAGS)
@pytest.mark.parametrize("kind", BAD_FLAGS)
def test_easy_refuses_a_flag_of_the_wrong_json_type(svc, flag, kind):
    answer = easy_submit(svc, {"audio_url": "b.wav", "video_url": "a.mp4", "code": "flags",
                               flag: BAD_FLAGS[kind]})
    assert answer["code"] == 10002 and answer["msg"].startswith(f"{flag}: must be 0 or 1")


@pytest.mark.parametrize("field", ["audio_url", "video_url", "code"])
@pytest.mark.parametrize("value", [[1], {"a": 1}, True, 1.5])
def test_easy_refuses_inputs_and_code_that_are_not_strings(svc, field, value):
    body = {"audio_url": "b.wav", "video_url": "a.mp4", "code": "fields", field: value}
    answer = easy_submit(svc, body)
    assert answer["code"] == 10002 and answer["msg"].startswith(f"{field}: "), answer


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bodies_that_are_not_a_json_object(svc, name):
    body = BAD_BODIES[name]
    v1 = svc.client.post("/v1/jobs", data=body, content_type="application/json")
    assert v1.status_code == 400, v1.get_json()
    assert (v1.get_json()["code"], v1.get_json()["field"]) == ("request.invalid", "body")
    easy = easy_submit(svc, data=body, content_type="application/json")
    assert easy["code"] == 10002 and easy["msg"].startswith("body: "), easy


def test_an_empty_or_form_submit_is_a_missing_field_as_heygem_says(svc):
    assert easy_submit(svc, data=b"", content_type="application/json")["msg"] == \
        "audio_url参数缺失"
    answer = easy_submit(svc, data={"audio_url": "b.wav", "video_url": "a.mp4"})
    assert answer["msg"] == "code参数缺失"


def test_service_stays_healthy_after_every_refusal(svc):
    assert svc.client.get("/livez").status_code == 200
    assert svc.store.list(None, 10) == [] or all(
        job.id in ("fields", "flags") for job in svc.store.list(None, 10))


# -- the API key and HeyGem's clients

@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("keyed") / "data", api_key="s3cret")
    yield service
    service.close()


def from_address(svc, address, method, path, **kwargs):
    client = svc.client if path.startswith(("/easy/query", "/easy/submit", "/v1", "/health",
                                            "/openapi")) else svc.client.client   # unrouted
    return client.open(path, method=method, environ_base={"REMOTE_ADDR": address}, **kwargs)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1"])
def test_easy_from_this_machine_needs_no_key(keyed, address):
    answer = from_address(keyed, address, "GET", "/easy/query?code=nothere").get_json()
    assert answer == {"code": 10004, "data": {}, "msg": "任务不存在", "success": True}
    answer = from_address(keyed, address, "POST", "/easy/submit", json={}).get_json()
    assert answer["code"] == 10002 and answer["msg"] == "audio_url参数缺失"


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.1.20", "203.0.113.7", "fe80::1"])
def test_easy_from_elsewhere_without_the_key_is_an_envelope_refusal(keyed, address):
    for method, path in (("GET", "/easy/query?code=x"), ("POST", "/easy/submit"),
                         ("GET", "/easy/nothere")):
        response = from_address(keyed, address, method, path, json={"code": "x"})
        assert response.status_code == 200 and response.mimetype == "application/json"
        answer = response.get_json()
        assert answer["code"] == 9999 and answer["success"] is True
        assert answer["msg"].startswith("auth.required: ") and address in answer["msg"]
    with_key = from_address(keyed, address, "GET", "/easy/query?code=x",
                            headers={"Authorization": "Bearer s3cret"}).get_json()
    assert with_key["code"] == 10004


def test_through_a_proxy_loopback_is_not_the_client(keyed):
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        answer = from_address(keyed, "127.0.0.1", "GET", "/easy/query?code=x",
                              headers={header: "198.51.100.4"}).get_json()
        assert answer["code"] == 9999 and answer["msg"].startswith("auth.required")


def test_everything_else_still_needs_the_key_from_loopback(keyed):
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/health"),
                         ("GET", "/openapi.json")):
        response = from_address(keyed, "127.0.0.1", method, path, json={})
        assert response.status_code == 401, path
        assert response.get_json()["code"] == "auth.required"


def test_heygem_networks_setting(tmp_path):
    nets = Settings(data_dir=tmp_path, heygem_networks="10.0.0.0/8, fd00::/8")
    assert auth.heygem_client_allowed("10.9.8.7", nets.heygem_network_list, proxied=False)
    assert auth.heygem_client_allowed("::ffff:10.9.8.7", nets.heygem_network_list, False)
    assert auth.heygem_client_allowed("fd00::5", nets.heygem_network_list, False)
    assert not auth.heygem_client_allowed("127.0.0.1", nets.heygem_network_list, False)
    assert not auth.heygem_client_allowed("10.9.8.7", nets.heygem_network_list, proxied=True)
    assert not auth.heygem_client_allowed("not-an-address", nets.heygem_network_list, False)
    closed = Settings(data_dir=tmp_path, heygem_networks="")
    assert not auth.heygem_client_allowed("127.0.0.1", closed.heygem_network_list, False)
    assert Settings(data_dir=tmp_path).heygem_network_list == parse_networks(
        "127.0.0.0/8,::1")
    with pytest.raises(ValueError, match="DHSERVE_HEYGEM_NETWORKS.*'10.0.0.300/8'"):
        Settings(data_dir=tmp_path, heygem_networks="10.0.0.300/8")
    env = Settings.from_env({"DHSERVE_HEYGEM_NETWORKS": "192.0.2.0/24"}, data_dir=tmp_path)
    assert json.dumps([str(n) for n in env.heygem_network_list]) == '["192.0.2.0/24"]'
