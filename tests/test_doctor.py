"""`dhserve doctor`: each check group against a real passing and a real failing setup —
Gunicorn config files loaded by Gunicorn's loader, ONNX Runtime sessions, model files, PyAV's
encoders, data dirs, databases, listening sockets — asserting the status, the exit code and
the JSON a user or a script reads."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from serving_support import free_port

from dhserve.config import Settings
from dhserve.doctor import GROUPS, run_checks
from dhserve.doctor.base import ERROR, OK, WARNING, Facts, ProbeResult, guarded, run_probe
from dhserve.doctor.gpu import gpu_checks
from dhserve.doctor.gunicorn import filesystem_type
from dhserve.doctor.onnxruntime import (
    CPU,
    CUDA,
    SESSION_PROBE,
    TENSORRT,
    failure_reason,
    provider_check,
    tiny_model,
)
from dhserve.doctor.pytorch import pytorch_verdict
from dhserve.runtime.gpu import GpuSummary

# What NVML reports on a machine with one 24 GB GPU: the config files below are built for it,
# the way dhserve's gunicorn.conf.py builds its settings on such a machine.
A10 = {"available": True, "driver": "550.54", "devices": [
    {"index": 0, "name": "NVIDIA A10", "memory_total_mb": 23028.0, "memory_used_mb": 300.0,
     "utilization_percent": 0}]}
NO_GPU = {"available": False, "reason": "NVML: NVML Shared Library Not Found"}
LINE = re.compile(r"^(ok|warning|error) +(\w+)/([^:]+): (.+)$")
OWN_VARIABLES = ("DHSERVE_", "GUNICORN_", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                 "CUDA_DEVICE_ORDER", "PYTORCH_NVML_BASED_CUDA_CHECK")
# ONNX Runtime's own log lines when libcudnn is missing (onnxruntime issue #21424's report)
CUDNN_MISSING = [
    ("2024-07-12 10:01:02.345 [E:onnxruntime:Default, provider_bridge_ort.cc:1745 "
     "TryGetProviderInfo_CUDA] /onnxruntime_src/onnxruntime/core/session/"
     "provider_bridge_ort.cc:1426 onnxruntime::Provider& onnxruntime::ProviderLibrary::"
     "Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
     "libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared "
     "object file: No such file or directory"),
    ("2024-07-12 10:01:02.346 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:895 "
     "CreateExecutionProviderInstance] Failed to create CUDAExecutionProvider. Require "
     "cuDNN 9.* and CUDA 12.*, and the latest MSVC runtime.")]


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    """A data dir of its own and a free port: the doctor's view of a fresh CPU install, from a
    directory without a gunicorn.conf.py. The doctor reads this process's environment (as
    the service does): the variables are set here too, and put back after the test."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(OWN_VARIABLES):
            monkeypatch.delenv(name)
    variables = {"DHSERVE_DATA_DIR": str(tmp_path / "data"),
                 "GUNICORN_BIND": f"127.0.0.1:{free_port()}"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


@pytest.fixture
def checks(env, monkeypatch):
    """run_checks in this process with extra variables set for it."""
    def run(*groups: str, config: Path | None = None, **variables: str):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return run_checks(config=config, groups=groups)
    return run


@pytest.fixture
def cpu_host():
    """For tests of what a machine without a GPU reports: skipped where NVML sees a GPU or
    CUDA is compiled into onnxruntime (there the same checks come out ok)."""
    import onnxruntime as ort

    from dhserve.runtime.gpu import gpu_summary

    if gpu_summary()["available"]:
        pytest.skip("NVML sees a GPU here")
    if CUDA in ort.get_available_providers():
        pytest.skip("CUDA is compiled into this onnxruntime")


def doctor(cwd: Path, *args: str, env: dict[str, str] | None = None,
           as_json: bool = True) -> tuple[int, dict | str]:
    """`dhserve doctor` as an operator runs it: a fresh process, exit status and output."""
    done = subprocess.run([sys.executable, "-m", "dhserve.cli", "doctor",
                           *(["--json"] if as_json else []), *args],
                          cwd=cwd, env=clean_environ(**(env or {})), capture_output=True,
                          text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    if not as_json:
        return done.returncode, done.stdout
    assert done.stdout.startswith("{"), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def find(report, group: str, name: str):
    checks = report["checks"] if isinstance(report, dict) else \
        [c.__dict__ for c in report.checks]
    found = [c for c in checks if c["group"] == group and c["name"] == name]
    assert found, f"no {group}/{name} in {[(c['group'], c['name']) for c in checks]}"
    return found[0]


def statuses(report, group: str) -> dict[str, str]:
    return {c.name: c.status for c in report.checks if c.group == group}


def sitecustomize(tmp_path: Path, code: str) -> dict[str, str]:
    """Variables that make every Python process started with them run `code` first."""
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(code + "\n")
    return clean_environ(PYTHONPATH=str(folder))


# -- the whole doctor, as a command --------------------------------------------------------------

def test_fresh_cpu_install_is_all_ok_and_the_json_follows_its_schema(tmp_path, env, cpu_host):
    code, report = doctor(tmp_path, env=env)
    assert code == 0, [c for c in report["checks"] if c["status"] != OK]
    assert report["version"] == 1 and report["status"] == "ok" and report["exit_code"] == 0
    assert report["counts"] == {"ok": len(report["checks"]), "warning": 0, "error": 0}
    assert [g for g in GROUPS if any(c["group"] == g for c in report["checks"])] == list(GROUPS)
    for check in report["checks"]:
        assert set(check) == {"group", "name", "status", "detail", "remedy", "fix_hint", "data"}
        assert check["group"] in GROUPS and check["status"] in ("ok", "warning", "error")
    assert "CPU mode" in find(report, "gpu", "devices")["detail"]
    cpu = find(report, "onnxruntime", "CPUExecutionProvider")
    assert cpu["data"]["session_providers"] == ["CPUExecutionProvider"]
    assert cpu["data"]["result_ok"] is True
    config = find(report, "gunicorn", "config")       # no gunicorn.conf.py here: dhserve serve's
    assert config["data"]["plan"]["layout"] == "split"
    assert find(report, "network", "port")["data"] == {"bind": env["GUNICORN_BIND"], "free": True}
    assert not (tmp_path / "data" / "log").exists()      # the built-in config made no folder


def test_only_the_groups_asked_for_run(tmp_path, env):
    """`--only system` does not load the Gunicorn config; `--only network` loads it for the
    bind it names, and judges nothing else."""
    port = free_port()
    (tmp_path / "gunicorn.conf.py").write_text(
        "open('loaded', 'a').write('x')\n"
        f"bind = '127.0.0.1:{port}'\nworker_tmp_dir = '/dev/shm'\n")
    code, report = doctor(tmp_path, "--only", "system", env=env)
    assert {c["group"] for c in report["checks"]} == {"system"}
    assert not (tmp_path / "loaded").exists() and not (tmp_path / "data").exists()
    code, report = doctor(tmp_path, "--only", "network", env=env)
    assert code == 0 and {c["group"] for c in report["checks"]} == {"network"}
    assert find(report, "network", "port")["data"]["bind"] == f"127.0.0.1:{port}"
    assert (tmp_path / "loaded").read_text() == "x"


@pytest.mark.parametrize(("groups", "not_loaded"), [
    (["network"], ("onnxruntime", "av", "sqlalchemy", "torch")),
    (["system", "gpu", "gunicorn"], ("onnxruntime", "av", "sqlalchemy", "torch")),
    (["storage"], ("onnxruntime", "av", "torch")),
    (["media"], ("onnxruntime", "sqlalchemy", "torch")),
], ids=["network", "system-gpu-gunicorn", "storage", "media"])
def test_a_group_loads_only_what_it_checks(tmp_path, env, groups, not_loaded):
    """Each group's module is imported only when its group runs: `--only network` brings no
    ONNX Runtime into the process."""
    statement = ("import sys\nfrom dhserve.doctor import run_checks\n"
                 f"report = run_checks(groups={groups!r})\n"
                 "print(sorted({c.group for c in report.checks}))\n"
                 f"print([m for m in {not_loaded!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", statement], cwd=tmp_path,
                          env=clean_environ(**env), capture_output=True, text=True,
                          timeout=120, check=True)
    ran, loaded = done.stdout.splitlines()[-2:]
    assert ran == str(sorted(groups)) and loaded == "[]", done.stdout


def test_the_doctor_modules_import_one_way():
    """No import cycle among dhserve.doctor's modules, counting imports inside functions
    too: each group module loads on its own, and the framework (base) needs no group."""
    import ast

    folder = ROOT / "src" / "dhserve" / "doctor"
    graph = {}
    for path in folder.glob("*.py"):
        name = "dhserve.doctor" + ("" if path.stem == "__init__" else f".{path.stem}")
        tree = ast.parse(path.read_text())
        nodes = list(ast.walk(tree))
        graph[name] = {node.module for node in nodes if isinstance(node, ast.ImportFrom)
                       and (node.module or "").startswith("dhserve.doctor")}
        graph[name] |= {alias.name for node in nodes if isinstance(node, ast.Import)
                        for alias in node.names if alias.name.startswith("dhserve.doctor")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in graph.get(start, ()))

    assert graph["dhserve.doctor.base"] == set()
    assert [name for name in graph if reaches(name, name, set())] == []


def test_text_output_one_line_per_check_with_remedies_and_fix_hints(tmp_path, env, cpu_host):
    code, text = doctor(tmp_path, "--only", "gpu", "--only", "system", "--fix-hints",
                        env={**env, "DHSERVE_DEVICE": "cuda"}, as_json=False)
    assert code == 2
    lines = text.splitlines()
    checks = [m for m in map(LINE.match, lines) if m]
    assert {m.group(2) for m in checks} == {"gpu", "system"}
    error = next(i for i, line in enumerate(lines) if line.startswith("error    gpu/devices:"))
    assert "DHSERVE_DEVICE=cuda asks for one" in lines[error]
    remedy = lines[error + 1:lines.index(next(l for l in lines[error + 1:] if LINE.match(l)))]
    assert remedy[0].startswith(" " * 9 + "remedy: ") and "--gpus all" in " ".join(remedy)
    assert any(line.startswith(" " * 9 + "fix:") and "nvidia-smi" in line for line in remedy)
    assert lines[-1].endswith("exit status 2")
    # every line is a check, an indented remedy/fix line, or the closing count
    assert all(LINE.match(l) or l.startswith((" " * 9, "-- ")) for l in lines)


def test_check_gpu_gunicorn_script_runs_the_doctor(tmp_path, env):
    done = subprocess.run([sys.executable, str(ROOT / "check_gpu_gunicorn.py"), "--json",
                           "--only", "gunicorn", "--only", "network"], cwd=tmp_path,
                          env=clean_environ(**env), capture_output=True, text=True, timeout=120,
                          check=False)
    report = json.loads(done.stdout)
    assert done.returncode == report["exit_code"] == 0
    assert find(report, "gunicorn", "config")["data"]["source"].startswith("built-in")


def test_a_broken_setting_is_reported_and_the_other_checks_still_run(checks):
    report = checks("system", "storage", DHSERVE_CRF="best")
    assert find(report, "system", "settings")["status"] == ERROR
    assert "DHSERVE_CRF='best' is not a valid int" in find(report, "system", "settings")["detail"]
    assert statuses(report, "storage")["data dir"] == OK
    assert report.exit_code == 2


def test_a_check_that_fails_itself_is_an_error_line_naming_the_exception():
    found = guarded("media", lambda: {}["libx264"])
    assert [(c.group, c.status) for c in found] == [("media", ERROR)]
    assert "KeyError" in found[0].detail and found[0].remedy


def test_where_gunicorn_cannot_be_imported_it_is_a_finding_not_a_traceback(tmp_path, env):
    """Windows (no fcntl), or a broken install: every group still runs and answers."""
    shadow = tmp_path / "no-gunicorn" / "gunicorn"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("gunicorn is not installed")\n')
    broken = {**env, "PYTHONPATH": str(shadow.parent)}
    code, report = doctor(tmp_path, env=broken)
    assert {c["group"] for c in report["checks"]} == set(GROUPS)
    config = find(report, "gunicorn", "config")
    assert config["status"] == WARNING and "gunicorn is not installed" in config["detail"]
    assert "falls back to Flask" in config["remedy"]
    assert config["data"]["plan"]["layout"] == "split"       # the plan holds all the same
    assert find(report, "onnxruntime", CPU)["status"] == OK
    code, report = doctor(tmp_path, "--only", "gunicorn", "--config",
                          str(ROOT / "gunicorn.conf.py"), env=broken)
    assert code == 2 and "gunicorn is not installed" in find(report, "gunicorn",
                                                             "config")["detail"]


# -- Gunicorn config -----------------------------------------------------------------------------

def gunicorn_conf(tmp_path: Path, gpu: bool, extra: str = "", layout: str = "all-in-one"
                  ) -> Path:
    """A gunicorn.conf.py built on dhserve's settings (as the repository's is) for this data
    dir, on a machine with one A10 (`gpu`) or without a GPU; `extra` lines override them."""
    path = tmp_path / "gunicorn.conf.py"
    path.write_text(
        "from dhserve.config import ServingSettings, Settings\n"
        "from dhserve.serving.plan import plan_serving\n"
        "from dhserve.serving.web import gunicorn_settings\n"
        "from dhserve.runtime.gpu import GpuSummary\n"
        f"_settings = Settings(data_dir={str(tmp_path / 'data')!r})\n"
        f"_plan = plan_serving(_settings, ServingSettings.from_env({{}}), {layout!r}, "
        f"gpu=GpuSummary.from_json({A10 if gpu else NO_GPU!r}))\n"
        "globals().update(gunicorn_settings(_settings, _plan))\n" + extra + "\n")
    return path


def test_repository_gunicorn_conf_is_all_ok(tmp_path, env):
    """In a process of its own, so that a model framework it imported would be seen."""
    code, report = doctor(tmp_path, "--only", "gunicorn", "--config",
                          str(ROOT / "gunicorn.conf.py"), env=env)
    assert code == 0, report
    config = find(report, "gunicorn", "config")
    assert config["data"]["plan"]["layout"] == "all-in-one"
    assert config["data"]["settings"]["preload_app"] is False


@pytest.mark.parametrize("gpu", [True, False], ids=["A10", "cpu"])
def test_gunicorn_conf_built_on_dhserve_is_all_ok(tmp_path, env, gpu):
    code, report = doctor(tmp_path, "--only", "gunicorn", "--config",
                          str(gunicorn_conf(tmp_path, gpu)), env=env)
    assert code == 0, report
    assert find(report, "gunicorn", "config")["data"]["plan"]["render_devices"] == \
        (["cuda:0"] if gpu else ["cpu"])


@pytest.mark.parametrize(("gpu", "extra", "layout", "name", "status", "said"), [
    (True, "preload_app = True", "all-in-one", "preload_app", ERROR, "preload_app is on"),
    (False, "preload_app = True", "all-in-one", "preload_app", ERROR,  # when_ready refuses it
     "preload_app is on"),
    (True, "workers = 2", "all-in-one", "workers", ERROR, "2 copies of the models"),
    (False, "workers = 2", "all-in-one", "workers", WARNING, "each render on the CPU"),
    (False, "worker_class = 'sync'\nthreads = 1", "all-in-one", "worker_class", ERROR,
     "sync worker with the all-in-one renderer"),
    (False, "worker_class = 'sync'\nthreads = 1", "split", "worker_class", WARNING,
     "sync web workers"),
    (False, "worker_class = 'eventlet'", "all-in-one", "worker_class", ERROR,   # not installed
     "eventlet cannot be loaded"),
    (False, "timeout = 10", "all-in-one", "timeout", WARNING, "timeout 10 s is shorter"),
    (False, "graceful_timeout = 20", "all-in-one", "graceful_timeout", WARNING,
     "graceful_timeout 20 s is shorter"),
    (False, "max_requests = 100", "all-in-one", "max_requests", WARNING,
     "max_requests = 100 with the all-in-one renderer"),
    (False, "worker_tmp_dir = {disk!r}", "all-in-one", "worker_tmp_dir", WARNING, "(disk)"),
    (False, "keepalive = 2", "split", "keepalive", WARNING,       # Gunicorn's own default
     "keep-alive 2 s: idle connections close within a client's 5 s idle time"),
], ids=["preload-gpu", "preload-cpu", "2-workers-gpu", "2-workers-cpu", "sync", "sync-web-only",
        "eventlet", "timeout", "graceful-timeout", "max-requests", "heartbeat-on-disk",
        "keepalive-2"])
def test_gunicorn_conf_problems(tmp_path, checks, gpu, extra, layout, name, status, said):
    disk = tmp_path / "heartbeats"
    disk.mkdir()
    if name == "worker_tmp_dir" and filesystem_type(str(disk)) in ("tmpfs", "ramfs"):
        pytest.skip(f"{disk} is in memory here: no disk directory to test with")
    conf = gunicorn_conf(tmp_path, gpu, extra.format(disk=str(disk)), layout)
    report = checks("gunicorn", config=conf)
    found = statuses(report, "gunicorn")
    assert found.pop(name) == status, report.text()
    assert set(found.values()) == {OK}, report.text()         # that problem, and only it
    assert report.exit_code == {WARNING: 1, ERROR: 2}[status]
    check = find(report, "gunicorn", name)
    assert said in check["detail"], check
    assert check["remedy"] and check["fix_hint"]


def test_a_cooperative_worker_with_the_renderer_is_an_error(tmp_path, checks):
    pytest.importorskip("gevent")
    report = checks("gunicorn", config=gunicorn_conf(tmp_path, False, "worker_class = 'gevent'"))
    check = find(report, "gunicorn", "worker_class")
    assert check["status"] == ERROR and "gevent worker with the all-in-one renderer" in \
        check["detail"]


def test_gunicorn_cmd_args_count_as_gunicorn_applies_them(tmp_path, checks):
    report = checks("gunicorn", config=gunicorn_conf(tmp_path, False),
                    GUNICORN_CMD_ARGS="--preload --timeout 5")
    assert "+ GUNICORN_CMD_ARGS" in find(report, "gunicorn", "config")["detail"]
    assert statuses(report, "gunicorn")["preload_app"] == ERROR
    assert find(report, "gunicorn", "timeout")["data"]["timeout"] == 5


def test_built_in_config_shows_keepalive_and_applies_gunicorn_cmd_args(checks):
    """Without a file the doctor judges what `dhserve serve` runs: the plan's settings with
    GUNICORN_CMD_ARGS over them, as the web tier applies it."""
    report = checks("gunicorn")
    config = find(report, "gunicorn", "config")
    assert "keep-alive 75 s" in config["detail"] and "GUNICORN_CMD_ARGS" not in config["detail"]
    assert config["data"]["settings"]["keepalive"] == 75
    assert config["data"]["settings"]["limit_request_line"] == 0     # long /easy codes pass
    assert find(report, "gunicorn", "keepalive")["status"] == OK
    report = checks("gunicorn", GUNICORN_KEEPALIVE="30")
    assert find(report, "gunicorn", "keepalive")["data"]["keepalive"] == 30
    report = checks("gunicorn", GUNICORN_CMD_ARGS="--keep-alive 2 --timeout 5")
    config = find(report, "gunicorn", "config")
    assert "+ GUNICORN_CMD_ARGS" in config["detail"] and "keep-alive 2 s" in config["detail"]
    assert find(report, "gunicorn", "keepalive")["status"] == WARNING
    assert config["data"]["settings"]["timeout"] == 5


def test_gunicorn_conf_without_dhserve_hooks_is_a_warning(tmp_path, checks):
    path = tmp_path / "plain.conf.py"
    path.write_text("bind = '127.0.0.1:9'\nworkers = 4\nworker_class = 'gthread'\n"
                    "worker_tmp_dir = '/dev/shm'\n")
    path_before = list(sys.path)
    report = checks("gunicorn", config=path)
    assert sys.path == path_before            # loading it changed nothing here for good
    assert find(report, "gunicorn", "config")["status"] == WARNING
    assert "does not use dhserve's hooks" in find(report, "gunicorn", "config")["detail"]
    assert statuses(report, "gunicorn")["workers"] == OK   # web only: workers are free


@pytest.mark.parametrize(("text", "said"), [
    ("raise RuntimeError('no such cluster')", "RuntimeError: no such cluster"),
    ("workers = 'many'", "Invalid value for workers"),
    (None, "no such file"),
], ids=["raises", "bad-value", "missing"])
def test_gunicorn_conf_that_cannot_load_is_an_error_not_a_crash(tmp_path, checks, text, said):
    path = tmp_path / "gunicorn.conf.py"
    if text is not None:
        path.write_text(text + "\n")
    report = checks("gunicorn", config=path)
    config = find(report, "gunicorn", "config")
    assert config["status"] == ERROR and said in config["detail"], config
    assert report.exit_code == 2


def test_a_conf_that_imports_a_model_framework_in_the_master_is_an_error(tmp_path, env):
    conf = gunicorn_conf(tmp_path, False, "import onnxruntime  # a model loaded at import")
    code, report = doctor(tmp_path, "--only", "gunicorn", "--config", str(conf), env=env)
    assert code == 2
    master = find(report, "gunicorn", "master")
    assert master["status"] == ERROR and "onnxruntime" in master["detail"]


# -- ONNX Runtime --------------------------------------------------------------------------------

def test_tiny_model_is_valid_onnx_and_computes_on_the_cpu():
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load_from_string(tiny_model())
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(tiny_model(), providers=["CPUExecutionProvider"])
    x = np.ones((1, 1, 4, 4), np.float32)
    assert np.allclose(session.run(None, {"x": x})[0], 2 * x)


def test_cuda_asked_for_without_cuda_in_onnxruntime_is_an_error(tmp_path, env, cpu_host):
    code, report = doctor(tmp_path, "--only", "onnxruntime", env={**env, "DHSERVE_DEVICE": "cuda"})
    cuda = find(report, "onnxruntime", CUDA)
    assert cuda["status"] == ERROR and cuda["data"]["compiled"] is False
    assert "not compiled into this onnxruntime" in cuda["detail"]
    assert "DHSERVE_DEVICE=cuda asks for it" in cuda["detail"]
    import onnxruntime as ort

    from dhserve.runtime.onnx import cuda_major_for_runtime
    assert f"CUDA {cuda_major_for_runtime(ort.__version__)}" in cuda["remedy"]
    assert "onnxruntime-gpu" in cuda["fix_hint"]
    assert find(report, "onnxruntime", CPU)["status"] == OK
    assert code == 2


def cpu_probe(environ: dict[str, str], timeout: float = 60) -> ProbeResult:
    request = {"provider": CPU, "device": "cpu", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    return run_probe(SESSION_PROBE, request, environ, timeout)


def test_the_probe_runs_in_a_child_and_reports_its_session(tmp_path):
    result = cpu_probe(clean_environ())
    assert result.problem is None, result.log
    assert result.answer["session_providers"] == [CPU] and result.answer["result_ok"] is True
    check = provider_check(CPU, result, [], [CPU], 12, "1.20.0")
    assert check.status == OK and "computes right" in check.detail


def test_a_probe_that_crashes_is_a_finding(tmp_path):
    """A segfault where a session is made (cuDNN, TensorRT) ends the probe, not the doctor."""
    crash = sitecustomize(tmp_path, "import ctypes, sys\n"
                                    "print('about to crash', file=sys.stderr, flush=True)\n"
                                    "ctypes.string_at(0)")
    result = cpu_probe(crash)
    assert result.answer is None and "died of SIGSEGV" in result.problem
    assert "about to crash" in result.log
    check = provider_check(CPU, result, [], [CPU], 12, "1.20.0")
    assert check.status == ERROR and "died of SIGSEGV" in check.detail
    check = provider_check(CUDA, result, ["DHSERVE_DEVICE=cuda"], [CUDA, CPU], 12, "1.20.0")
    assert check.status == ERROR and "died of SIGSEGV" in check.detail
    assert "crashed or hung" in check.remedy and "dmesg" in check.fix_hint


def test_a_probe_that_hangs_is_killed_at_its_timeout(tmp_path):
    hang = sitecustomize(tmp_path, "import time\ntime.sleep(60)")
    result = cpu_probe(hang, timeout=2)
    assert result.answer is None and "no answer within 2 s" in result.problem
    assert result.seconds < 10


@pytest.mark.parametrize(("provider", "log", "advice"), [
    (CUDA, CUDNN_MISSING, "needs CUDA 12 and cuDNN 9"),
    (TENSORRT, CUDNN_MISSING, "needs CUDA 12 and cuDNN 9"),       # not TensorRT's fault
    (TENSORRT, [("[E:onnxruntime:Default] Failed to load library "
                 "libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot "
                 "open shared object file: No such file or directory")],
     "TensorRT 10 for CUDA 12"),
], ids=["cuda-cudnn", "tensorrt-cudnn", "tensorrt-nvinfer"])
def test_a_provider_that_landed_on_the_cpu_names_the_library_and_the_fix(provider, log, advice):
    """What the probe reports when ONNX Runtime quietly dropped the provider (its log as the
    probe captured it on a GPU host)."""
    landed = ProbeResult({"session_providers": [CPU], "result_ok": False, "error": None,
                                 "ms": 40.0}, log)
    check = provider_check(provider, landed, ["DHSERVE_DEVICE=cuda"], [TENSORRT, CUDA, CPU], 12,
                           "1.20.0")
    assert check.status == ERROR and "landed on CPUExecutionProvider" in check.detail
    assert advice in check.remedy, check.remedy
    unasked = provider_check(provider, landed, [], [TENSORRT, CUDA, CPU], 12, "1.20.0")
    assert unasked.status == WARNING and "not asked for" in unasked.detail


def test_onnxruntime_and_onnxruntime_gpu_together_is_an_error(tmp_path, env):
    """What pip leaves when both are installed: two distributions' metadata for one module."""
    site = tmp_path / "site"
    info = site / "onnxruntime_gpu-1.32.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\n"
                                   "Version: 1.32.0\n")
    code, report = doctor(tmp_path, "--only", "onnxruntime",
                          env={**env, "PYTHONPATH": str(site)})
    package = find(report, "onnxruntime", "package")
    assert code == 2 and package["status"] == ERROR
    assert set(package["data"]["distributions"]) == {"onnxruntime", "onnxruntime-gpu"}
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in package["fix_hint"]


def test_failure_reason_names_the_library_onnxruntime_could_not_load():
    reason = failure_reason(CUDNN_MISSING)
    assert reason["missing_libraries"] == ["libcudnn.so.9"]
    assert reason["requires"] == ["cuDNN 9.*", "CUDA 12.*"]
    assert reason["summary"] == "ONNX Runtime could not load libcudnn.so.9"


@pytest.mark.gpu
def test_cuda_provider_usable_where_a_gpu_and_onnxruntime_gpu_exist(tmp_path, env):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed here")
    code, report = doctor(tmp_path, "--only", "gpu", "--only", "onnxruntime",
                          env={**env, "DHSERVE_DEVICE": "cuda"})
    cuda = find(report, "onnxruntime", "CUDAExecutionProvider")
    assert code == report["exit_code"] and cuda["status"] == OK, cuda
    assert cuda["data"]["session_providers"][0] == "CUDAExecutionProvider"
    assert find(report, "gpu", "devices")["status"] != ERROR


@pytest.mark.gpu
def test_gpu_host_with_cpu_only_onnxruntime_is_an_error_by_default(tmp_path, env):
    """`dhserve serve` puts a renderer on each GPU NVML sees: CUDA is asked for without any
    DHSERVE_DEVICE, and a CPU-only onnxruntime cannot give it."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    code, report = doctor(tmp_path, "--only", "gpu", "--only", "onnxruntime", env=env)
    cuda = find(report, "onnxruntime", "CUDAExecutionProvider")
    assert code == 2 and cuda["status"] == ERROR and "serving plan" in cuda["detail"]
    assert find(report, "gpu", "device 0")["data"]["memory_total_mb"] > 0


# -- PyTorch -------------------------------------------------------------------------------------

def test_pytorch_absent_is_fine(checks):
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    report = checks("pytorch")
    assert [(c.name, c.status) for c in report.checks] == [("torch", OK)]


# What the torch probe answers: a CPU-only wheel, and a CUDA 12.4 wheel on an A10 host that
# asked without PYTORCH_NVML_BASED_CUDA_CHECK (libcuda got loaded)
TORCH_CPU = {"version": "2.5.1+cpu", "cuda_build": None, "cuda_available": False,
             "device_count": 0, "cuda_initialised": None}
TORCH_CU124 = {"version": "2.5.1+cu124", "cuda_build": "12.4", "cuda_available": True,
               "device_count": 1,
               "cuda_initialised": "the CUDA driver library is loaded in this process "
                                   "(/usr/lib/x86_64-linux-gnu/libcuda.so.550.54)"}


def test_pytorch_verdicts(tmp_path):
    def verdict(torch, gpu, nvml_check=None, ort_major=None, wheel_major=12):
        facts = Facts(Settings(data_dir=tmp_path), None,
                      {"PYTORCH_NVML_BASED_CUDA_CHECK": nvml_check},
                      GpuSummary.from_json(gpu))
        return {c.name: c for c in pytorch_verdict(facts, torch, ort_major, wheel_major)}

    found = verdict(TORCH_CPU, A10, "1", wheel_major=13)
    assert found["torch"].status == WARNING and "CPU build" in found["torch"].remedy
    assert found["torch"].fix_hint.endswith("/whl/cu130")      # onnxruntime-gpu's CUDA 13
    assert found["fork safety"].status == OK
    assert verdict(TORCH_CPU, NO_GPU, "1")["torch"].status == OK

    found = verdict(TORCH_CU124, A10, None, ort_major=13, wheel_major=13)
    assert found["torch"].status == OK
    assert found["cuda major"].status == WARNING and "CUDA 12.4" in found["cuda major"].detail
    safety = found["fork safety"]
    assert safety.status == WARNING and "is unset" in safety.detail
    assert "it did here: the CUDA driver library is loaded" in safety.detail
    assert "PyTorch >= 2.0" in safety.remedy
    assert safety.fix_hint == "export PYTORCH_NVML_BASED_CUDA_CHECK=1"
    assert verdict({**TORCH_CU124, "cuda_initialised": None}, A10)["fork safety"].status == \
        WARNING                                      # unset: a warning even where it did not
    found = verdict(TORCH_CU124, A10, "1", ort_major=12)
    assert found["fork safety"].status == ERROR and "still initialised" in \
        found["fork safety"].detail                  # a torch that ignores the variable
    assert "cuda major" not in found


# -- GPU -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("variables", "name", "status"), [
    ({}, "devices", OK),
    ({"DHSERVE_DEVICE": "cuda:0"}, "devices", ERROR),
    ({"DHSERVE_PROFILE": "24gb"}, "devices", ERROR),
    ({"CUDA_VISIBLE_DEVICES": "GPU-5e2f1c3a-0b1d-4c2e-9f00-1a2b3c4d5e6f"}, "visibility", ERROR),
    ({"CUDA_VISIBLE_DEVICES": "1"}, "visibility", ERROR),
    ({"CUDA_VISIBLE_DEVICES": ""}, "visibility", OK),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, "visibility", OK),
    ({"NVIDIA_VISIBLE_DEVICES": "all", "DHSERVE_DEVICE": "cuda"}, "visibility", ERROR),
], ids=["cpu-mode", "device-cuda", "gpu-profile", "uuid", "absent-index", "hidden",
        "image-without-gpus", "container-without-gpus"])
def test_gpu_checks_without_a_gpu(checks, variables, name, status):
    from dhserve.runtime.gpu import gpu_summary

    if gpu_summary()["available"]:
        pytest.skip("this machine has a GPU")
    report = checks("gpu", **variables)
    check = find(report, "gpu", name)
    assert check["status"] == status, check
    assert status == OK or check["remedy"]


TWO_GPUS = {"available": True, "driver": "550.54", "devices": [
    {**A10["devices"][0], "index": 0},
    {**A10["devices"][0], "index": 1, "memory_used_mb": 22000.0}]}      # another process's


@pytest.mark.parametrize(("variables", "name", "status", "said"), [
    ({}, "device 0", OK, "GPU 0: NVIDIA A10, 22.5 GiB"),
    ({}, "device 1", WARNING, "1028 MiB free"),
    ({}, "visibility", OK, "consistent with the 2 GPU(s)"),
    ({"CUDA_VISIBLE_DEVICES": "1,0"}, "visibility", WARNING, "CUDA_DEVICE_ORDER is unset"),
    ({"CUDA_VISIBLE_DEVICES": "1,0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, "visibility", OK,
     "consistent"),
    ({"CUDA_VISIBLE_DEVICES": "2"}, "visibility", ERROR, "GPU 2 does not exist"),
    ({"CUDA_VISIBLE_DEVICES": "MIG-0"}, "visibility", ERROR, "not a list of GPU indices"),
    ({"NVIDIA_VISIBLE_DEVICES": "0"}, "visibility", WARNING, "names 1 GPU(s) but NVML sees 2"),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, "visibility", OK, "consistent"),
], ids=["device", "low-free-memory", "visible", "order-unset", "order-pci", "absent",
        "mig", "container-count", "container-all"])
def test_gpu_checks_on_a_two_gpu_host(tmp_path, variables, name, status, said):
    facts = Facts(Settings(data_dir=tmp_path), None, variables, GpuSummary.from_json(TWO_GPUS))
    check = {c.name: c for c in gpu_checks(facts)}[name]
    assert check.status == status and said in check.detail, check
    assert status == OK or check.remedy


def test_a_failing_nvml_is_an_error_line(tmp_path):
    facts = Facts(Settings(data_dir=tmp_path), None, {},
                  GpuSummary.from_json({"available": False,
                                        "reason": "NVML failed (OSError: bad driver)",
                                        "error": "OSError: bad driver"}))
    found = {c.name: c for c in gpu_checks(facts)}
    assert found["nvml"].status == ERROR and "OSError: bad driver" in found["nvml"].detail
    assert found["devices"].status == OK            # nothing asks for a GPU: CPU mode


# -- models --------------------------------------------------------------------------------------

def test_models_valid_absent_corrupt_and_wrong_shape(tmp_path, checks):
    from onnx_models import corrupt, restore_invert, wav2lip_invert

    models = tmp_path / "data" / "models"
    wav2lip_invert(models / "wav2lip_gan_96.onnx")
    report = checks("models")
    assert report.exit_code == 0, report.text()
    wav2lip = find(report, "models", "wav2lip")
    assert "source (N,1,80,16) float, target (N,6,96,96) float → output (N,3,96,96)" in \
        wav2lip["detail"]
    assert len(wav2lip["data"]["sha256"]) == 64 and wav2lip["data"]["size"] > 0
    assert "absent (optional" in find(report, "models", "restore")["detail"]

    wav2lip_invert(models / "wav2lip_gan_96.onnx", face_size=64)        # wrong input shape
    corrupt(models / "GFPGANv1.4.onnx", restore_invert(tmp_path / "whole.onnx"))   # truncated
    report = checks("models")
    wav2lip, restore = find(report, "models", "wav2lip"), find(report, "models", "restore")
    assert wav2lip["status"] == ERROR and wav2lip["data"]["code"] == "model.bad_signature"
    assert "(N,6,96,96)" in wav2lip["detail"] and "(N,6,64,64)" in wav2lip["detail"]
    assert restore["status"] == ERROR and restore["data"]["code"] == "model.corrupt"
    assert report.exit_code == 2


def test_a_backend_whose_model_is_absent_is_an_error(checks):
    report = checks("models", DHSERVE_BACKEND="wav2lip")
    check = find(report, "models", "wav2lip")
    assert check["status"] == ERROR and "DHSERVE_BACKEND=wav2lip needs it" in check["detail"]


# -- media ---------------------------------------------------------------------------------------

def test_media_encoders_work_and_a_missing_one_is_an_error(checks):
    from dhserve.doctor.media import media_checks

    report = checks("media")
    assert report.exit_code == 0 and find(report, "media", "encode")["data"]["bytes"] > 0
    facts = Facts(Settings(), None, {}, GpuSummary.from_json(NO_GPU))
    found = {c.name: c for c in media_checks(facts, encoders=("libx264", "aac", "libfdk_aac"))}
    assert found["libfdk_aac"].status == ERROR        # not in PyAV's FFmpeg (non-free)
    assert found["libx264"].status == OK and "encode" not in found
    assert found["h264_nvenc"].status == OK           # the later lines are there all the same


def test_transparent_output_encoders_are_listed_and_a_missing_one_only_warns(checks,
                                                                              monkeypatch):
    from dhserve.doctor import media

    report = checks("media")
    for name in ("libvpx-vp9", "libopus", "prores_ks"):
        assert find(report, "media", name)["status"] == OK
    monkeypatch.setattr(media, "ALPHA_ENCODERS", ("libvpx-vp9", "libfdk_aac"))
    facts = Facts(Settings(), None, {}, GpuSummary.from_json(NO_GPU))
    found = {c.name: c for c in media.media_checks(facts)}
    assert found["libfdk_aac"].status == WARNING and "transparent" in found["libfdk_aac"].detail
    assert found["encode"].status == OK               # plain renders are unaffected


# -- storage and queue ---------------------------------------------------------------------------

def test_data_dir_under_a_regular_file_is_not_writable(tmp_path, checks):
    (tmp_path / "file").write_text("not a directory")
    report = checks("storage", DHSERVE_DATA_DIR=str(tmp_path / "file" / "data"))
    check = find(report, "storage", "data dir")
    assert check["status"] == ERROR and "NotADirectoryError" in check["detail"]


def test_data_dir_on_a_read_only_mount_is_not_writable(tmp_path, checks):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        report = checks("storage", "system", DHSERVE_DATA_DIR=str(mount))
        check = find(report, "storage", "data dir")
        assert check["status"] == ERROR and "Read-only file system" in check["detail"]
        assert find(report, "system", "disk")["status"] == ERROR      # 1 MiB: below 500 MiB
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_unreachable_database_is_an_error(checks):
    report = checks("storage", DHSERVE_DATABASE_URL="postgresql+psycopg://dhserve@127.0.0.1:1/x")
    check = find(report, "storage", "database")
    assert check["status"] == ERROR and "unreachable" in check["detail"]
    assert "pg_isready -h 127.0.0.1 -p 1" in check["fix_hint"]
    assert report.exit_code == 2


def test_postgresql_schema_queue_and_workers(postgres_url, checks):
    from dhserve.jobs import JobSpec, JobStore

    report = checks("storage", DHSERVE_DATABASE_URL=postgres_url)
    assert find(report, "storage", "schema")["detail"].startswith("no dhserve tables yet")
    store = JobStore(postgres_url)
    try:
        store.submit("waiting", JobSpec("/m/a.mp4", "/m/s.wav"))
        report = checks("storage")
        assert find(report, "storage", "schema")["status"] == OK
        assert find(report, "storage", "queue")["data"]["depth"] == 1
        workers = find(report, "storage", "workers")
        assert workers["status"] == WARNING and "no render worker heartbeats" in workers["detail"]
        store.register_worker("w1", "host", 123, "cpu")
        report = checks("storage")
        assert report.exit_code == 0, report.text()
        assert find(report, "storage", "workers")["data"]["workers"][0]["id"] == "w1"
    finally:
        store.close()


def test_a_worker_is_silent_after_three_heartbeats_as_health_and_top_say(tmp_path, checks):
    """The doctor's silent is WorkerInfo.silent (no heartbeat for 3 intervals: 30 s by
    default), the rule of /health, /metrics and `dhserve top`, not the 60 s lease."""
    from dhserve.jobs import JobStore
    from dhserve.jobs.schema import workers

    store = JobStore.from_settings(Settings(data_dir=tmp_path / "data"))
    try:
        store.register_worker("late", "host", 99999, "cpu")
        store.register_worker("fresh", "host", 99998, "cpu")
        with store.engine.begin() as conn:          # 45 s: within the lease, past 3 beats
            conn.execute(workers.update().where(workers.c.id == "late")
                         .values(heartbeat_at=workers.c.heartbeat_at - 45))
        now = store.now()
        said = {w.id: w.silent(now, Settings().heartbeat_seconds) for w in store.workers()}
    finally:
        store.close()
    check = find(checks("storage"), "storage", "workers")
    assert {w["id"]: not w["alive"] for w in check["data"]["workers"]} == said == \
        {"late": True, "fresh": False}
    assert check["status"] == OK and "1 alive; 1 silent (no heartbeat for 30 s" in \
        check["detail"]


def test_sqlite_silent_worker_and_schema_behind_or_ahead(tmp_path, checks):
    import sqlalchemy as sa

    from dhserve.jobs import JobSpec, JobStore
    from dhserve.jobs.migrate import VERSION_TABLE, revisions
    from dhserve.jobs.schema import workers

    def silence() -> None:
        with store.engine.begin() as conn:
            conn.execute(workers.update().values(heartbeat_at=workers.c.heartbeat_at - 600))

    store = JobStore.from_settings(Settings(data_dir=tmp_path / "data"))
    try:
        store.register_worker("gone", "host", 99999, "cpu")     # then it was killed
        silence()
        report = checks("storage")
        check = find(report, "storage", "workers")
        assert check["status"] == OK and "1 silent" in check["detail"]   # a row, harmless
        assert check["data"]["workers"][0]["alive"] is False
        store.submit("held", JobSpec("/m/a.mp4", "/m/s.wav"))
        store.register_worker("busy", "host", 99998, "cpu")
        assert store.claim("busy").id == "held"
        silence()                                               # killed mid-render
        check = find(checks("storage"), "storage", "workers")
        assert check["status"] == WARNING and "held on busy" in check["detail"], check
        assert "requeued when the lease expires" in check["remedy"]

        known = revisions()
        assert known[-1] == find(report, "storage", "schema")["data"]["head"]
        if len(known) > 1:                # a database an older dhserve made
            with store.engine.begin() as conn:
                conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = :r"),
                             {"r": known[0]})
            schema = find(checks("storage"), "storage", "schema")
            assert schema["status"] == WARNING and "migrated on the next start" in \
                schema["remedy"]
        with store.engine.begin() as conn:    # one a newer dhserve migrated
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'"))
        report = checks("storage")
        schema = find(report, "storage", "schema")
        assert schema["status"] == ERROR and "newer than this dhserve" in schema["detail"]
        assert report.exit_code == 2
    finally:
        store.close()


# -- network -------------------------------------------------------------------------------------

def test_port_held_by_another_process_is_an_error_naming_it(checks):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bind = f"127.0.0.1:{holder.getsockname()[1]}"
        report = checks("network", GUNICORN_BIND=bind)
    port = find(report, "network", "port")
    assert port["status"] == ERROR and "not by dhserve" in port["detail"]
    assert f"pid={os.getpid()}" in port["detail"]
    assert report.exit_code == 2


def test_port_held_by_dhserve_is_fine(tmp_path, env, checks):
    from conftest import wait_for

    from dhserve.serving.address import answers_livez

    bind = env["GUNICORN_BIND"]
    web = subprocess.Popen([sys.executable, "-m", "dhserve.cli", "web", "--bind", bind,
                            "--workers", "1"], cwd=tmp_path, env=clean_environ(**env),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        wait_for(lambda: answers_livez(bind), 60, "dhserve web")
        report = checks("network")
    finally:
        web.terminate()
        web.wait(timeout=30)
    port = find(report, "network", "port")
    assert port["status"] == OK and "held by a running dhserve" in port["detail"]


def test_unix_socket_in_use_is_fine_and_a_stale_one_is_a_warning(tmp_path, checks):
    path = tmp_path / "dhserve.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        port = find(checks("network", GUNICORN_BIND=f"unix:{path}"), "network", "port")
        assert port["status"] == OK and "a server listens on it" in port["detail"]
    assert path.exists()                      # closed without unlinking: what a kill leaves
    port = find(checks("network"), "network", "port")
    assert port["status"] == WARNING and "nothing accepts connections" in port["detail"]
    assert port["fix_hint"] == f"rm {path}"


def test_bound_beyond_loopback_without_api_key_is_a_warning(checks):
    bind = f"0.0.0.0:{free_port()}"
    report = checks("network", GUNICORN_BIND=bind)
    assert find(report, "network", "exposure")["status"] == WARNING
    assert report.exit_code == 1
    report = checks("network", DHSERVE_API_KEY="k")
    assert report.exit_code == 0
