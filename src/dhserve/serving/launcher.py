"""`dhserve serve`: starts the web tier (Gunicorn, or Flask's threaded server when Gunicorn
cannot be imported or fails to boot) and, in the split layout, one render worker per GPU (or
one on the CPU), and supervises them all."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import logging
import sys
import time
from typing import Any

from dhserve.config import METRICS_DIR_ENV, ServingSettings, Settings
from dhserve.fsutil import unwritable_reason
from dhserve.runtime.gpu import read_gpus
from dhserve.serving.address import answers_livez, base_url, bindable
from dhserve.serving.cuda_guard import cuda_initialised_here
from dhserve.serving.hooks import effective_settings
from dhserve.serving.metrics_files import fresh_metrics_dir, mark_dead, remove_metrics_dir
from dhserve.serving.plan import FLASK_SERVER, ServingConfigError, ServingPlan, plan_serving
from dhserve.serving.roles import render_worker_process, web_process
from dhserve.serving.supervisor import Child, Supervisor, child_environment

log = logging.getLogger("dhserve.serving")

BOOT_TIMEOUT_S = 60.0


def serve(settings: Settings, serving: ServingSettings, mode: str = "auto") -> int:
    """Runs the service until stopped; returns the process exit status."""
    plan = plan_serving(settings, serving, default_layout="split")
    if mode != "flask" and gunicorn_problem() is None:
        plan = _bound_as_gunicorn_will(plan)
    for line in plan.describe("flask" if mode == "flask" else "gunicorn"):
        log.info("%s", line)
    if not bindable(plan.bind):
        log.error("%s is in use (another dhserve?): stop it or choose --bind", plan.bind)
        return 1
    metrics_dir = fresh_metrics_dir(settings.metrics_path)    # shared by every child
    supervisor = Supervisor(stop_timeout=settings.stop_grace_seconds + plan.graceful_timeout,
                            on_exit=lambda pid: mark_dead(pid, metrics_dir))
    supervisor.install_signal_handlers()
    env = child_environment({**plan.environment(),
                             "DHSERVE_DATA_DIR": str(settings.data_dir.resolve()),
                             METRICS_DIR_ENV: str(metrics_dir)})
    if not plan.renders_in_web_workers:
        for device in plan.devices:
            supervisor.start(render_worker_process(device, env))
    try:
        server = _start_web(supervisor, plan, env, mode)
        if server is None:
            asked_to_stop = supervisor.stopping      # a TERM/INT during start-up is no failure
            supervisor.stop()
            supervisor.run()
            return 0 if asked_to_stop else 1
        _announce(settings, plan, server)
        return supervisor.run()
    finally:
        remove_metrics_dir(metrics_dir)              # every child has exited by now


def _start_web(supervisor: Supervisor, plan: ServingPlan, env: dict[str, str],
               mode: str) -> str | None:
    """Starts the web tier; returns which server runs it, or None when none could start."""
    if mode != "flask":
        problem = gunicorn_problem()
        if problem is None:
            child = supervisor.start(web_process("gunicorn", env))
            problem = _wait_until_serving(supervisor, child, plan.bind)
            if problem is None:
                return "gunicorn"
            supervisor.remove(child)         # gone for good, port released
        if supervisor.stopping:
            return None
        if mode == "gunicorn":
            log.error("Gunicorn %s", problem)
            return None
        rule = "!" * 78
        log.error("\n%s\nGunicorn %s.\nFalling back to Flask's threaded server: the same API, "
                  "without Gunicorn's worker\nrecycling. Fix the cause and restart to serve with "
                  "Gunicorn again.\n%s", rule, problem, rule)
        log.info("%s", plan.web_server_line("flask"))
    child = supervisor.start(web_process("flask", env))
    problem = _wait_until_serving(supervisor, child, plan.bind)
    if problem is not None:
        if not supervisor.stopping:
            log.error("Flask's threaded server %s", problem)
        return None
    return "flask"


def _bound_as_gunicorn_will(plan: ServingPlan) -> ServingPlan:
    """The plan with the address Gunicorn will listen on: a --bind in GUNICORN_CMD_ARGS wins,
    as under plain Gunicorn, and the launcher waits for the service (and a fallback to Flask
    listens) there. Unparsable arguments are left for Gunicorn to report as it starts."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            binds = _effective_config(plan).bind
    except (Exception, SystemExit):  # noqa: BLE001 - a broken Gunicorn: its start says why
        return plan
    if binds and binds[0] != plan.bind:
        log.info("GUNICORN_CMD_ARGS binds %s (in place of %s)", binds[0], plan.bind)
        return dataclasses.replace(plan, bind=binds[0])
    return plan


def gunicorn_problem() -> str | None:
    """Why Gunicorn cannot be used here, or None."""
    if sys.platform == "win32":
        return "does not run on Windows"
    if importlib.util.find_spec("gunicorn") is None:
        return "cannot be imported (pip install gunicorn)"
    return None


def _wait_until_serving(supervisor: Supervisor, child: Child, bind: str) -> str | None:
    """None once the child answers /livez; else why it did not (it exited, or timed out)."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        supervisor.handle_signals(timeout=0.2)
        if supervisor.stopping:
            return "start-up interrupted"
        if not child.running:
            time.sleep(0.1)               # let the stderr pump catch the last lines
            return (f"failed to boot (exit status {child.returncode})"
                    f"{': ' + _gist(list(child.tail))}")
        if answers_livez(bind):
            return None
    return f"did not answer /livez within {BOOT_TIMEOUT_S:g} s"


def _gist(lines: list[str]) -> str:
    """What a failed start said: its "Error: …" line and its last line (the exception)."""
    said = [line.strip() for line in lines if line.strip() not in ("", "[", "]")]
    errors = [line for line in said if line.startswith("Error:")]
    return " … ".join(dict.fromkeys(errors[-1:] + said[-1:])) or "no output"


def _announce(settings: Settings, plan: ServingPlan, server: str) -> None:
    url = base_url(plan.bind)
    devices = ", ".join(d.label for d in plan.devices)
    renderers = (f"renders on {devices} in the web worker" if plan.renders_in_web_workers else
                 f"{len(plan.devices)} render worker(s) on {devices}")
    web = (FLASK_SERVER if server == "flask" else
           f"gunicorn, {plan.workers} x {plan.worker_class} worker(s)")
    lines = [(f"dhserve is serving at {url} ({web}, {plan.layout} layout, {renderers}, "
             f"profile {plan.profile.name})")]
    temp = settings.temp_dir
    video, audio = temp / "avatar.mp4", temp / "speech.wav"
    if not (video.is_file() and audio.is_file()):
        lines.append(f"  put an avatar video and a speech file into {temp}/ as avatar.mp4 and "
                     "speech.wav (or name yours below), then:")
    key = " -H 'Authorization: Bearer $DHSERVE_API_KEY'" if settings.api_key else ""
    lines += [
        (f"  submit:  curl -s {url}/easy/submit{key} -H 'Content-Type: application/json' "
        "-d '{\"video_url\":\"avatar.mp4\",\"audio_url\":\"speech.wav\",\"code\":\"demo-1\"}'"),
        f"  follow:  curl -s{key} '{url}/easy/query?code=demo-1'    (result: {temp}/demo-1-r.mp4)",
        f"  health:  curl -s{key} {url}/health",
        f"  logs: {settings.log_path}; stop with Ctrl-C"]
    print("\n".join(lines), flush=True)


def diagnose(settings: Settings, serving: ServingSettings) -> int:
    """Prints what `serve` would do and whether it can; exit status 0, or 2 if it cannot."""
    gpu = read_gpus()
    try:
        plan = plan_serving(settings, serving, default_layout="split", gpu=gpu)
    except ServingConfigError as exc:
        print(f"error {exc.code}: {exc.message}")
        return 2
    lines = plan.describe()
    if gpu.available:
        lines += [f"GPU {d.index}: {d.name}, {d.memory_total_mb / 1024:.1f} GiB, "
                  f"{d.memory_used_mb / 1024:.1f} GiB used (driver {gpu.driver})"
                  for d in gpu.devices]
    else:
        lines.append(f"GPU: none usable ({gpu.reason or 'no devices'}): renders on the CPU")
    problem = gunicorn_problem()
    lines.append("gunicorn: " + (f"{_version('gunicorn')} (--mode auto uses it)" if problem is None
                                 else f"{problem}: --mode auto falls back to Flask"))
    if problem is None:
        lines.append(_gunicorn_in_effect(plan))
    evidence = cuda_initialised_here()
    lines.append("this process: " + (f"CUDA initialised ({evidence})" if evidence else
                                      "CUDA not initialised (as a Gunicorn master must be)"))
    lines.append(f"data dir {settings.data_dir.resolve()}: "
                 f"{'writable' if unwritable_reason(settings.data_dir) is None else 'NOT writable'}")
    lines.append(f"bind {plan.bind}: {'free' if bindable(plan.bind) else 'IN USE'}")
    print("\n".join(lines))
    return 0


def _gunicorn_in_effect(plan: ServingPlan) -> str:
    """Gunicorn's settings as the web tier would run them, GUNICORN_CMD_ARGS applied."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return f"gunicorn in effect: {effective_settings(_effective_config(plan))}"
    except Exception as exc:  # noqa: BLE001 - Gunicorn found but broken on import
        return f"gunicorn cannot be loaded: {type(exc).__name__}: {exc}"
    except SystemExit:
        said_lines = [line.strip() for line in said.getvalue().splitlines() if line.strip()]
        why = ([line for line in said_lines if "error:" in line] or said_lines or ["?"])[-1]
        return f"GUNICORN_CMD_ARGS cannot be parsed (Gunicorn would not start): {why}"


def _effective_config(plan: ServingPlan) -> Any:
    """Gunicorn's settings for the plan (serving/web.py). Imported when asked: it imports
    Gunicorn, which may be missing or fail to import here (then Flask serves)."""
    from dhserve.serving.web import effective_config

    return effective_config(plan)


def _version(module: str) -> str:
    from importlib.metadata import version

    return f"{module} {version(module)}"
