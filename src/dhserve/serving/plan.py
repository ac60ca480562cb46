"""The serving plan: every decision about how the service runs (layout, profile, web workers,
which GPU each renderer gets, limits), made once from the settings and NVML, shown by
`--diagnose` and /health, and handed to child processes as environment variables so that each
one reads the same plan."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dhserve.config import ServingSettings, Settings
from dhserve.errors import DhserveError
from dhserve.runtime.gpu import GpuDevice, GpuSummary, read_gpus
from dhserve.serving.profiles import Profile, choose_profile

DEFAULT_WEB_WORKERS = {"all-in-one": 1, "split": 2}
FLASK_SERVER = "flask (werkzeug, threaded)"     # the fallback web server, as it is reported
GPU_LIST = re.compile(r"(\d+(,\d+)*)?")          # CUDA_VISIBLE_DEVICES by index (not UUIDs)


class ServingConfigError(DhserveError):
    """A serving configuration that cannot work; the message says what to change."""

    code = "serving.config"


@dataclass(frozen=True)
class RenderDevice:
    """Where one renderer runs: a GPU (its NVML index) or the CPU."""

    gpu: int | None = None

    @property
    def label(self) -> str:
        return "cpu" if self.gpu is None else f"cuda:{self.gpu}"

    @property
    def setting(self) -> str:
        """DHSERVE_DEVICE inside the renderer's process, which sees only its own GPU."""
        return "cpu" if self.gpu is None else "cuda:0"

    def environment(self) -> dict[str, str]:
        """Pins the renderer's process to its GPU before anything initialises CUDA: it sees
        only that GPU, as cuda:0. A CPU renderer sees none."""
        return {"CUDA_VISIBLE_DEVICES": "" if self.gpu is None else str(self.gpu),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",      # CUDA's indices = NVML's
                "DHSERVE_DEVICE": self.setting}


@dataclass(frozen=True)
class ServingPlan:
    layout: str
    profile: Profile
    profile_reason: str
    requested_profile: str         # "auto" or a name: children choose the same way again
    bind: str
    workers: int                   # Gunicorn web workers (all-in-one: they also render)
    threads: int
    worker_class: str
    timeout: int
    graceful_timeout: int
    max_requests: int
    max_memory_mb: float           # 0: no limit
    batch_size: int
    keepalive: int                 # s an idle kept-alive connection stays open
    devices: tuple[RenderDevice, ...]
    gpus: tuple[GpuDevice, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def renders_in_web_workers(self) -> bool:
        return self.layout == "all-in-one"

    def environment(self) -> dict[str, str]:
        """Variables that make a child process arrive at this same plan."""
        return {"DHSERVE_LAYOUT": self.layout, "DHSERVE_PROFILE": self.requested_profile,
                "DHSERVE_GPUS": ",".join(str(d.gpu) for d in self.devices
                                         if d.gpu is not None) or "none",
                "GUNICORN_BIND": self.bind, "GUNICORN_WORKERS": str(self.workers),
                "GUNICORN_THREADS": str(self.threads),
                "GUNICORN_WORKER_CLASS": self.worker_class,
                "GUNICORN_TIMEOUT": str(self.timeout),
                "GUNICORN_GRACEFUL_TIMEOUT": str(self.graceful_timeout),
                "GUNICORN_MAX_REQUESTS": str(self.max_requests),
                "GUNICORN_MAX_MEMORY": f"{self.max_memory_mb:g}",
                "GUNICORN_KEEPALIVE": str(self.keepalive),
                "DHSERVE_BATCH_SIZE": str(self.batch_size)}

    def gunicorn_options(self) -> dict[str, Any]:
        """Gunicorn settings of this plan (gunicorn.conf.py and `dhserve serve` use them)."""
        options: dict[str, Any] = {
            "bind": [self.bind], "workers": self.workers, "worker_class": self.worker_class,
            "threads": self.threads, "timeout": self.timeout,
            "graceful_timeout": self.graceful_timeout,
            # all-in-one: the hooks recycle after max_requests once the job is done; Gunicorn's
            # own would stop the worker mid-render
            "max_requests": 0 if self.renders_in_web_workers else self.max_requests,
            "max_requests_jitter": 0 if self.renders_in_web_workers else self.max_requests // 10,
            "preload_app": False,          # the master never imports the app or a model
            # longer than a client's idle time between polls: HeyGem's client polls every
            # 2 s on a kept-alive socket, and meets a closed one at Gunicorn's default of 2
            "keepalive": self.keepalive,
            # no request-line limit (Gunicorn's is 4094 bytes, at most 8190): a long query
            # (a 20 kB /easy/query?code=...) reaches the app, which answers it with an
            # envelope, not Gunicorn's bare 414; headers keep Gunicorn's limits
            "limit_request_line": 0,
            "proc_name": "dhserve", "accesslog": None,
            # Gunicorn >= 25's control socket: one path (~/.gunicorn) shared by every instance
            # on the machine, and a thread in the master; dhserve uses signals
            "control_socket_disable": True}
        if Path("/dev/shm").is_dir():      # heartbeat files off the disk (no stalls on slow fs)
            options["worker_tmp_dir"] = "/dev/shm"
        return options

    def summary(self) -> dict[str, Any]:
        """What /health shows of the plan."""
        return {"layout": self.layout, "profile": self.profile.name,
                "profile_reason": self.profile_reason, "web_workers": self.workers,
                "threads": self.threads, "worker_class": self.worker_class,
                "batch_size": self.batch_size, "max_memory_mb": self.max_memory_mb,
                "keepalive": self.keepalive,
                "render_devices": [d.label for d in self.devices]}

    def describe(self, server: str = "gunicorn") -> list[str]:
        """The plan as lines for a terminal (`dhserve serve --diagnose`, start-up logs);
        `server`: which web server runs it (gunicorn, or flask: the fallback)."""
        renderers = ", ".join(d.label for d in self.devices)
        where = ("in the web worker (all-in-one)" if self.renders_in_web_workers
                 else "in their own processes (split)")
        return [f"layout {self.layout}: renderers on {renderers}, {where}",
                (f"profile {self.profile.name} ({self.profile_reason}): {self.threads} threads, "
                f"batch {self.batch_size}, memory limit "
                f"{f'{self.max_memory_mb:g} MB' if self.max_memory_mb else 'off'}"),
                self.web_server_line(server),
                *(f"warning: {w}" for w in self.warnings)]

    def web_server_line(self, server: str) -> str:
        """What serves HTTP, as the start-up log and --diagnose say it."""
        if server == "flask":
            return (f"web: {FLASK_SERVER}, bind {self.bind}: one process, a thread per "
                    "connection, each answer closes its connection; no worker recycling")
        return (f"gunicorn: bind {self.bind}, {self.workers} x {self.worker_class} worker(s), "
                f"timeout {self.timeout} s, graceful {self.graceful_timeout} s, "
                f"keep-alive {self.keepalive} s, "
                f"max requests {self.max_requests or 'unlimited'}, preload off")


def plan_serving(settings: Settings, serving: ServingSettings, default_layout: str,
                 gpu: GpuSummary | None = None) -> ServingPlan:
    """Decides how to serve. `gpu` is an NVML summary (read here when None: NVML never makes
    a CUDA context, so the master may ask). Refuses what cannot work, saying what to change."""
    gpu = read_gpus() if gpu is None else gpu
    layout = serving.layout or default_layout
    gpus = _selected_gpus(serving.gpus, serving.cuda_visible_devices, gpu)
    warnings: list[str] = []
    workers = serving.workers or DEFAULT_WEB_WORKERS[layout]
    if layout == "all-in-one":
        if len(gpus) > 1:
            warnings.append(f"all-in-one renders on one GPU (cuda:{gpus[0].index}); "
                            f"{len(gpus)} are selected: use --layout split to use them all")
            gpus = gpus[:1]
        if workers > 1 and gpus:
            raise ServingConfigError(
                f"GUNICORN_WORKERS={workers} with the all-in-one layout would load {workers} "
                f"copies of the models on cuda:{gpus[0].index} (one CUDA context and one "
                "set of weights per worker: out of GPU memory, and no faster). Use 1 worker, "
                "or --layout split (any number of web workers, one renderer per GPU).")
        if workers > 1:
            warnings.append(f"{workers} web workers each render on the CPU (all-in-one)")
    profile, reason = choose_profile(serving.profile, gpus, gpu.reason or "no GPU")
    devices = tuple(RenderDevice(g.index) for g in gpus) or (RenderDevice(),)
    threads = serving.threads or profile.threads
    if serving.worker_class == "sync":       # Gunicorn runs gthread instead when threads > 1
        if serving.threads and serving.threads > 1:
            warnings.append(f"GUNICORN_THREADS={serving.threads} ignored: a sync worker "
                            "serves one request at a time (Gunicorn would switch to gthread)")
        threads = 1
    max_memory = profile.max_memory_mb if serving.max_memory_mb is None \
        else serving.max_memory_mb
    grace_needed = settings.stop_grace_seconds + 5
    if layout == "all-in-one" and serving.graceful_timeout < grace_needed:
        warnings.append(f"GUNICORN_GRACEFUL_TIMEOUT={serving.graceful_timeout} is shorter than "
                        f"a render's stop grace ({settings.stop_grace_seconds:g} s) + 5 s: on "
                        "shutdown a running job is handed back sooner")
    if layout == "all-in-one" and 0 < serving.timeout < grace_needed:
        warnings.append(f"GUNICORN_TIMEOUT={serving.timeout} is shorter than a render's stop "
                        f"grace ({settings.stop_grace_seconds:g} s) + 5 s: a leaving worker "
                        "can be killed before it hands its job back")
    bind = serving.bind or settings.bind
    if exposed_without_key(settings, bind):
        warnings.append(f"serving on {bind} without an API key: anyone who reaches this port "
                        "can submit jobs; set DHSERVE_API_KEY")
    return ServingPlan(
        layout=layout, profile=profile, profile_reason=reason,
        requested_profile=serving.profile,
        bind=bind, workers=workers,
        threads=threads, worker_class=serving.worker_class,
        timeout=serving.timeout, graceful_timeout=serving.graceful_timeout,
        max_requests=serving.max_requests, max_memory_mb=max_memory,
        batch_size=serving.batch_size or profile.batch_size, keepalive=serving.keepalive,
        devices=devices, gpus=gpus, warnings=tuple(warnings))


def exposed_without_key(settings: Settings, bind: str) -> bool:
    """Bound beyond loopback with no API key: anyone who can reach the port can submit."""
    host = bind.rsplit(":", 1)[0].strip("[]")
    if settings.api_key or host.startswith("unix"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def visible_indices(visible: str) -> list[int]:
    """CUDA_VISIBLE_DEVICES as GPU indices ("" hides every GPU: []). UUIDs and MIG ids are
    refused: dhserve picks GPUs by NVML index and pins each renderer itself (`dhserve doctor`
    reports the same refusal)."""
    if not GPU_LIST.fullmatch(visible.strip()):
        raise ServingConfigError(
            f"CUDA_VISIBLE_DEVICES={visible}: dhserve picks GPUs by index (it pins each "
            "renderer itself); name them with DHSERVE_GPUS=0,1 and leave "
            "CUDA_VISIBLE_DEVICES unset")
    return [int(i) for i in visible.strip().split(",") if i]


def _selected_gpus(selection: str, visible: str | None,
                   gpu: GpuSummary) -> tuple[GpuDevice, ...]:
    """DHSERVE_GPUS; when auto, CUDA_VISIBLE_DEVICES set for the whole service narrows it."""
    devices = gpu.usable_devices
    if selection == "auto" and visible is not None:
        selection = ",".join(str(i) for i in visible_indices(visible)) or "none"
    if selection == "none":
        return ()
    if selection == "auto":
        return devices
    by_index = {d.index: d for d in devices}
    wanted = [int(i) for i in selection.split(",")]
    missing = [i for i in wanted if i not in by_index]
    if missing:
        seen = ", ".join(str(i) for i in by_index) or "none"
        raise ServingConfigError(f"DHSERVE_GPUS={selection}: no GPU {missing[0]} (NVML sees: "
                                 f"{seen}{'; ' + gpu.reason if gpu.reason is not None else ''})")
    return tuple(by_index[i] for i in dict.fromkeys(wanted))
