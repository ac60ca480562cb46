"""How the service decides to run: GPU profiles from GPU memory, the GUNICORN_* / DHSERVE_*
variables over them, layouts and what they refuse, the plan handed to child processes, the
Gunicorn configuration file, the memory watchdog and the log format."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from dhserve.config import ServingSettings, Settings
from dhserve.logs import configure_logging, job_context
from dhserve.runtime.gpu import GpuSummary
from dhserve.serving.plan import ServingConfigError, plan_serving
from dhserve.serving.profiles import profile_for_memory
from dhserve.serving.watchdog import MemoryWatchdog

NO_GPU = {"available": False, "reason": "NVML: NVML Shared Library Not Found"}


def gpus(*memory_mib: float) -> dict:
    """An NVML summary of GPUs with these memory sizes (MiB, as NVML reports them)."""
    return {"available": True, "driver": "570.00", "devices": [
        {"index": i, "name": f"GPU{i}", "memory_total_mb": m, "memory_used_mb": 0.0,
         "utilization_percent": 0} for i, m in enumerate(memory_mib)]}


def plan(env: dict[str, str] | None = None, layout: str = "split", gpu: dict = NO_GPU,
         **settings):
    return plan_serving(Settings(**settings), ServingSettings.from_env(env or {}), layout,
                        GpuSummary.from_json(gpu))


@pytest.mark.parametrize(("card", "mib", "profile"), [
    ("RTX 3060 12 GB", 12288, "12gb"), ("RTX 3070 8 GB", 8192, "12gb"),
    ("A10 24 GB", 23028, "24gb"), ("RTX 4090 24 GB", 24564, "24gb"),
    ("A100 40 GB", 40960, "48gb"), ("L40S 48 GB", 46068, "48gb"), ("H100 80 GB", 81559, "48gb"),
])
def test_profile_follows_gpu_memory(card, mib, profile):
    assert profile_for_memory(mib).name == profile


def test_profiles_set_threads_batch_and_memory_limit():
    assert [(p.profile.name, p.threads, p.batch_size, p.max_memory_mb)
            for p in (plan(), plan(gpu=gpus(12288)), plan(gpu=gpus(24564)),
                      plan(gpu=gpus(81559)))] == [
        ("cpu", 8, 16, 4096), ("12gb", 8, 8, 6144), ("24gb", 16, 16, 12288),
        ("48gb", 32, 32, 20480)]
    assert plan().profile_reason == "auto: NVML: NVML Shared Library Not Found"
    assert plan(gpu=gpus(24564, 81559)).profile.name == "24gb"    # sized for the smallest


def test_each_variable_overrides_its_part_of_the_profile():
    p = plan({"DHSERVE_PROFILE": "48gb", "GUNICORN_THREADS": "4", "DHSERVE_BATCH_SIZE": "2",
              "GUNICORN_MAX_MEMORY": "0"})
    assert (p.profile.name, p.threads, p.batch_size, p.max_memory_mb) == ("48gb", 4, 2, 0)
    assert "memory limit off" in p.describe()[1]


def test_gpu_selection():
    two = gpus(24564, 81559)
    assert [d.label for d in plan(gpu=two).devices] == ["cuda:0", "cuda:1"]
    assert [d.label for d in plan({"DHSERVE_GPUS": "1"}, gpu=two).devices] == ["cuda:1"]
    assert [d.label for d in plan({"DHSERVE_GPUS": "none"}, gpu=two).devices] == ["cpu"]
    assert [d.label for d in plan({"CUDA_VISIBLE_DEVICES": ""}, gpu=two).devices] == ["cpu"]
    assert [d.label for d in plan({"CUDA_VISIBLE_DEVICES": "1"}, gpu=two).devices] == \
        ["cuda:1"]
    with pytest.raises(ServingConfigError, match=r"DHSERVE_GPUS=3: no GPU 3 \(NVML sees: 0, 1"):
        plan({"DHSERVE_GPUS": "3"}, gpu=two)
    # a renderer sees only its own GPU, as cuda:0; a CPU renderer sees none
    assert plan(gpu=two).devices[1].environment() == {
        "CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "DHSERVE_DEVICE": "cuda:0"}
    assert plan().devices[0].environment()["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ServingConfigError, match="dhserve picks GPUs by index"):
        plan({"CUDA_VISIBLE_DEVICES": "GPU-8f3c2a1e-0000"}, gpu=two)


def test_all_in_one_refuses_several_gpu_workers_and_renders_on_one_gpu():
    with pytest.raises(ServingConfigError) as refused:
        plan({"GUNICORN_WORKERS": "2"}, "all-in-one", gpus(24564))
    assert "would load 2 copies of the models on cuda:0" in refused.value.message
    assert "--layout split" in refused.value.message
    cpu = plan({"GUNICORN_WORKERS": "2"}, "all-in-one")     # on the CPU: allowed, said
    assert cpu.workers == 2 and "each render on the CPU" in cpu.warnings[0]
    one = plan(layout="all-in-one", gpu=gpus(81559, 24564))
    assert [d.label for d in one.devices] == ["cuda:0"] and one.profile.name == "48gb"
    assert "use --layout split to use them all" in one.warnings[0]
    assert plan(layout="split", gpu=gpus(24564)).workers == 2     # web workers hold no model


def test_a_sync_worker_gets_one_thread():
    """Gunicorn silently runs gthread for a sync worker given threads: the naive layout would
    not be what it says."""
    naive = plan({"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "4"}, "all-in-one")
    assert (naive.worker_class, naive.threads) == ("sync", 1)
    assert "GUNICORN_THREADS=4 ignored" in naive.warnings[0]


def test_children_arrive_at_the_same_plan():
    first = plan({"DHSERVE_PROFILE": "24gb", "GUNICORN_WORKERS": "3"}, gpu=gpus(24564, 24564))
    again = plan(first.environment(), gpu=gpus(24564, 24564))
    assert again == first
    chosen = plan(gpu=gpus(24564))                       # auto stays auto, and says why
    assert plan(chosen.environment(), gpu=gpus(24564)).profile_reason == \
        "auto: GPU 0 (GPU0) has 24.0 GiB"


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("GUNICORN_WORKERS", "many", "GUNICORN_WORKERS='many' is not a valid int"),
    ("GUNICORN_THREADS", "0", "GUNICORN_THREADS=0: must be at least 1"),
    ("GUNICORN_MAX_MEMORY", "-5", "GUNICORN_MAX_MEMORY=-5.0: must be >= 0"),
    ("DHSERVE_LAYOUT", "both", "DHSERVE_LAYOUT='both': must be one of split, all-in-one"),
    ("DHSERVE_PROFILE", "16gb", "DHSERVE_PROFILE='16gb': must be one of auto, cpu, 12gb"),
    ("DHSERVE_GPUS", "first", "DHSERVE_GPUS='first': must be auto, none or GPU indices"),
])
def test_bad_variables_are_named(variable, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ServingSettings.from_env({variable: value})


def test_gunicorn_conf_shows_the_essentials_and_reads_the_variables(tmp_path):
    conf = (ROOT / "gunicorn.conf.py").read_text()
    assert re.search(r"^preload_app = False", conf, re.MULTILINE)
    assert re.search(r"^workers = ", conf, re.MULTILINE) and "CUDA" in conf
    env = {"PATH": "/usr/bin:/bin", "DHSERVE_DATA_DIR": str(tmp_path),
           "GUNICORN_THREADS": "3", "GUNICORN_TIMEOUT": "900", "GUNICORN_BIND": "127.0.0.1:9",
           "GUNICORN_GRACEFUL_TIMEOUT": "120"}
    printed = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                              "--print-config", "dhserve.api:create_app()"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60, check=True)
    config = dict(re.findall(r"^(\w+)\s+= (.*)$", printed.stdout, re.MULTILINE))
    assert {k: config[k] for k in ("workers", "threads", "worker_class", "timeout",
                                   "graceful_timeout", "preload_app", "bind")} == {
        "workers": "1", "threads": "3", "worker_class": "gthread", "timeout": "900",
        "graceful_timeout": "120", "preload_app": "False", "bind": "['127.0.0.1:9']"}
    assert "ServingHooks.post_fork" in config["post_fork"]
    refused = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                              "--check-config", "dhserve.api:create_app()"], cwd=tmp_path,
                             env={**env, "GUNICORN_WORKERS": "x"}, capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "cannot serve: GUNICORN_WORKERS='x' is not a valid int" in refused.stderr


def test_memory_watchdog_reads_this_process():
    watchdog = MemoryWatchdog(limit_mb=0)
    usage = watchdog.usage()
    with open("/proc/self/status") as status:
        rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1))
    assert abs(usage.rss_mb - rss_kib / 1024) < 50
    assert usage.gpu_mb is None                   # no GPU here: NVML cannot tell
    assert watchdog.over_limit() is None          # 0: off
    assert re.fullmatch(r"RSS \d+ MB is over the 1 MB limit", MemoryWatchdog(1).over_limit())
    assert MemoryWatchdog(usage.rss_mb * 4).over_limit() is None


def test_log_lines_carry_pid_and_job_and_rotate(tmp_path):
    settings = Settings(data_dir=tmp_path, log_max_mb=0.01, log_backups=2)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(settings)
        log = logging.getLogger("dhserve.test")
        log.info("outside")
        with job_context("code-7"):
            log.info("inside")
        for i in range(400):                       # ~40 kB: rotates past 10 kB, keeps 2
            log.info("line %d %s", i, "x" * 60)
    finally:
        for handler in root.handlers[:]:
            handler.close()
            root.removeHandler(handler)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    files = sorted(p.name for p in (tmp_path / "log").glob("dh.log*"))
    assert files == ["dh.log", "dh.log.1", "dh.log.2"]
    first = (tmp_path / "log" / "dh.log.2").read_text().splitlines()
    all_lines = "".join(p.read_text() for p in (tmp_path / "log").glob("dh.log*"))
    assert re.search(rf"\[{__import__('os').getpid()}\] INFO dhserve.test: line 399", all_lines)
    assert all(re.match(r"\S+ \S+ \[\d+\] INFO dhserve.test: ", line) for line in first)


@pytest.mark.gpu
def test_profile_on_this_gpu_matches_nvidia_smi():
    smi = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         check=False)
    if smi.returncode != 0:
        pytest.skip("nvidia-smi does not run here")
    sizes = [float(line.split(",")[1]) for line in smi.stdout.strip().splitlines()]
    real = plan_serving(Settings(), ServingSettings.from_env({}), "split")
    assert real.profile == profile_for_memory(min(sizes))
    assert len(real.devices) == len(sizes)


def test_one_renderer_per_gpu_at_a_time(tmp_path):
    """After a HUP the new all-in-one worker's renderer waits for the old one's GPU: no
    second copy of the models on it. The CPU is not guarded."""
    import threading
    import time

    from dhserve.serving.renderer import device_lock

    gpu = Settings(data_dir=tmp_path, device="cuda:0")
    never, events = threading.Event(), []

    def second() -> None:
        with device_lock(gpu, never) as held:
            events.append(("second", held))

    with device_lock(gpu, never) as held:
        assert held
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(1.0)
        events.append(("first leaves", True))
    waiting.join(5)
    assert events == [("first leaves", True), ("second", True)]
    stopping = threading.Event()
    with device_lock(gpu, never):
        stopping.set()
        with device_lock(gpu, stopping) as held:
            assert held is False                  # asked to stop while waiting
    with device_lock(Settings(data_dir=tmp_path), never) as a, \
            device_lock(Settings(data_dir=tmp_path), never) as b:
        assert a and b


FORKED_LOGGING = """
import logging, os, sys, threading
from dhserve.config import Settings
from dhserve.logs import configure_logging, write_in_background
configure_logging(Settings(data_dir=sys.argv[1]))
log = logging.getLogger("dhserve.test")
log.info("parent before the fork")
child = os.fork()                           # as Gunicorn forks its workers
if child == 0:
    write_in_background()                   # as a Gunicorn worker does in post_fork
    def lines(n):
        for i in range(50):
            log.info("child thread %d line %d", n, i)
    threads = [threading.Thread(target=lines, args=(n,)) for n in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    log.info("child leaving")
    sys.exit(0)                             # as a Gunicorn worker leaves
os.waitpid(child, 0)
log.info("parent after child %d", child)
"""


def test_every_process_s_lines_reach_dh_log_by_the_time_it_exits(tmp_path):
    """A forked worker writes dh.log from a thread of its own (the parent writes at once),
    and what it has queued when it exits is written, not lost."""
    subprocess.run([sys.executable, "-c", FORKED_LOGGING, str(tmp_path)], check=True,
                   timeout=60)
    lines = (tmp_path / "log" / "dh.log").read_text().splitlines()
    child = int(re.search(r"parent after child (\d+)", lines[-1]).group(1))
    from_child = [line for line in lines if f"[{child}] INFO dhserve.test: child" in line]
    assert len(from_child) == 4 * 50 + 1 and from_child[-1].endswith("child leaving")
    assert "parent before the fork" in lines[0] and len(lines) == 203
