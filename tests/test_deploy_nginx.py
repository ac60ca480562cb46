"""deploy/nginx/dhserve.conf as shipped, in front of a real `dhserve serve` (split layout,
SQLite, CPU): Debian's nginx runs that very file (only its two marked addresses replaced),
and the HeyGem flow, a /v1 upload, a ranged result download and the web page go through it
and answer as they do directly. Also test_gpu_fix.py's answer on a host without a GPU."""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import ROOT, wait_for
from serving_support import PYTHON, ServiceProcess, dhserve_cli, free_port, gunicorn_serves_app

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONFIG = ROOT / "deploy" / "nginx" / "dhserve.conf"
UPSTREAM_LINE = "    server 127.0.0.1:8383;"
LISTEN_LINE = "    listen 80;"
KEY = "deploy-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# headers a hop may set on its own; every other one must come through as dhserve sent it
HOP_HEADERS = {"server", "date", "connection", "keep-alive", "transfer-encoding"}


def nginx_config(root: Path, listen: int, upstream: int) -> Path:
    """A main nginx.conf in `root` (its own pid file, logs and temp folders, in the
    foreground) that includes dhserve.conf with its two marked addresses replaced."""
    site = CONFIG.read_text()
    for line in (UPSTREAM_LINE, LISTEN_LINE):
        assert site.count(line) == 1, f"{CONFIG} no longer has {line!r} once"
    site = site.replace(UPSTREAM_LINE, f"    server 127.0.0.1:{upstream};") \
        .replace(LISTEN_LINE, f"    listen 127.0.0.1:{listen};")
    (root / "dhserve.conf").write_text(site)
    temps = "\n".join(f"    {kind}_temp_path {root / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = root / "nginx.conf"
    main.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {root / 'nginx.pid'};
error_log {root / 'error.log'} info;
events {{ worker_connections 64; }}
http {{
    access_log {root / 'access.log'};
{temps}
    include {root / 'dhserve.conf'};
}}
""")
    return main


@pytest.fixture
def nginx_in_front(tmp_path):
    """(nginx's URL, the service): `dhserve serve` with an API key behind nginx."""
    if not Path(NGINX).exists():
        pytest.skip(f"NGINX NOT TESTED: no nginx at {NGINX} (apt-get install nginx-light)")
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--layout", "split"),
                             {"DHSERVE_API_KEY": KEY, "DHSERVE_BACKEND": "classic",
                              "DHSERVE_DEVICE": "cpu"})
    port = free_port()
    root = tmp_path / "nginx"
    root.mkdir()
    config = nginx_config(root, port, service.port)
    checked = subprocess.run([NGINX, "-t", "-c", str(config), "-p", str(root)],
                             check=False, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    nginx = subprocess.Popen([NGINX, "-c", str(config), "-p", str(root)],
                             stdout=subprocess.DEVNULL, stderr=open(root / "stderr", "wb"))  # noqa: SIM115
    try:
        service.wait_serving("/readyz", headers=AUTH)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/livez"), 20, "nginx in front of dhserve", every=0.2)
        yield url, service
    finally:
        nginx.send_signal(signal.SIGQUIT)           # nginx's graceful stop
        try:
            nginx.wait(timeout=15)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        service.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def same_answer(via: requests.Response, direct: requests.Response) -> None:
    """The same status, body and headers (but the hop's own) through nginx as directly."""
    assert (via.status_code, via.content) == (direct.status_code, direct.content), via.url
    theirs = {k.lower(): v for k, v in direct.headers.items() if k.lower() not in HOP_HEADERS}
    ours = {k.lower(): v for k, v in via.headers.items() if k.lower() not in HOP_HEADERS}
    assert ours == theirs, via.url


def test_nginx_config_serves_heygem_v1_ranges_and_the_page_as_dhserve_does(
        nginx_in_front, tiny_template, tiny_speech):
    url, service = nginx_in_front
    shutil.copy(tiny_template, service.temp / "avatar.mp4")
    shutil.copy(tiny_speech, service.temp / "speech.wav")
    polls = requests.Session()                  # HeyGem's client: one kept-alive connection

    # HeyGem's flow through nginx. dhserve never exempts a forwarded request from the key:
    # directly from this machine /easy needs none, through nginx it does (the client sends
    # it, the config's option 2)
    body = {"video_url": "avatar.mp4", "audio_url": "speech.wav", "code": "via-nginx"}
    refused = polls.post(url + "/easy/submit", json=body, timeout=30).json()
    assert refused["code"] == 9999 and "auth.required" in refused["msg"], refused
    accepted = polls.post(url + "/easy/submit", json=body, headers=AUTH, timeout=30).json()
    assert accepted == {"code": 10000, "data": {}, "msg": 10000, "success": True}
    query = f"/easy/query?code={body['code']}"
    task = wait_for(lambda: (t := polls.get(url + query, headers=AUTH, timeout=30)
                             .json()["data"])["status"] in (2, 3) and t, 90, "the HeyGem job",
                    every=0.3)
    assert task["status"] == 2, (task, service.output()[-3000:])
    assert (service.temp / task["result"].lstrip("/")).stat().st_size > 0
    same_answer(polls.get(url + query, headers=AUTH, timeout=30),
                requests.get(service.url + query, timeout=30))

    # a /v1 multipart upload through nginx (streamed to dhserve, not buffered by nginx)
    form = {"video": ("avatar.mp4", tiny_template.read_bytes(), "video/mp4"),
            "audio": ("speech.wav", tiny_speech.read_bytes(), "audio/wav")}
    created = requests.post(url + "/v1/jobs", files=form, timeout=60,
                            headers={**AUTH, "Idempotency-Key": "upload-via-nginx"})
    assert created.status_code == 202, created.text
    assert created.headers["Location"] == "/v1/jobs/upload-via-nginx"
    job_path = created.headers["Location"]
    job = wait_for(lambda: (j := requests.get(url + job_path, headers=AUTH, timeout=30)
                            .json())["state"] not in ("queued", "running") and j, 90,
                   "the /v1 job", every=0.3)
    assert job["state"] == "succeeded", (job, service.output()[-3000:])
    same_answer(requests.get(url + job_path, headers=AUTH, timeout=30),
                requests.get(service.url + job_path, headers=AUTH, timeout=30))

    # the result: whole, and a Range request (206 with the right bytes), as directly
    result = job["result"]["url"]
    whole = requests.get(url + result, headers=AUTH, timeout=30)
    same_answer(whole, requests.get(service.url + result, headers=AUTH, timeout=30))
    assert whole.headers["Content-Type"] == "video/mp4" and len(whole.content) > 2000
    ranged = {**AUTH, "Range": "bytes=1000-1999"}
    part = requests.get(url + result, headers=ranged, timeout=30)
    assert part.status_code == 206, part.headers
    assert part.content == whole.content[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(whole.content)}"
    same_answer(part, requests.get(service.url + result, headers=ranged, timeout=30))
    tail = requests.get(url + result, headers={**AUTH, "Range": "bytes=-100"}, timeout=30)
    assert tail.status_code == 206 and tail.content == whole.content[-100:]

    # the web page and its script (no key needed), byte for byte
    for path in ("/", "/ui/app.js"):
        page = requests.get(url + path, timeout=30)
        assert page.status_code == 200 and page.content
        same_answer(page, requests.get(service.url + path, timeout=30))

    # nginx keeps its connections to dhserve open (keepalive 16): after many requests some
    # are still established; without keep-alive each would have closed with its answer
    for _ in range(20):
        requests.get(url + "/livez", timeout=10)
    assert 1 <= len(established_to(service.port)) <= 16

    # large_client_header_buffers 4 32k: nginx bounds the request line (dhserve does not)
    connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]),
                                            timeout=10)
    connection.request("GET", "/easy/query?code=" + "x" * 40_000)
    assert connection.getresponse().status == 414


def established_to(port: int) -> list[str]:
    """The local ends of established TCP connections to 127.0.0.1:`port` (/proc/net/tcp)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return [row[1] for row in rows if row[2] == f"0100007F:{port:04X}" and row[3] == "01"]


def test_gpu_fix_script_has_nothing_to_verify_without_an_nvidia_gpu():
    """On a host without an NVIDIA GPU, the guide's verification says so and exits 77 (a
    skip for test harnesses), before starting anything."""
    from dhserve.runtime.gpu import gpu_summary

    if gpu_summary()["available"] and shutil.which("nvidia-smi"):
        pytest.skip("this host has an NVIDIA GPU: run `python test_gpu_fix.py` itself")
    start = time.monotonic()
    run = subprocess.run([PYTHON, str(ROOT / "test_gpu_fix.py")], cwd=ROOT, check=False,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 77, (run.stdout, run.stderr)
    assert run.stdout.startswith("no NVIDIA GPU: nothing to verify"), run.stdout
    assert time.monotonic() - start < 30



SERVICE_UNIT = ROOT / "deploy" / "systemd" / "dhserve.service"
ENV_FILE = ROOT / "deploy" / "systemd" / "dhserve.env"


def test_systemd_unit_waits_for_a_render_to_finish_and_its_env_file_is_read(tmp_path):
    """dhserve.service: systemd's SIGKILL comes after dhserve's own longest stop (a render's
    grace + Gunicorn's graceful timeout, as the example env file sets them), SIGTERM reaches
    `dhserve serve` alone; every variable the env file sets or shows is one dhserve reads;
    and `systemd-analyze verify` accepts the unit (pointed at this checkout)."""
    import re
    from dataclasses import fields

    from dhserve.config import ServingSettings, Settings, _env_name

    unit = dict(re.findall(r"^(\w+)=(.*)$", SERVICE_UNIT.read_text(), re.MULTILINE))
    assert unit["KillSignal"] == "SIGTERM" and unit["KillMode"] == "mixed"
    assert unit["Restart"] == "on-failure" and unit["EnvironmentFile"] == "/etc/dhserve/dhserve.env"
    assert unit["ExecStart"].endswith("/.venv/bin/dhserve serve")
    shown = dict(re.findall(r"^#? ?((?:DHSERVE|GUNICORN)_\w+)=(.*)$", ENV_FILE.read_text(),
                            re.MULTILINE))
    settings = Settings.from_env(shown)
    serving = ServingSettings.from_env(shown)
    assert int(unit["TimeoutStopSec"]) >= settings.stop_grace_seconds + \
        serving.graceful_timeout + 15
    known = {_env_name(f) for cls in (Settings, ServingSettings) for f in fields(cls)}
    assert set(shown) <= known, set(shown) - known
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("SYSTEMD-ANALYZE NOT RUN: systemd-analyze is not installed")
    local = tmp_path / "dhserve.service"
    dhserve = Path(PYTHON).parent / "dhserve"          # this virtualenv's, wherever it is
    local.write_text(SERVICE_UNIT.read_text().replace("/opt/dhserve/.venv/bin/dhserve",
                                                      str(dhserve))
                     .replace("/opt/dhserve", str(ROOT)))
    verified = subprocess.run([analyze, "verify", str(local)], check=False,
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def test_app_server_is_the_guides_other_name_for_the_service(tmp_path):
    """app_server.py, as app_production.py: `python app_server.py` is `dhserve serve`, and
    `gunicorn app_server:app` finds the app (made in the worker, after the fork)."""
    usage = subprocess.run([PYTHON, str(ROOT / "app_server.py"), "--help"], cwd=tmp_path,
                           check=False, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0, usage.stderr
    assert "usage: python app_server.py" in usage.stdout
    assert "runs: dhserve serve" in usage.stdout and "--layout" in usage.stdout
    assert gunicorn_serves_app(tmp_path, "app_server") == "gunicorn"
