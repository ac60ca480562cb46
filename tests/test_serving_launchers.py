"""The launchers as an operator runs them, from another directory with no PYTHONPATH:
`dhserve serve` in each mode, the fall-back to Flask's threaded server when Gunicorn fails to
boot, and every classic script name and flag."""

from __future__ import annotations

import re
import signal
import subprocess

import pytest
import requests
from conftest import ROOT, wait_for
from serving_support import (
    ServiceProcess,
    dhserve_cli,
    free_port,
    gunicorn_serves_app,
    script,
    stage_example,
)

BROKEN_GUNICORN = {"GUNICORN_WORKER_CLASS": "eventlet"}     # not installed: Gunicorn exits


def server_software(service: ServiceProcess) -> str:
    return requests.get(service.url + "/livez", timeout=10).headers["Server"]


def test_auto_falls_back_to_flask_when_gunicorn_fails_to_boot(tmp_path):
    service = ServiceProcess(tmp_path, dhserve_cli("serve"), BROKEN_GUNICORN).wait_serving()
    try:
        assert server_software(service).startswith("Werkzeug")
        wait_for(lambda: "dhserve is serving at" in service.output(), 30, "the start-up line")
        health = service.health()
        assert health["status"] == "ok"
        assert health["serving"]["server"] == "flask (werkzeug, threaded)", health["serving"]
        assert health["serving"]["worker_class"] is None
        stage_example(service.temp)
        service.submit("fallback-1")
        service.wait_done("fallback-1")
    finally:
        assert service.stop() == 0
    output = service.output()
    assert "Gunicorn failed to boot (exit status 1): Error: class uri 'eventlet' invalid" \
        in output
    assert "Falling back to Flask's threaded server" in output
    serving = re.search(r"dhserve is serving at \S+ \((.*)\)", output).group(1)
    assert serving.startswith("flask (werkzeug, threaded), split layout"), serving


def test_auto_serves_with_flask_where_gunicorn_cannot_be_imported(tmp_path):
    """A machine whose Gunicorn is broken or missing: every process of the service sees a
    `gunicorn` that fails to import, and the API is served all the same."""
    shadow = tmp_path / "no-gunicorn" / "gunicorn"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("gunicorn is not installed")\n')
    service = ServiceProcess(tmp_path, dhserve_cli("serve"),
                             {"PYTHONPATH": str(shadow.parent)}).wait_serving()
    try:
        assert server_software(service).startswith("Werkzeug")
        assert service.health()["status"] == "ok"
    finally:
        assert service.stop() == 0
    assert "gunicorn is not installed" in service.output()
    assert "Falling back to Flask's threaded server" in service.output()


def test_gunicorn_mode_refuses_to_fall_back(tmp_path):
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--mode", "gunicorn"),
                             BROKEN_GUNICORN)
    assert service.process.wait(timeout=60) == 1
    output = service.output()
    assert "Gunicorn failed to boot" in output and "Falling back" not in output
    assert "Werkzeug" not in output and "Traceback" in output       # Gunicorn's own report


@pytest.mark.parametrize("mode", ["flask", "gunicorn"])
def test_a_stop_during_start_up_is_a_clean_stop(tmp_path, mode):
    """A process manager may stop the service before it is up: exit 0, nothing left running,
    no error (the launcher used to call its own interrupted start a failure, status 1)."""
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--mode", mode))
    wait_for(lambda: "started (pid" in service.output(), 30, "the first child to start",
             every=0.02)
    assert service.stop() == 0
    output = service.output()
    assert " ERROR " not in output and "interrupted" not in output, output


def test_flask_mode_serves_and_renders(tmp_path):
    """What the start-up lines and /health report is what serves: Flask's server, no
    Gunicorn workers (they used to say "2 x gthread worker(s)")."""
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--mode", "flask")).wait_serving()
    try:
        assert server_software(service).startswith("Werkzeug")
        serving = service.health()["serving"]
        assert serving["layout"] == "split"
        assert (serving["server"], serving["web_workers"], serving["worker_class"]) == \
            ("flask (werkzeug, threaded)", 1, None)
        wait_for(lambda: "dhserve is serving at" in service.output(), 30, "the start-up line")
    finally:
        assert service.stop() == 0
    output = service.output()
    assert "worker(s)" not in output.replace("1 render worker(s)", "")
    assert "web: flask (werkzeug, threaded), bind" in output
    assert "dhserve is serving at http://127.0.0.1:" in output
    assert "(flask (werkzeug, threaded), split layout" in output


def test_gunicorn_mode_reports_the_workers_gunicorn_runs(tmp_path):
    """/health's serving summary is Gunicorn's configuration in effect, GUNICORN_CMD_ARGS
    included (here 1 worker with 3 threads where the plan had 2 x 8)."""
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--mode", "gunicorn"),
                             {"GUNICORN_CMD_ARGS": "--workers 1 --threads 3"})
    try:
        serving = service.wait_serving().health()["serving"]
        assert server_software(service) == "gunicorn"
        assert (serving["server"], serving["web_workers"], serving["threads"]) == \
            ("gunicorn (1 x gthread worker(s), 3 thread(s))", 1, 3), serving
    finally:
        assert service.stop() == 0


def test_flask_all_in_one_recycles_on_hup_after_the_render(tmp_path):
    """Flask's server has no workers to recycle: on SIGHUP it lets the job finish, then the
    process ends and `dhserve serve` starts it again."""
    service = ServiceProcess(tmp_path, dhserve_cli("serve", "--mode", "flask", "--layout",
                                                   "all-in-one")).wait_serving()
    stage_example(service.temp, speech_repeats=4)
    try:
        service.submit("flask-hup")
        wait_for(lambda: service.query("flask-hup")["progress"] > 5, 60, "rendering")
        service.signal(signal.SIGHUP)

        def finished():                             # the port is closed while it restarts
            try:
                return requests.get(f"{service.url}/v1/jobs/flask-hup", timeout=5).json()
            except requests.RequestException:
                return None

        job = wait_for(lambda: (j := finished()) and j["state"] != "running" and j, 120,
                       "the job to finish")
        service.wait_serving()                      # serving again, a fresh process
    finally:
        assert service.stop() == 0
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert re.search(r"web \(flask\) \(pid \d+\) exited with status 0", service.output())
    assert "handed back" not in service.output()


@pytest.mark.parametrize(("argv", "layout", "server"), [
    (script("start_simple_gpu_server.py"), "all-in-one", "gunicorn"),
    (script("start_simple_gpu_server.py", "auto"), "all-in-one", "gunicorn"),
    (script("start_simple_gpu_server.py", "flask"), "all-in-one", "Werkzeug"),
    (script("start_cuda_fixed_server.py"), "split", "gunicorn"),
    (script("start_cuda_fixed_server.py", "flask"), "split", "Werkzeug"),
    (script("start_gpu_server.sh", "--production"), "split", "gunicorn"),
    (script("app_production.py"), "split", "gunicorn"),
], ids=lambda value: " ".join(value[1:]).replace(str(ROOT) + "/", "")
    if isinstance(value, list) else None)
def test_classic_launchers_serve(tmp_path, argv, layout, server):
    service = ServiceProcess(tmp_path, argv).wait_serving()     # a renderer is ready, too
    try:
        assert server_software(service).startswith(server)
        health = service.health()
        assert health["serving"]["layout"] == layout
        assert health["status"] == "ok"
    finally:
        assert service.stop() == 0


@pytest.mark.parametrize(("argv", "expected"), [
    (script("start_gpu_server.sh", "--diagnose"), "CUDA not initialised"),
    (script("start_gpu_server.sh", "--help"), "--production"),
    (script("check_gpu_gunicorn.py"), "profile cpu"),           # the doctor: all ok here
    (dhserve_cli("serve", "--diagnose", "--layout", "all-in-one"), "layout all-in-one"),
], ids=["start_gpu_server.sh --diagnose", "start_gpu_server.sh --help", "check_gpu_gunicorn.py",
        "serve --diagnose"])
def test_classic_checks_run(tmp_path, argv, expected):
    env = {"PATH": "/usr/bin:/bin", "DHSERVE_DATA_DIR": str(tmp_path / "data"),
           "GUNICORN_BIND": f"127.0.0.1:{free_port()}"}       # the doctor checks the port
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout


def test_diagnose_shows_keepalive_and_gunicorn_cmd_args_in_effect(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DHSERVE_DATA_DIR": str(tmp_path / "data"),
           "GUNICORN_KEEPALIVE": "30", "GUNICORN_CMD_ARGS": "--keep-alive 9 --threads 3"}
    done = subprocess.run(dhserve_cli("serve", "--diagnose"), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "keep-alive 30 s" in done.stdout                        # dhserve's plan
    assert ("gunicorn in effect: 2 x gthread worker(s), 3 thread(s), timeout 600 s, "
            "keep-alive 9 s (GUNICORN_CMD_ARGS applied), request line unlimited") \
        in done.stdout, done.stdout


def test_gunicorn_finds_the_app_in_app_production(tmp_path):
    assert gunicorn_serves_app(tmp_path, "app_production") == "gunicorn"


def test_nothing_outlives_a_killed_supervisor(tmp_path):
    """`dhserve serve` SIGKILLed (no chance to stop its children): the Gunicorn tree and the
    render worker notice and stop by themselves, in their own sessions as they are."""
    import psutil

    service = ServiceProcess(tmp_path, dhserve_cli("serve")).wait_serving()
    tree = psutil.Process(service.process.pid).children(recursive=True)
    assert len(tree) >= 4                 # gunicorn master, 2 web workers, a renderer
    service.process.kill()
    service.process.wait()

    def gone(process: psutil.Process) -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        wait_for(lambda: all(gone(p) for p in tree), 30, "every child to stop")
    finally:
        for process in tree:
            if not gone(process):
                process.kill()
    assert "supervisor (pid" in service.output() and "is gone: stopping" in service.output()
