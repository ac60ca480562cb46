"""The Gunicorn configuration as Gunicorn itself would load it, judged against what dhserve
needs: what is checked is what will run.

The file is executed the way `gunicorn -c FILE` executes it (Gunicorn's own loader), then
GUNICORN_CMD_ARGS is applied over it (Gunicorn's precedence). Loading a file runs its code:
dhserve's own gunicorn.conf.py only builds settings and starts nothing; what a file imports
(a model framework, CUDA) is noticed and reported, because the Gunicorn master would do the
same before forking its workers. GUNICORN_CMD_ARGS and the variables the file reads come from
this process's environment, as they would for Gunicorn.

Gunicorn is imported only here, when a configuration is loaded: where it cannot be imported
(Windows, a broken install) that is a finding, and `dhserve serve` falls back to Flask.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dhserve.doctor.base import ERROR, OK, WARNING, Check, Facts, guarded, said
from dhserve.errors import first_line
from dhserve.serving.cuda_guard import ENGINE_MODULES, REMEDY, cuda_initialised_here
from dhserve.serving.hooks import EXIT_MARGIN_S, ServingHooks
from dhserve.serving.plan import ServingConfigError, plan_serving

BUILT_IN = "built-in (the web tier `dhserve serve` runs)"
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}
SHOWN = ("bind", "workers", "worker_class", "threads", "timeout", "graceful_timeout",
         "keepalive", "limit_request_line", "max_requests", "preload_app", "worker_tmp_dir")
CLIENT_IDLE_S = 5             # Node's keep-alive agent (HeyGem's client) keeps idle sockets
                              # this long; HeyGem polls every 2 s


@dataclass
class LoadedConfig:
    """A Gunicorn configuration, loaded, with what loading it did."""

    source: str                          # the file, or BUILT_IN
    cfg: Any                             # gunicorn.config.Config; None: it could not be loaded
    plan: Any = None                     # dhserve's ServingPlan, read from its hooks
    problem: str | None = None           # why it could not be loaded
    imported: list[str] = field(default_factory=list)   # model frameworks the file imported
    cuda: str | None = None              # evidence the file initialised CUDA
    cmd_args: bool = False               # GUNICORN_CMD_ARGS applied

    def settings(self) -> dict[str, Any]:
        if self.cfg is None:
            return {}
        values = {name: self.cfg.settings[name].get() for name in SHOWN}
        values["worker_class"] = self.cfg.worker_class_str
        return values


def _read(path: Path) -> Any:
    """Gunicorn's loading without the command line: the file, then GUNICORN_CMD_ARGS over it;
    its Config. Nothing is started (Application.run() is never called), and sys.path is left
    as it was found."""
    from gunicorn.app.base import Application  # Gunicorn: only here (see the docstring)

    class Reader(Application):
        def load_config(self) -> None:
            parser = self.cfg.parser()
            env_args = parser.parse_args(self.cfg.get_cmd_args_from_env())
            if os.getcwd() not in sys.path:       # as Gunicorn's chdir() does
                sys.path.insert(0, os.getcwd())
            self.load_config_from_file(str(path))
            for key, value in vars(env_args).items():
                if value is not None and key not in ("args", "config"):
                    self.cfg.set(key.lower(), value)

        def load(self) -> None:   # pragma: no cover - the doctor never loads the app
            raise RuntimeError("the doctor does not load the application")

    saved = list(sys.path)
    try:
        return Reader().cfg
    finally:
        sys.path[:] = saved


def _gunicorn_missing() -> str | None:
    """Why Gunicorn cannot be imported here (None: it can)."""
    try:
        import gunicorn.config  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or what its import raises
        return f"Gunicorn cannot be imported ({said(exc)})"
    return None


def config_path(explicit: Path | None, cmd_args: str | None) -> Path | None:
    """Which file Gunicorn would read: --config, else GUNICORN_CMD_ARGS's --config, else
    ./gunicorn.conf.py if present (Gunicorn's default); None: no file."""
    if explicit is not None:
        return explicit
    if cmd_args:
        try:
            from gunicorn.config import Config  # Gunicorn: only here (see the docstring)

            with contextlib.redirect_stderr(io.StringIO()):
                parsed = Config().parser().parse_args(shlex.split(cmd_args))
        except (Exception, SystemExit):  # noqa: BLE001 - reported when the file is loaded
            parsed = None
        if parsed is not None and parsed.config:
            return Path(parsed.config)
    default = Path.cwd() / "gunicorn.conf.py"
    return default if default.is_file() else None


def load(path: Path | None, facts: Facts) -> LoadedConfig:
    """The configuration Gunicorn would run: the file at `path` with GUNICORN_CMD_ARGS, or,
    without a file, the settings `dhserve serve` gives its Gunicorn web tier."""
    if path is None:
        return _built_in(facts)
    source = str(path.absolute())
    if not path.is_file():
        return LoadedConfig(source, None, problem=f"{path}: no such file")
    missing = _gunicorn_missing()
    if missing:
        return LoadedConfig(source, None, problem=missing)
    before = set(sys.modules)
    had_cuda = cuda_initialised_here()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
            cfg = _read(path)
    except SystemExit as exc:
        text = " … ".join(line.strip() for line in printed.getvalue().splitlines()
                          if line.strip() and not line.startswith("  File "))[-600:]
        return LoadedConfig(source, None, problem=f"Gunicorn cannot load it (exit status "
                                                  f"{exc.code}): {text or 'no message'}")
    except Exception as exc:  # noqa: BLE001 - a file that raises past Gunicorn's own handler
        return LoadedConfig(source, None,
                            problem=said(exc))
    imported = [m for m in ENGINE_MODULES if m in sys.modules and m not in before]
    cuda = None if had_cuda else cuda_initialised_here()
    return LoadedConfig(source, cfg, plan=_plan_of(cfg), imported=imported, cuda=cuda,
                        cmd_args=bool(cfg.get_cmd_args_from_env()))


def _plan_of(cfg: Any) -> Any:
    """dhserve's plan, when the config's hooks are dhserve's (they carry the plan they judge
    with); None for a configuration without them."""
    hook = cfg.settings["when_ready"].get()
    owner = getattr(hook, "__self__", None)
    return owner.plan if isinstance(owner, ServingHooks) else None


def _built_in(facts: Facts) -> LoadedConfig:
    """The plan's Gunicorn options (what serving.web gives Gunicorn, less the hooks and the
    log set-up, which make folders and judge nothing here)."""
    if facts.serving is None:
        return LoadedConfig(BUILT_IN, None, problem="the serving settings are invalid (see "
                                                    "system/serving settings)")
    try:
        plan = plan_serving(facts.settings, facts.serving, "split", gpu=facts.gpu)
    except ServingConfigError as exc:
        return LoadedConfig(BUILT_IN, None, problem=exc.message)
    missing = _gunicorn_missing()
    if missing:                   # the plan still holds: `dhserve serve` falls back to Flask
        return LoadedConfig(BUILT_IN, None, plan=plan, problem=missing)
    # serving.web imports Gunicorn: only here, where it is known to import
    from dhserve.serving.web import apply_cmd_args, plan_config

    cfg = plan_config(plan)
    said = io.StringIO()
    try:                                 # as `dhserve serve` applies it over the plan
        with contextlib.redirect_stderr(said):
            named = apply_cmd_args(cfg)
    except SystemExit:
        text = " … ".join(line.strip() for line in said.getvalue().splitlines() if line.strip())
        return LoadedConfig(BUILT_IN, None, plan=None,
                            problem=f"GUNICORN_CMD_ARGS cannot be parsed: {text[-400:]}")
    return LoadedConfig(BUILT_IN, cfg, plan=plan, cmd_args=bool(named))


def load_chosen(explicit: Path | None, facts: Facts) -> LoadedConfig:
    """The configuration Gunicorn would pick and run here (`explicit`: --config); what Facts
    calls, once, when a check first needs it."""
    return load(config_path(explicit, facts.variables.get("GUNICORN_CMD_ARGS")), facts)


def gunicorn_checks(facts: Facts) -> list[Check]:
    """Judges the configuration Facts loaded."""
    loaded = facts.config
    data = {"source": loaded.source, "settings": _jsonable(loaded.settings()),
            "gunicorn_cmd_args": facts.variables.get("GUNICORN_CMD_ARGS")}
    if loaded.cfg is None and loaded.plan is not None:
        return [Check("gunicorn", "config", WARNING, f"{loaded.source}: {loaded.problem}",
                      "`dhserve serve` falls back to Flask's threaded server (fine for a few "
                      "users; no worker recycling, no per-worker memory limit); for Gunicorn "
                      "use Linux (or WSL2) and reinstall it",
                      "pip install --force-reinstall --no-deps -r requirements.lock",
                      data={**data, "plan": loaded.plan.summary()})]
    if loaded.cfg is None:
        return [Check("gunicorn", "config", ERROR, f"{loaded.source}: {loaded.problem}",
                      "fix what the message names; `gunicorn --check-config -c FILE APP` shows "
                      "Gunicorn's own view, `dhserve serve --diagnose` dhserve's plan",
                      "gunicorn --check-config -c gunicorn.conf.py 'dhserve.api:create_app()'",
                      data=data)]
    cfg, plan = loaded.cfg, loaded.plan
    checks = [_config_line(loaded, data)]
    if loaded.imported or loaded.cuda:
        what = ", ".join(loaded.imported) + (f"; {loaded.cuda}" if loaded.cuda else "")
        checks.append(Check("gunicorn", "master", ERROR,
                            f"loading {loaded.source} imported {what} in the Gunicorn master",
                            "the master forks every worker from itself: a model framework or "
                            "CUDA there is inherited broken; dhserve's when_ready refuses to "
                            f"start. {REMEDY}", data={"imported": loaded.imported,
                                                      "cuda": loaded.cuda}))
    all_in_one = plan is not None and plan.renders_in_web_workers
    gpu = all_in_one and plan.devices[0].gpu is not None
    renderer = (f"the all-in-one renderer on {plan.devices[0].label}" if all_in_one else
                "no renderer (web tier only)")
    judged = (("preload_app", lambda: [_preload(cfg, renderer)]),
              ("workers", lambda: [_workers(cfg, all_in_one, gpu, plan)]),
              ("worker_class", lambda: [_worker_class(cfg, all_in_one)]),
              ("timeouts", lambda: _timeouts(cfg, all_in_one,
                                             facts.settings.stop_grace_seconds)),
              ("max_requests", lambda: [_max_requests(cfg, all_in_one, plan)]),
              ("keepalive", lambda: [_keepalive(cfg)]),
              ("worker_tmp_dir", lambda: [_heartbeat_dir(cfg)]))
    for name, judge in judged:
        checks.extend(guarded("gunicorn", judge, name))
    return checks


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v)
            for k, v in values.items()}


def _config_line(loaded: LoadedConfig, data: dict[str, Any]) -> Check:
    cfg, plan = loaded.cfg, loaded.plan
    extra = " + GUNICORN_CMD_ARGS" if loaded.cmd_args else ""
    if plan is None:
        return Check("gunicorn", "config", WARNING,
                     f"{loaded.source}{extra}: loaded; it does not use dhserve's hooks",
                     "without them the master is not checked for CUDA, workers are not pinned "
                     "to their GPU, and nothing renders in the web workers (run `dhserve "
                     "worker` processes): build the file on dhserve.serving.web."
                     "config_file_settings as the repository's gunicorn.conf.py does",
                     data=data)
    data["plan"] = plan.summary()
    return Check("gunicorn", "config", OK,
                 f"{loaded.source}{extra}: layout {plan.layout}, profile {plan.profile.name} "
                 f"({plan.profile_reason}), {cfg.workers} x {cfg.worker_class_str} worker(s), "
                 f"{cfg.threads} thread(s), keep-alive {cfg.keepalive} s, renders on "
                 f"{', '.join(d.label for d in plan.devices)}", data=data)


def _preload(cfg: Any, renderer: str) -> Check:
    if cfg.preload_app:
        return Check("gunicorn", "preload_app", ERROR,
                     f"preload_app is on, with {renderer}",
                     "preloading imports the app in the master before the fork; a model or "
                     "CUDA context made there is inherited broken by every worker (\"Cannot "
                     "re-initialize CUDA in forked subprocess\"), and dhserve's when_ready "
                     "refuses to start. Set preload_app = False and remove --preload from the "
                     "command line and GUNICORN_CMD_ARGS; dhserve loads models after the fork",
                     "preload_app = False    # in gunicorn.conf.py", data={"preload_app": True})
    return Check("gunicorn", "preload_app", OK, "off: models load in the workers after the "
                 "fork", data={"preload_app": False})


def _workers(cfg: Any, all_in_one: bool, gpu: bool, plan: Any) -> Check:
    data = {"workers": cfg.workers, "threads": cfg.threads}
    if all_in_one and cfg.workers > 1 and gpu:
        return Check("gunicorn", "workers", ERROR,
                     f"{cfg.workers} workers with the all-in-one renderer on "
                     f"{plan.devices[0].label}: {cfg.workers} copies of the models and of the "
                     "CUDA context on one GPU", "out of GPU memory, and no faster; dhserve's "
                     "when_ready refuses it. Use workers = 1 (GUNICORN_WORKERS=1), or the split "
                     "layout (`dhserve serve`: any number of web workers, one renderer per GPU)",
                     "export GUNICORN_WORKERS=1    # or: dhserve serve --layout split",
                     data=data)
    if all_in_one and cfg.workers > 1:
        return Check("gunicorn", "workers", WARNING,
                     f"{cfg.workers} workers each render on the CPU (all-in-one)",
                     f"{cfg.workers} renders compete for the cores and each worker loads its "
                     "own models; use 1 worker, or `dhserve serve` (split) for more web "
                     "workers", "export GUNICORN_WORKERS=1", data=data)
    return Check("gunicorn", "workers", OK, f"{cfg.workers} worker(s) x {cfg.threads} "
                 "thread(s)", data=data)


def _worker_class(cfg: Any, all_in_one: bool) -> Check:
    name = cfg.worker_class_str
    data = {"worker_class": name}
    try:
        _ = cfg.worker_class       # Gunicorn imports it at boot; a missing one fails there
    except Exception as exc:  # noqa: BLE001 - ImportError, RuntimeError, ...
        return Check("gunicorn", "worker_class", ERROR,
                     f"{name} cannot be loaded: {_gist(exc)}",
                     "Gunicorn fails to boot with it (`dhserve serve --mode auto` would fall "
                     "back to Flask); use worker_class = \"gthread\"",
                     "export GUNICORN_WORKER_CLASS=gthread", data=data)
    if name in ("sync",) or name.endswith("SyncWorker"):
        if all_in_one:
            return Check("gunicorn", "worker_class", ERROR,
                         "sync worker with the all-in-one renderer",
                         "a sync worker serves one request at a time and heartbeats only "
                         "between requests: one slow request (a large upload, a slow client) "
                         "longer than `timeout` gets the worker killed, and the render running "
                         "in it with it. Use worker_class = \"gthread\" (it heartbeats from its "
                         "own loop whatever the requests do)",
                         "export GUNICORN_WORKER_CLASS=gthread", data=data)
        return Check("gunicorn", "worker_class", WARNING, "sync web workers",
                     "one request at a time per worker, killed when a request (a large "
                     "upload) outlasts `timeout`; gthread serves polls beside uploads",
                     "export GUNICORN_WORKER_CLASS=gthread", data=data)
    cooperative = name == "tornado" or "gevent" in name or "eventlet" in name
    if cooperative and all_in_one:
        return Check("gunicorn", "worker_class", ERROR,
                     f"{name} worker with the all-in-one renderer",
                     "cooperative workers monkey-patch threads: the render thread runs ONNX "
                     "Runtime without yielding, the event loop stops, heartbeats stop and "
                     "the master kills the worker mid-render. Use gthread",
                     "export GUNICORN_WORKER_CLASS=gthread", data=data)
    return Check("gunicorn", "worker_class", OK, f"{name}", data=data)


def _gist(exc: BaseException) -> str:
    """First and last line of a multi-line error (Gunicorn wraps the ImportError's traceback)."""
    lines = [line.strip(" []") for line in str(exc).splitlines() if line.strip(" []")]
    if len(lines) < 2:
        return first_line(exc)
    return f"{lines[0].rstrip(': ')} … {lines[-1]}"


def _timeouts(cfg: Any, all_in_one: bool, stop_grace: float) -> list[Check]:
    """A leaving all-in-one worker lets its running render finish for up to
    DHSERVE_STOP_GRACE_SECONDS (the longest render dhserve waits for), then hands it back
    EXIT_MARGIN_S before the master's kill: both timeouts must leave that room."""
    needed = stop_grace + EXIT_MARGIN_S
    data = {"timeout": cfg.timeout, "graceful_timeout": cfg.graceful_timeout,
            "needed": needed}
    if not all_in_one:
        return [Check("gunicorn", "timeouts", OK,
                      f"timeout {cfg.timeout} s, graceful_timeout {cfg.graceful_timeout} s "
                      "(web tier only: renders run in their own processes)", data=data)]
    checks = []
    if 0 < cfg.timeout < needed:
        checks.append(Check(
            "gunicorn", "timeout", WARNING,
            f"timeout {cfg.timeout} s is shorter than a render's stop grace "
            f"({stop_grace:g} s, DHSERVE_STOP_GRACE_SECONDS) + {EXIT_MARGIN_S:g} s",
            "a worker that is leaving (HUP, recycle) can be killed before its render finishes "
            f"or is handed back; set timeout >= {needed:g} (dhserve's default is 600)",
            f"export GUNICORN_TIMEOUT={max(600, int(needed))}", data=data))
    else:
        checks.append(Check("gunicorn", "timeout", OK,
                            f"timeout {cfg.timeout} s" + (" (off)" if cfg.timeout == 0 else
                                                          f" >= {needed:g} s"), data=data))
    if cfg.graceful_timeout < needed:
        checks.append(Check(
            "gunicorn", "graceful_timeout", WARNING,
            f"graceful_timeout {cfg.graceful_timeout} s is shorter than a render's stop grace "
            f"({stop_grace:g} s) + {EXIT_MARGIN_S:g} s",
            "on SIGTERM/HUP a running render gets only "
            f"{max(cfg.graceful_timeout - EXIT_MARGIN_S, 0):g} s "
            f"to finish before it is handed back and started again; set graceful_timeout >= "
            f"{needed:g}, or lower DHSERVE_STOP_GRACE_SECONDS",
            f"export GUNICORN_GRACEFUL_TIMEOUT={int(needed) + 25}", data=data))
    else:
        checks.append(Check("gunicorn", "graceful_timeout", OK,
                            f"graceful_timeout {cfg.graceful_timeout} s >= {needed:g} s",
                            data=data))
    return checks


def _max_requests(cfg: Any, all_in_one: bool, plan: Any) -> Check:
    data = {"max_requests": cfg.max_requests,
            "dhserve_max_requests": plan.max_requests if plan is not None else None}
    if all_in_one and cfg.max_requests > 0:
        return Check("gunicorn", "max_requests", WARNING,
                     f"Gunicorn's max_requests = {cfg.max_requests} with the all-in-one "
                     "renderer", "Gunicorn recycles the worker after that many requests even "
                     "mid-render (polling alone reaches it): the running render then gets only "
                     "DHSERVE_STOP_GRACE_SECONDS before it is handed back and rendered again. "
                     "Leave max_requests = 0 and set GUNICORN_MAX_REQUESTS: "
                     "dhserve counts it and recycles after the running job",
                     f"max_requests = 0    # and: export GUNICORN_MAX_REQUESTS={cfg.max_requests}",
                     data=data)
    own = (f"; dhserve recycles after {plan.max_requests} requests, once the job is done"
           if all_in_one and plan.max_requests else "")
    return Check("gunicorn", "max_requests", OK,
                 f"max_requests {cfg.max_requests or 'off'}{own}", data=data)


def _keepalive(cfg: Any) -> Check:
    """An idle kept-alive connection must outlive the client's pause between requests, or the
    client's next request meets a socket the server is closing (ECONNRESET: HeyGem's client
    then stops polling for good)."""
    data = {"keepalive": cfg.keepalive}
    if cfg.keepalive <= CLIENT_IDLE_S:
        off = "off" if cfg.keepalive == 0 else f"{cfg.keepalive} s"
        return Check("gunicorn", "keepalive", WARNING,
                     f"keep-alive {off}: idle connections close within a client's "
                     f"{CLIENT_IDLE_S} s idle time",
                     "HeyGem's desktop client polls /easy/query every 2 s on a kept-alive "
                     "connection; when Gunicorn closes it at that moment the poll fails "
                     "(ECONNRESET) and the client stops polling. Use a keep-alive longer than "
                     "any client's idle time (dhserve's default: 75 s, as nginx)",
                     "export GUNICORN_KEEPALIVE=75    # or: keepalive = 75 in the config file",
                     data=data)
    return Check("gunicorn", "keepalive", OK,
                 f"keep-alive {cfg.keepalive} s (> {CLIENT_IDLE_S} s: clients' idle kept-alive "
                 "connections stay open)", data=data)


def filesystem_type(path: str) -> str | None:
    """The type of the file system `path` is on, from /proc/mounts (None where unknown)."""
    path = os.path.realpath(path)
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def _heartbeat_dir(cfg: Any) -> Check:
    where = cfg.worker_tmp_dir or tempfile.gettempdir()
    kind = filesystem_type(where)
    data = {"worker_tmp_dir": cfg.worker_tmp_dir, "path": where, "filesystem": kind}
    if kind is None or kind in MEMORY_FILESYSTEMS:
        return Check("gunicorn", "worker_tmp_dir", OK,
                     f"heartbeat files in {where} ({kind or 'file system unknown'})", data=data)
    return Check("gunicorn", "worker_tmp_dir", WARNING,
                 f"heartbeat files in {where}, on {kind} (disk)",
                 "each worker updates its heartbeat file's timestamp about once a second; on a "
                 "disk under heavy I/O (worse: an overlay or network file system) that write can "
                 "block past `timeout` and the master kills a healthy worker. Use "
                 "worker_tmp_dir = \"/dev/shm\"",
                 "worker_tmp_dir = \"/dev/shm\"    # or: gunicorn --worker-tmp-dir /dev/shm",
                 data=data)
