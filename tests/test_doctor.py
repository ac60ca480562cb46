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

from dhserve.doctor import GROUPS, run_checks
from dhserve.doctor.checks import ERROR, OK, WARNING, guarded
from dhserve.doctor.gunicorn import filesystem_type
from dhserve.doctor.providers import failure_reason, tiny_model

# What NVML reports on a machine with one 24 GB GPU: the config files below are built for it,
# the way dhserve's gunicorn.conf.py builds its settings on such a machine.
A10 = {"available": True, "driver": "550.54", "devices": [
    {"index": 0, "name": "NVIDIA A10", "memory_total_mb": 23028.0, "memory_used_mb": 300.0,
     "utilization_percent": 0}]}
NO_GPU = {"available": False, "reason": "NVML: NVML Shared Library Not Found"}
LINE = re.compile(r"^(ok|warning|error) +(\w+)/([^:]+): (.+)$")
OWN_VARIABLES = ("DHSERVE_", "GUNICORN_", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    """A data dir of its own and a free port: the doctor's view of a fresh CPU install, from a
    directory without a gunicorn.conf.py (so the settings come from these variables)."""
    monkeypatch.chdir(tmp_path)
    return {"DHSERVE_DATA_DIR": str(tmp_path / "data"),
            "GUNICORN_BIND": f"127.0.0.1:{free_port()}"}


def doctor(cwd: Path, *args: str, env: dict[str, str] | None = None,
           as_json: bool = True) -> tuple[int, dict | str]:
    """`dhserve doctor` as an operator runs it: a fresh process, exit status and output."""
    done = subprocess.run([sys.executable, "-m", "dhserve.cli", "doctor",
                           *(["--json"] if as_json else []), *args],
                          cwd=cwd, env=clean_environ(**(env or {})), capture_output=True,
                          text=True, timeout=120, check=False)
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


# -- the whole doctor, as a command --------------------------------------------------------------

def test_fresh_cpu_install_is_all_ok_and_the_json_follows_its_schema(tmp_path, env):
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


def test_text_output_one_line_per_check_with_remedies_and_fix_hints(tmp_path, env):
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


def test_a_broken_setting_is_reported_and_the_other_checks_still_run(tmp_path, env):
    report = run_checks(environ={**env, "DHSERVE_CRF": "best"},
                        groups=["system", "storage"])
    assert find(report, "system", "settings")["status"] == ERROR
    assert "DHSERVE_CRF='best' is not a valid int" in find(report, "system", "settings")["detail"]
    assert statuses(report, "storage")["data dir"] == OK
    assert report.exit_code == 2


def test_a_check_that_fails_itself_is_an_error_line_naming_the_exception():
    found = guarded("media", lambda: {}["libx264"])
    assert [(c.group, c.status) for c in found] == [("media", ERROR)]
    assert "KeyError" in found[0].detail and found[0].remedy


# -- Gunicorn config -----------------------------------------------------------------------------

def gunicorn_conf(tmp_path: Path, gpu: bool, extra: str = "") -> Path:
    """A gunicorn.conf.py built on dhserve's settings (as the repository's is) for this data
    dir, on a machine with one A10 (`gpu`) or without a GPU; `extra` lines override them."""
    path = tmp_path / "gunicorn.conf.py"
    path.write_text(
        "from dhserve.config import ServingSettings, Settings\n"
        "from dhserve.serving.plan import plan_serving\n"
        "from dhserve.serving.web import gunicorn_settings\n"
        f"_settings = Settings(data_dir={str(tmp_path / 'data')!r})\n"
        f"_plan = plan_serving(_settings, ServingSettings.from_env({{}}), 'all-in-one', "
        f"gpu={A10 if gpu else NO_GPU!r})\n"
        "globals().update(gunicorn_settings(_settings, _plan))\n" + extra + "\n")
    return path


def gunicorn_report(path: Path, env: dict[str, str]):
    return run_checks(config=path, environ=env, groups=["gunicorn"])


def test_repository_gunicorn_conf_is_all_ok(tmp_path, env, monkeypatch):
    monkeypatch.setenv("DHSERVE_DATA_DIR", env["DHSERVE_DATA_DIR"])   # the file reads it
    report = gunicorn_report(ROOT / "gunicorn.conf.py", env)
    assert report.exit_code == 0, report.text()
    config = find(report, "gunicorn", "config")
    assert config["data"]["plan"]["layout"] == "all-in-one"
    assert config["data"]["settings"]["preload_app"] is False


@pytest.mark.parametrize("gpu", [True, False], ids=["A10", "cpu"])
def test_gunicorn_conf_built_on_dhserve_is_all_ok(tmp_path, env, gpu):
    report = gunicorn_report(gunicorn_conf(tmp_path, gpu), env)
    assert report.exit_code == 0, report.text()
    assert find(report, "gunicorn", "config")["data"]["plan"]["render_devices"] == \
        (["cuda:0"] if gpu else ["cpu"])


@pytest.mark.parametrize(("gpu", "extra", "name", "status"), [
    (True, "preload_app = True", "preload_app", ERROR),
    (False, "preload_app = True", "preload_app", ERROR),     # when_ready refuses it on a CPU too
    (True, "workers = 2", "workers", ERROR),
    (False, "workers = 2", "workers", WARNING),
    (False, "worker_class = 'sync'\nthreads = 1", "worker_class", ERROR),
    (False, "worker_class = 'eventlet'", "worker_class", ERROR),      # not installed here
    (False, "timeout = 10", "timeout", WARNING),
    (False, "graceful_timeout = 20", "graceful_timeout", WARNING),
    (False, "max_requests = 100", "max_requests", WARNING),
    (False, "worker_tmp_dir = {disk!r}", "worker_tmp_dir", WARNING),
], ids=["preload-gpu", "preload-cpu", "2-workers-gpu", "2-workers-cpu", "sync", "eventlet",
        "timeout",
        "graceful-timeout", "max-requests", "heartbeat-on-disk"])
def test_gunicorn_conf_problems(tmp_path, env, gpu, extra, name, status):
    disk = tmp_path / "heartbeats"
    disk.mkdir()
    if name == "worker_tmp_dir" and filesystem_type(str(disk)) in ("tmpfs", "ramfs"):
        pytest.skip(f"{disk} is in memory here: no disk directory to test with")
    report = gunicorn_report(gunicorn_conf(tmp_path, gpu, extra.format(disk=str(disk))), env)
    found = statuses(report, "gunicorn")
    assert found.pop(name) == status, report.text()
    assert set(found.values()) == {OK}, report.text()         # that problem, and only it
    assert report.exit_code == {WARNING: 1, ERROR: 2}[status]
    check = find(report, "gunicorn", name)
    assert check["remedy"] and check["fix_hint"]


def test_gunicorn_cmd_args_count_as_gunicorn_applies_them(tmp_path, env, monkeypatch):
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--preload --timeout 5")
    report = gunicorn_report(gunicorn_conf(tmp_path, False), env)
    assert "+ GUNICORN_CMD_ARGS" in find(report, "gunicorn", "config")["detail"]
    assert statuses(report, "gunicorn")["preload_app"] == ERROR
    assert find(report, "gunicorn", "timeout")["data"]["timeout"] == 5


def test_gunicorn_conf_without_dhserve_hooks_is_a_warning(tmp_path, env):
    path = tmp_path / "plain.conf.py"
    path.write_text("bind = '127.0.0.1:9'\nworkers = 4\nworker_class = 'gthread'\n"
                    "worker_tmp_dir = '/dev/shm'\n")
    report = gunicorn_report(path, env)
    assert find(report, "gunicorn", "config")["status"] == WARNING
    assert "does not use dhserve's hooks" in find(report, "gunicorn", "config")["detail"]
    assert statuses(report, "gunicorn")["workers"] == OK   # web only: workers are free


@pytest.mark.parametrize(("text", "said"), [
    ("raise RuntimeError('no such cluster')", "RuntimeError: no such cluster"),
    ("workers = 'many'", "Invalid value for workers"),
    (None, "no such file"),
], ids=["raises", "bad-value", "missing"])
def test_gunicorn_conf_that_cannot_load_is_an_error_not_a_crash(tmp_path, env, text, said):
    path = tmp_path / "gunicorn.conf.py"
    if text is not None:
        path.write_text(text + "\n")
    report = gunicorn_report(path, env)
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


def test_cuda_asked_for_lands_on_the_cpu_and_says_why(env):
    report = run_checks(environ={**env, "DHSERVE_DEVICE": "cuda"}, groups=["onnxruntime"])
    cuda = find(report, "onnxruntime", "CUDAExecutionProvider")
    assert cuda["status"] == ERROR
    assert cuda["data"]["session_providers"] == ["CPUExecutionProvider"]
    assert "landed on CPUExecutionProvider" in cuda["detail"]
    assert "not compiled into this onnxruntime" in cuda["detail"]     # ONNX Runtime's own words
    import onnxruntime as ort

    from dhserve.runtime.onnx import cuda_major_for_runtime
    assert f"CUDA {cuda_major_for_runtime(ort.__version__)}" in cuda["remedy"]
    assert "onnxruntime-gpu" in cuda["fix_hint"]
    assert find(report, "onnxruntime", "CPUExecutionProvider")["status"] == OK
    assert report.exit_code == 2


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
    # ONNX Runtime's own log lines when libcudnn is missing (onnxruntime issue #21424's report)
    log = [("2024-07-12 10:01:02.345 [E:onnxruntime:Default, provider_bridge_ort.cc:1745 "
           "TryGetProviderInfo_CUDA] /onnxruntime_src/onnxruntime/core/session/"
           "provider_bridge_ort.cc:1426 onnxruntime::Provider& onnxruntime::ProviderLibrary::"
           "Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
           "libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared "
           "object file: No such file or directory"),
           ("2024-07-12 10:01:02.346 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:895 "
           "CreateExecutionProviderInstance] Failed to create CUDAExecutionProvider. Require "
           "cuDNN 9.* and CUDA 12.*, and the latest MSVC runtime.")]
    reason = failure_reason(log)
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

def test_pytorch_absent_is_fine(env):
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    report = run_checks(environ=env, groups=["pytorch"])
    assert [(c.name, c.status) for c in report.checks] == [("torch", OK)]


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
def test_gpu_checks_without_a_gpu(env, variables, name, status):
    from dhserve.runtime.gpu import gpu_summary

    if gpu_summary()["available"]:
        pytest.skip("this machine has a GPU")
    report = run_checks(environ={**env, **variables}, groups=["gpu"])
    check = find(report, "gpu", name)
    assert check["status"] == status, check
    assert status == OK or check["remedy"]


# -- models --------------------------------------------------------------------------------------

def test_models_valid_absent_corrupt_and_wrong_shape(tmp_path, env):
    from onnx_models import corrupt, restore_invert, wav2lip_invert

    models = tmp_path / "data" / "models"
    wav2lip_invert(models / "wav2lip_gan_96.onnx")
    report = run_checks(environ=env, groups=["models"])
    assert report.exit_code == 0, report.text()
    wav2lip = find(report, "models", "wav2lip")
    assert "source (N,1,80,16) float, target (N,6,96,96) float → output (N,3,96,96)" in \
        wav2lip["detail"]
    assert len(wav2lip["data"]["sha256"]) == 64 and wav2lip["data"]["size"] > 0
    assert "absent (optional" in find(report, "models", "restore")["detail"]

    wav2lip_invert(models / "wav2lip_gan_96.onnx", face_size=64)        # wrong input shape
    corrupt(models / "GFPGANv1.4.onnx", restore_invert(tmp_path / "whole.onnx"))   # truncated
    report = run_checks(environ=env, groups=["models"])
    wav2lip, restore = find(report, "models", "wav2lip"), find(report, "models", "restore")
    assert wav2lip["status"] == ERROR and wav2lip["data"]["code"] == "model.bad_signature"
    assert "(N,6,96,96)" in wav2lip["detail"] and "(N,6,64,64)" in wav2lip["detail"]
    assert restore["status"] == ERROR and restore["data"]["code"] == "model.corrupt"
    assert report.exit_code == 2


def test_a_backend_whose_model_is_absent_is_an_error(env):
    report = run_checks(environ={**env, "DHSERVE_BACKEND": "wav2lip"}, groups=["models"])
    check = find(report, "models", "wav2lip")
    assert check["status"] == ERROR and "DHSERVE_BACKEND=wav2lip needs it" in check["detail"]


# -- media ---------------------------------------------------------------------------------------

def test_media_encoders_work_and_a_missing_one_is_an_error(env):
    from dhserve.config import Settings
    from dhserve.doctor.checks import Facts, media_checks

    report = run_checks(environ=env, groups=["media"])
    assert report.exit_code == 0 and find(report, "media", "encode")["data"]["bytes"] > 0
    facts = Facts(Settings(), None, {}, NO_GPU)
    found = {c.name: c for c in media_checks(facts, encoders=("libx264", "aac", "libfdk_aac"))}
    assert found["libfdk_aac"].status == ERROR        # not in PyAV's FFmpeg (non-free)
    assert found["libx264"].status == OK and "encode" not in found


# -- storage and queue ---------------------------------------------------------------------------

def test_data_dir_under_a_regular_file_is_not_writable(tmp_path, env):
    (tmp_path / "file").write_text("not a directory")
    report = run_checks(environ={**env, "DHSERVE_DATA_DIR": str(tmp_path / "file" / "data")},
                        groups=["storage"])
    check = find(report, "storage", "data dir")
    assert check["status"] == ERROR and "NotADirectoryError" in check["detail"]


def test_data_dir_on_a_read_only_mount_is_not_writable(tmp_path, env):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        report = run_checks(environ={**env, "DHSERVE_DATA_DIR": str(mount)},
                            groups=["storage", "system"])
        check = find(report, "storage", "data dir")
        assert check["status"] == ERROR and "Read-only file system" in check["detail"]
        assert find(report, "system", "disk")["status"] == ERROR      # 1 MiB: below 500 MiB
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_unreachable_database_is_an_error(env):
    report = run_checks(environ={**env, "DHSERVE_DATABASE_URL":
                                 "postgresql+psycopg://dhserve@127.0.0.1:1/x"},
                        groups=["storage"])
    check = find(report, "storage", "database")
    assert check["status"] == ERROR and "unreachable" in check["detail"]
    assert "pg_isready -h 127.0.0.1 -p 1" in check["fix_hint"]
    assert report.exit_code == 2


def test_postgresql_schema_queue_and_workers(postgres_url, env):
    from dhserve.jobs import JobSpec, JobStore

    environ = {**env, "DHSERVE_DATABASE_URL": postgres_url}
    report = run_checks(environ=environ, groups=["storage"])
    assert find(report, "storage", "schema")["detail"].startswith("no dhserve tables yet")
    store = JobStore(postgres_url)
    try:
        store.submit("waiting", JobSpec("/m/a.mp4", "/m/s.wav"))
        report = run_checks(environ=environ, groups=["storage"])
        assert find(report, "storage", "schema")["status"] == OK
        assert find(report, "storage", "queue")["data"]["depth"] == 1
        workers = find(report, "storage", "workers")
        assert workers["status"] == WARNING and "no render worker heartbeats" in workers["detail"]
        store.register_worker("w1", "host", 123, "cpu")
        report = run_checks(environ=environ, groups=["storage"])
        assert report.exit_code == 0, report.text()
        assert find(report, "storage", "workers")["data"]["workers"][0]["id"] == "w1"
    finally:
        store.close()


def test_sqlite_silent_worker_and_schema_behind_or_ahead(tmp_path, env):
    import sqlalchemy as sa

    from dhserve.config import Settings
    from dhserve.jobs import JobStore
    from dhserve.jobs.migrate import VERSION_TABLE
    from dhserve.jobs.schema import workers

    store = JobStore.from_settings(Settings(data_dir=tmp_path / "data"))
    try:
        store.register_worker("gone", "host", 99999, "cpu")     # then it died: no heartbeats
        with store.engine.begin() as conn:
            conn.execute(workers.update().values(heartbeat_at=workers.c.heartbeat_at - 600))
        report = run_checks(environ=env, groups=["storage"])
        check = find(report, "storage", "workers")
        assert check["status"] == WARNING and "silent" in check["detail"]
        assert check["data"]["workers"][0]["alive"] is False

        revisions = _revisions()
        if len(revisions) > 1:                # a database an older dhserve made
            with store.engine.begin() as conn:
                conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = :r"),
                             {"r": revisions[0]})
            schema = find(run_checks(environ=env, groups=["storage"]), "storage", "schema")
            assert schema["status"] == WARNING and "migrated on the next start" in \
                schema["remedy"]
        with store.engine.begin() as conn:    # one a newer dhserve migrated
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'"))
        report = run_checks(environ=env, groups=["storage"])
        schema = find(report, "storage", "schema")
        assert schema["status"] == ERROR and "newer than this dhserve" in schema["detail"]
        assert report.exit_code == 2
    finally:
        store.close()


def _revisions() -> list[str]:
    """The migration revisions, oldest first."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from dhserve.jobs.migrate import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return [s.revision for s in reversed(list(ScriptDirectory.from_config(config)
                                              .walk_revisions()))]


# -- network -------------------------------------------------------------------------------------

def test_port_held_by_another_process_is_an_error_naming_it(env):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bind = f"127.0.0.1:{holder.getsockname()[1]}"
        report = run_checks(environ={**env, "GUNICORN_BIND": bind}, groups=["network"])
    port = find(report, "network", "port")
    assert port["status"] == ERROR and "not by dhserve" in port["detail"]
    assert f"pid={os.getpid()}" in port["detail"]
    assert report.exit_code == 2


def test_port_held_by_dhserve_is_fine(tmp_path, env):
    from conftest import wait_for

    from dhserve.serving.launcher import answers_livez

    bind = env["GUNICORN_BIND"]
    web = subprocess.Popen([sys.executable, "-m", "dhserve.cli", "web", "--bind", bind,
                            "--workers", "1"], cwd=tmp_path, env=clean_environ(**env),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        wait_for(lambda: answers_livez(bind), 60, "dhserve web")
        report = run_checks(environ=env, groups=["network"])
    finally:
        web.terminate()
        web.wait(timeout=30)
    port = find(report, "network", "port")
    assert port["status"] == OK and "held by a running dhserve" in port["detail"]


def test_bound_beyond_loopback_without_api_key_is_a_warning(env):
    bind = f"0.0.0.0:{free_port()}"
    report = run_checks(environ={**env, "GUNICORN_BIND": bind}, groups=["network"])
    assert find(report, "network", "exposure")["status"] == WARNING
    assert report.exit_code == 1
    report = run_checks(environ={**env, "GUNICORN_BIND": bind, "DHSERVE_API_KEY": "k"},
                        groups=["network"])
    assert report.exit_code == 0
