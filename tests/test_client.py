"""dhserve.client and `dhserve submit/status` against a real running service (`dhserve serve`:
Gunicorn web tier + a render worker process) with an API key: uploads, inputs passed through
(names and URLs), progress, downloads, cancel, and the server's errors as ClientError. What a
real service never does (redirect, break off a download, answer garbage, drop out while a job
is followed) is played by a small stub HTTP server on loopback."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import pty
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from conftest import EXAMPLES, wait_for
from serving_support import ServiceProcess, dhserve_cli, stage_example

from dhserve.client import Client, ClientError, JobStatus
from dhserve.engine.media import probe

KEY = "client-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPEECH_SECONDS = 11.76


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client-service")
    service = ServiceProcess(root, dhserve_cli("serve"), {   # the file server is on loopback
        "DHSERVE_API_KEY": KEY, "DHSERVE_ALLOWED_NETWORKS": "127.0.0.1/32"})
    service.wait_serving("/readyz", headers=AUTH)        # a render worker with its models
    yield service
    service.stop()


@pytest.fixture
def client(server) -> Client:
    return Client(server.url, api_key=KEY)


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> Path:
    """The example speech four times over (~47 s): a render still running when cancelled."""
    folder = tmp_path_factory.mktemp("long")
    stage_example(folder, speech_repeats=4)
    return folder / "speech.wav"


@pytest.fixture(scope="module")
def file_server():
    """The example files over http on loopback: inputs given as URLs."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(EXAMPLES))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(timeout=10)


def test_paths_are_uploaded_progress_rises_to_100_and_the_mp4_downloads(client, server,
                                                                        tmp_path):
    job = client.submit(EXAMPLES / "avatar.mp4", str(EXAMPLES / "speech.wav"), loop="restart")
    assert job.state in ("queued", "running") and job.options == {"loop": "restart"}
    uploads = Path("uploads") / job.id                 # relative to the data dir
    assert Path(job.video).parent == uploads and Path(job.audio).parent == uploads
    for stored, source in ((job.video, EXAMPLES / "avatar.mp4"),   # a Path and a str alike,
                           (job.audio, EXAMPLES / "speech.wav")):  # byte for byte
        assert sha256(server.data / stored) == sha256(source), stored
    updates: list[JobStatus] = []
    final = client.wait(job, on_progress=updates.append, timeout=120, interval=0.2)
    assert final.state == "succeeded" and final.progress == 100
    progress = [u.progress for u in updates]
    assert progress == sorted(progress) and progress[-1] == 100, progress
    assert len(set(progress)) >= 3, progress            # seen on the way, not only the end
    assert updates[-1] == final and "lip-sync" in {u.stage for u in updates}

    out = client.download(final, tmp_path / "talking.mp4")
    info = probe(out, "result")
    assert (info.video.width, info.video.height) == (512, 512)
    assert info.audio is not None and info.duration == pytest.approx(SPEECH_SECONDS, abs=0.1)
    assert final.result.frames == 294 and final.result.duration == pytest.approx(
        SPEECH_SECONDS, abs=0.05)
    served = requests.get(server.url + final.result.url, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"})
    assert out.read_bytes() == served.content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talking.mp4"]   # no partial file
    (tmp_path / "folder").mkdir()
    assert client.download(final.id, tmp_path / "folder") == tmp_path / "folder" / \
        f"{job.id}.mp4"
    with pytest.raises(ClientError) as caught:
        client.download(final, tmp_path / "missing" / "out.mp4")
    assert caught.value.code == "output.invalid" and "missing/out.mp4" in caught.value.detail
    assert client.get(job.id) == final and client.list(state="succeeded")[0].id == job.id


def test_names_and_urls_are_passed_through(client, server, file_server, short_speech,
                                           tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # no local file of these names: the server's
    server.temp.mkdir(parents=True, exist_ok=True)
    shutil.copy(short_speech, server.temp / "short.wav")
    named = client.submit(f"{file_server}/avatar.mp4", "short.wav")
    assert named.video == f"{file_server}/avatar.mp4"              # as given
    assert named.audio == "temp/short.wav"          # relative to the data dir: no server path
    stages: set[str] = set()
    final = client.wait(named, on_progress=lambda j: stages.add(j.stage), timeout=120,
                        interval=0.1)
    assert final.state == "succeeded", (final.error_code, final.error_message)
    assert final.result.duration == pytest.approx(2.0, abs=0.1)
    # An uploaded avatar with a name the server resolves, in one multipart request.
    mixed = client.submit(EXAMPLES / "avatar.mp4", "short.wav", job_id="mixed-1")
    assert Path(mixed.video).parent.name == "mixed-1" and mixed.audio == named.audio
    assert client.submit(EXAMPLES / "avatar.mp4", "short.wav", job_id="mixed-1").id == \
        "mixed-1"                               # idempotent by id
    assert client.wait(mixed, timeout=120).state == "succeeded"


def test_cancel_a_running_job(client, long_speech, tmp_path):
    job = client.submit(EXAMPLES / "avatar.mp4", long_speech)
    wait_for(lambda: client.get(job).progress > 5, 60, "the render to be under way")
    asked = client.cancel(job)
    assert asked.cancel_requested or asked.state == "canceled"
    final = client.wait(job, timeout=60, interval=0.2)
    assert final.state == "canceled" and final.result is None
    with pytest.raises(ClientError) as caught:
        client.download(final, tmp_path / "never.mp4")
    assert list(tmp_path.iterdir()) == []
    assert caught.value.code == "job.finished" and caught.value.status == 409
    with pytest.raises(ClientError) as caught:
        client.cancel(job)
    assert caught.value.code == "job.finished"


def test_server_errors_are_client_errors_with_code_and_field(client, server, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video\n" * 100)
    with pytest.raises(ClientError) as caught:
        client.submit(not_video, EXAMPLES / "speech.wav")
    error = caught.value
    assert (error.code, error.field, error.status) == ("input.not_media", "video", 422)
    assert str(error) == f"video: {error.detail}" and "not an audio, video or image" in \
        error.detail
    with pytest.raises(ClientError) as caught:
        client.submit(EXAMPLES / "avatar.mp4", EXAMPLES / "speech.wav", loop="sideways")
    assert (caught.value.code, caught.value.field) == ("options.invalid", "loop")
    with pytest.raises(ClientError) as caught:
        client.get("no-such-job")
    assert (caught.value.code, caught.value.status) == ("job.not_found", 404)
    with pytest.raises(ClientError) as caught:
        Client(server.url).list()
    assert (caught.value.code, caught.value.status) == ("auth.required", 401)
    with pytest.raises(ClientError) as caught:                   # refused before any upload
        client.submit(tmp_path / "missing.mp4", EXAMPLES / "speech.wav")
    assert (caught.value.code, caught.value.field) == ("input.not_found", "video")
    with pytest.raises(ClientError) as caught:
        Client("http://127.0.0.1:9", api_key=KEY).get("x")
    assert caught.value.code == "client.unreachable"
    job = client.submit(EXAMPLES / "avatar.mp4", EXAMPLES / "speech.wav")
    with pytest.raises(ClientError) as caught:
        client.wait(job, timeout=0.0)
    assert caught.value.code == "client.timeout" and job.id in str(caught.value)
    client.cancel(job)
    assert client.wait(job, timeout=60, interval=0.2).state == "canceled"   # the queue is free


def test_the_server_url_comes_from_the_settings():
    from dhserve.config import ClientSettings

    assert ClientSettings.from_env({}).server_url == "http://127.0.0.1:8383"
    assert ClientSettings.from_env({"DHSERVE_BIND": "0.0.0.0:9000"}).server_url == \
        "http://127.0.0.1:9000"                  # a wildcard bind is reached on loopback
    assert ClientSettings.from_env({"DHSERVE_SERVER": "https://render.example/dh/",
                                    "DHSERVE_BIND": "10.0.0.1:1"}).server_url == \
        "https://render.example/dh"
    settings = ClientSettings.from_env({"DHSERVE_API_KEY": "k", "DHSERVE_CRF": "abc"},
                                       server="http://h:1")   # a variable it does not read
    assert (settings.server_url, settings.api_key) == ("http://h:1", "k")
    with pytest.raises(ClientError) as caught:
        Client("localhost:8383")
    assert caught.value.code == "client.invalid_url"


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("DHSERVE_SERVER", "DHSERVE_API_KEY")}
    return subprocess.run(dhserve_cli(*args), cwd=cwd, env={**environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_cli_on_a_terminal(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """`dhserve ARGS` with its stderr on a pseudo-terminal (where the progress bar draws)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(dhserve_cli(*args), cwd=cwd, env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    screen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:                 # the other end closed
                return
            if not data:
                return
            screen.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = process.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    return process.returncode, stdout, b"".join(screen).decode(errors="replace")


def test_cli_submit_wait_out_and_status(server, tmp_path):
    env = {"DHSERVE_SERVER": server.url, "DHSERVE_API_KEY": KEY}
    status, stdout, screen = run_cli_on_a_terminal(
        "submit", "--video", str(EXAMPLES / "avatar.mp4"), "--audio",
        str(EXAMPLES / "speech.wav"), "--id", "cli-1", "--wait", "--out", "out.mp4",
        cwd=tmp_path, env=env)
    assert status == 0, (stdout, screen)
    assert stdout.startswith("out.mp4: 294 frames, 512x512 @ 25 fps, 11.76 s of video"), stdout
    assert "lip-sync" in screen and "100%" in screen, screen          # the progress bar
    info = probe(tmp_path / "out.mp4", "out")
    assert info.duration == pytest.approx(SPEECH_SECONDS, abs=0.1)

    shown = run_cli("status", "cli-1", "--server", server.url, "--api-key", KEY, cwd=tmp_path,
                    env={"DHSERVE_CRF": "abc"})      # a bad setting the client has no use for
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "cli-1 succeeded 100% done"
    assert f"result: {server.url}/v1/jobs/cli-1/result (mp4, 512x512, 11.76 s" in shown.stdout

    queued = run_cli("submit", "--video", "avatar.mp4", "--audio", str(EXAMPLES / "speech.wav"),
                     "--loop", "restart", cwd=EXAMPLES, env=env)     # a local file: uploaded
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    assert len(job_id) == 32
    assert run_cli("status", job_id, cwd=tmp_path, env=env).stdout.split()[1] in (
        "queued", "running", "succeeded")
    client = Client(server.url, api_key=KEY)    # not left to hold up the next test's render
    try:
        client.cancel(job_id)
    except ClientError as exc:
        assert exc.code == "job.finished", exc
    assert client.wait(job_id, timeout=60, interval=0.2).finished


def test_cli_reports_failed_jobs_and_refusals_with_exit_status_2(server, tmp_path):
    import cv2
    import numpy as np

    env = {"DHSERVE_SERVER": server.url, "DHSERVE_API_KEY": KEY}
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))      # no face in it
    failed = run_cli("submit", "--video", str(blank), "--audio", str(EXAMPLES / "speech.wav"),
                     "--wait", cwd=tmp_path, env=env)
    assert failed.returncode == 2, failed
    assert failed.stderr.splitlines()[-1].startswith("error video.no_face: "), failed.stderr
    assert "Traceback" not in failed.stderr

    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    refused = run_cli("submit", "--video", str(text), "--audio", str(EXAMPLES / "speech.wav"),
                      cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error input.not_media: video: "), refused.stderr
    no_folder = run_cli("submit", "--video", "avatar.mp4", "--audio", "speech.wav", "--out",
                        "missing/out.mp4", cwd=tmp_path, env=env)
    assert (no_folder.returncode, no_folder.stderr) == (
        2, "error output.invalid: --out: no such folder: missing\n")
    unknown = run_cli("status", "nope", cwd=tmp_path, env=env)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        2, "error job.not_found: no job with id 'nope'")
    no_key = run_cli("status", "nope", "--server", server.url, cwd=tmp_path)
    assert no_key.returncode == 2 and no_key.stderr.startswith("error auth.required: ")


def test_cli_submit_names_server_files_with_a_prefix_and_refuses_missing_local_ones(
        server, tmp_path, short_speech):
    env = {"DHSERVE_SERVER": server.url, "DHSERVE_API_KEY": KEY}
    server.temp.mkdir(parents=True, exist_ok=True)
    shutil.copy(short_speech, server.temp / "remote-speech.wav")
    (tmp_path / "remote-speech.wav").write_text("a local file of the same name: not sent\n")
    typo = run_cli("submit", "--video", "avatr.mp4", "--audio", "server:remote-speech.wav",
                   cwd=tmp_path, env=env)
    assert typo.returncode == 2
    assert typo.stderr == ("error input.not_found: --video: no such local file: avatr.mp4; "
                           "to name a file on the server, write server:avatr.mp4\n")
    queued = run_cli("submit", "--video", str(EXAMPLES / "avatar.mp4"), "--audio",
                     "server:remote-speech.wav", "--id", "server-name", cwd=tmp_path, env=env)
    assert queued.returncode == 0, queued.stderr
    client = Client(server.url, api_key=KEY)
    job = client.get("server-name")
    assert job.audio == "temp/remote-speech.wav"       # the server's file, not the upload
    assert job.video.startswith("uploads/server-name/")
    try:
        client.cancel(job)      # not left to hold up the next test's render
    except ClientError as exc:
        assert exc.code == "job.finished", exc
    assert "server:NAME" in run_cli("submit", "--help", cwd=tmp_path).stdout


def test_cli_submit_backgrounds_transparent_mov_and_an_uploaded_image(
        server, tmp_path, tiny_template, tiny_speech):
    import av
    import cv2
    import numpy as np

    env = {"DHSERVE_SERVER": server.url, "DHSERVE_API_KEY": KEY}
    media = ("--video", str(tiny_template), "--audio", str(tiny_speech))
    wrong = run_cli("submit", *media, "--background", "transparent", "--out", "talk.mp4",
                    cwd=tmp_path, env=env)
    assert (wrong.returncode, wrong.stderr) == (
        2, "error output.invalid: --out: the result is a webm: name it .webm, not .mp4\n")
    clear = run_cli("submit", *media, "--background", "transparent", "--container", "mov",
                    "--id", "cli-clear", "--wait", "--quiet", "--out", str(tmp_path),
                    cwd=tmp_path, env=env)
    assert clear.returncode == 0, clear.stderr
    with av.open(str(tmp_path / "cli-clear.mov")) as container:      # named by its container
        stream = container.streams.video[0]
        assert stream.codec_context.name == "prores"
        assert stream.codec_context.pix_fmt.startswith("yuva")         # alpha
        alpha = next(container.decode(stream)).to_ndarray(format="rgba")[..., 3]
    assert alpha[:8, :8].max() <= 8 and alpha[128, 128] >= 250

    sky = tmp_path / "sky.png"
    cv2.imwrite(str(sky), np.full((64, 64, 3), (40, 60, 220), np.uint8))      # BGR: red
    over = run_cli("submit", *media, "--background", str(sky), "--id", "cli-sky", "--wait",
                   "--quiet", "--out", "over.mp4", cwd=tmp_path, env=env)
    assert over.returncode == 0, over.stderr
    shown = run_cli("status", "cli-sky", cwd=tmp_path, env=env).stdout
    assert "  background: uploads/cli-sky/background-" in shown, shown
    assert "/v1/jobs/cli-sky/result (mp4, 256x256" in shown
    with av.open(str(tmp_path / "over.mp4")) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(rgb[:16, :16] - (220, 60, 40)).max() <= 16
    missing = run_cli("submit", *media, "--background", "server:nowhere.png", cwd=tmp_path,
                      env=env)
    assert (missing.returncode, missing.stderr) == (
        2, "error input.not_found: background: no such file: nowhere.png\n")
    refused = run_cli("submit", *media, "--background", "#00b140", "--container", "webm",
                      cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error options.invalid: container: webm and mov carry")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- what a real service never does, played by a stub


class Stub:
    """An HTTP server on loopback whose answers the test writes: `answer(request)` writes the
    raw response for each request; every request's method, path, headers and body are kept."""

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler], None]):
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):   # HTTP/1.0: one request each
            def any_method(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                stub.requests.append((self.command, self.path, dict(self.headers),
                                      self.rfile.read(length)))
                answer(self)

            do_GET = do_POST = do_DELETE = any_method

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def stub():
    made: list[Stub] = []

    def start(answer) -> Stub:
        made.append(Stub(answer))
        return made[-1]

    yield start
    for server in made:
        server.close()


def job_document(job_id: str, state: str = "running", result_url: str | None = None) -> dict:
    return {"id": job_id, "state": state, "progress": 100 if state == "succeeded" else 40,
            "stage": "lip-sync", "inputs": {"video": "v.mp4", "audio": "a.wav"}, "options": {},
            "created_at": "2026-01-01T00:00:00Z", "started_at": None, "finished_at": None,
            "cancel_requested": False, "error": None,
            "result": {"url": result_url, "width": 512, "height": 512, "duration": 2.0,
                       "elapsed": 1.5} if result_url else None,
            "links": {"self": f"/v1/jobs/{job_id}"}}


def send(handler, status: int, body: bytes | dict, headers: dict[str, str] | None = None,
         length: int | None = None) -> None:
    """An answer; `length` other than the body's own is a promise the body does not keep."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    handler.send_response(status)
    content_type = "application/json" if isinstance(body, dict) else "application/octet-stream"
    for name, value in {"Content-Type": content_type, **(headers or {})}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(raw) if length is None else length))
    handler.end_headers()
    handler.wfile.write(raw)


def test_redirects_never_carry_the_key_elsewhere_nor_turn_a_post_into_a_get(stub):
    elsewhere = stub(lambda h: send(h, 200, job_document("a")))

    def origin(h) -> None:
        if h.path == "/v1/jobs/a":                                    # another port
            send(h, 302, b"", {"Location": f"{elsewhere.url}/v1/jobs/a"})
        elif h.path == "/v1/jobs/b":                                  # the same origin
            send(h, 301, b"", {"Location": "/v1/jobs/b-moved"})
        elif h.path == "/v1/jobs/b-moved":
            send(h, 200, job_document("b"))
        else:                                                         # POST, DELETE
            send(h, 302 if h.command == "POST" else 307, b"",
                 {"Location": f"{elsewhere.url}{h.path}"})

    first = stub(origin)
    client = Client(first.url, api_key="SECRET")
    assert client.get("a").id == "a"
    [(_, path, headers, _)] = elsewhere.requests
    assert path == "/v1/jobs/a" and "Authorization" not in headers, headers
    assert client.get("b").id == "b"                      # followed, with the key
    _, path, headers, _ = first.requests[-1]
    assert path == "/v1/jobs/b-moved" and headers["Authorization"] == "Bearer SECRET"
    for call in (lambda: client.submit("http://x.example/v.mp4", "http://x.example/a.wav"),
                 lambda: client.cancel("c")):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.code == "client.redirect" and elsewhere.url in str(caught.value)
    assert len(elsewhere.requests) == 1                   # nothing resent, as a GET or at all


def test_a_download_cut_short_raises_and_leaves_no_file(stub, tmp_path):
    def answer(h) -> None:
        if h.path.startswith("/v1/jobs/chunked"):         # a chunked body cut mid-chunk
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            h.wfile.write(b"100\r\n" + b"x" * 10)
        else:
            send(h, 200, b"0123456789", {"Content-Type": "video/mp4"}, length=100000)

    client = Client(stub(answer).url)
    for job_id, said in (("short", "after 10 of 100000 bytes"), ("chunked", "after 0 bytes")):
        with pytest.raises(ClientError) as caught:
            client.download(job_id, tmp_path / "out.mp4")
        assert caught.value.code == "client.unreachable" and said in caught.value.detail
        assert list(tmp_path.iterdir()) == []              # no short file, no partial one


def test_answers_that_are_not_the_api_are_client_errors_not_tracebacks(stub, tmp_path):
    def answer(h) -> None:
        if h.path == "/v1/jobs/html":
            send(h, 200, b"<html>a login page</html>", {"Content-Type": "text/html"})
        elif h.path == "/v1/jobs/other":
            send(h, 200, {"hello": "world"})
        else:
            h.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")    # not HTTP at all

    client = Client(stub(answer).url)
    for job_id, said in (("html", "not JSON: b'<html>a login page"),
                         ("other", "not a job document"), ("ssh", "not an HTTP answer")):
        with pytest.raises(ClientError) as caught:
            client.get(job_id)
        assert caught.value.code == "client.bad_response" and said in caught.value.detail
    assert run_cli("status", "html", "--server", client.base_url, cwd=tmp_path).stderr.startswith(
        "error client.bad_response: ")


def test_wait_rides_out_a_restart_until_its_deadline(stub):
    polls: list[str] = []

    def answer(h) -> None:
        polls.append(h.path)
        n = len(polls)
        if h.path == "/v1/jobs/gone":
            send(h, 404, {"code": "job.not_found", "detail": "no job with id 'gone'"})
        elif h.path == "/v1/jobs/down" or n in (2, 3):
            send(h, 503, b"restarting", {"Content-Type": "text/plain"})
        elif n == 4:
            h.wfile.write(b"")                       # the connection closes: no answer
        else:
            send(h, 200, job_document("j", "running" if n < 6 else "succeeded", "/r"))

    client = Client(stub(answer).url)
    updates: list[JobStatus] = []
    retries: list[ClientError] = []
    final = client.wait("j", on_progress=updates.append, on_retry=retries.append, timeout=30,
                        interval=0.05)
    assert final.state == "succeeded" and len(polls) == 6
    assert [e.code for e in retries] == ["http.503", "http.503", "client.unreachable"]
    assert [u.state for u in updates] == ["running", "running", "succeeded"]  # heard again
    with pytest.raises(ClientError) as caught:              # not temporary: not retried
        client.wait("gone", on_retry=retries.append)
    assert caught.value.code == "job.not_found" and len(retries) == 3
    for limits in ({"timeout": 0.5}, {"max_outage": 0.5}):  # an outage that does not end
        started = time.monotonic()
        with pytest.raises(ClientError) as caught:
            client.wait("down", interval=0.05, **limits)
        assert caught.value.code == "http.503" and 0.5 <= time.monotonic() - started < 5


def test_status_joins_the_result_path_under_a_proxy_prefix(stub, tmp_path):
    """Behind a proxy with SCRIPT_NAME=/dh the server's paths already start with /dh."""
    def answer(h) -> None:
        if h.path == "/dh/v1/jobs/p":
            send(h, 200, job_document("p", "succeeded", "/dh/v1/jobs/p/result"))
        else:
            send(h, 404, {"code": "route.not_found", "detail": h.path})

    base = stub(answer).url
    shown = run_cli("status", "p", "--server", f"{base}/dh/", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"result: {base}/dh/v1/jobs/p/result (mp4, 512x512" in shown.stdout


def test_cli_wait_says_it_is_reconnecting_and_follows_on(stub, tmp_path):
    polls: list[str] = []

    def answer(h) -> None:
        polls.append(h.command)
        if h.command == "POST":
            send(h, 201, job_document("r", "queued"))
        elif len(polls) in (2, 3):
            send(h, 503, b"restarting", {"Content-Type": "text/plain"})
        else:
            send(h, 200, job_document("r", "succeeded", "/v1/jobs/r/result"))

    url = stub(answer).url
    done = run_cli("submit", "--video", "http://x.example/v.mp4", "--audio",
                   "http://x.example/a.wav", "--wait", "--server", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("reconnecting… (http.503: HTTP 503: restarting)") == 1, done.stderr
    assert done.stdout.startswith(f"{url}/v1/jobs/r/result: ") and len(polls) == 4
