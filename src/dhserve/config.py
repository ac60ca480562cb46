"""Every setting dhserve has, read in one place: DHSERVE_* environment variables + overrides.

The only module that reads the process environment; other modules ask it (Settings,
ServingSettings, the accessors below). Variables set for child processes (a renderer's
CUDA_VISIBLE_DEVICES, the metrics folder, the plan) are written where those processes are
started: serving/roles.py, serving/hooks.py, serving/supervisor.py, metrics.init."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DHSERVE_"
LOOP_MODES = ("pingpong", "restart")
MULTIPLE_FACE_POLICIES = ("largest", "error")
# the background option's words; anything else is a #rrggbb colour or an image
KEEP, TRANSPARENT = "keep", "transparent"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
GPU_PROVIDERS = ("cuda", "tensorrt")
CUDNN_CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
CHOICES = {"loop": LOOP_MODES, "multiple_faces": MULTIPLE_FACE_POLICIES,
           "x264_preset": X264_PRESETS, "gpu_provider": GPU_PROVIDERS,
           "cudnn_conv_algo_search": CUDNN_CONV_ALGO_SEARCHES}
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
DATABASE_URL_PATTERN = re.compile(r"(sqlite|postgresql(\+psycopg)?)://.*", re.DOTALL)
# prometheus_client's multiprocess folder (its own variable's name): metrics.init sets it in a
# process that joins the folder, so its children (Gunicorn workers) inherit it
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_PID_ENV = "DHSERVE_SUPERVISOR_PID"   # set by `dhserve serve` in the processes it starts
POSITIVE = ("batch_size", "lease_seconds", "heartbeat_seconds", "max_attempts", "max_queued",
            "poll_seconds", "download_timeout_seconds", "log_max_mb", "template_cache_mb")


def option_problem(name: str, value: Any) -> str | None:
    """Why `value` is not valid for the render option `name`, or None when it is. Shared by
    the service's settings and a job's own choices, which report problems differently."""
    if isinstance(value, float) and math.isnan(value):
        return "must be a number, got nan"
    if name in CHOICES and value not in CHOICES[name]:
        return f"must be one of {', '.join(CHOICES[name])}; got {value!r}"
    if name == "crf" and not 0 <= value <= 51:
        return f"must be 0..51, got {value}"
    if name in POSITIVE and value <= 0:
        return f"must be > 0, got {value}"
    if name == "database_url" and value and not DATABASE_URL_PATTERN.fullmatch(value):
        return (f"must be sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                f"(postgresql:// means the same); got {value!r}")
    if name == "render_nice" and not 0 <= value <= 19:
        return f"must be 0..19, got {value}"
    if name == "device" and not DEVICE_PATTERN.fullmatch(value):
        return f"must be cpu, cuda or cuda:N; got {value!r}"
    if name in ("allowed_networks", "heygem_networks"):
        try:
            parse_networks(value)
        except ValueError as exc:
            return f"must be comma-separated networks like 10.0.0.0/8,::1/128; {exc}"
    if name == "min_free_mb" and value < 0:
        return f"must be >= 0, got {value}"
    return None


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """DHSERVE_ALLOWED_NETWORKS as networks ("10.0.0.0/8, 127.0.0.1"); ValueError names the
    entry that is not one."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not a network") from None
    return tuple(networks)


@dataclass(frozen=True)
class Settings:
    """dhserve's configuration. Each field `name` is read from `DHSERVE_<NAME>`."""

    data_dir: Path = Path("data")
    backend: str = "auto"                # lip-sync backend when a job names none; auto: wav2lip
                                         # when its model file is present, else classic
    loop: str = "pingpong"               # template looping when the speech is longer
    x264_preset: str = "superfast"       # veryfast: files ~55% smaller, encoding ~1.5x slower
    crf: int = 18
    batch_size: int = 16                 # frames per lip-sync batch (progress/cancel granularity)
    multiple_faces: str = "largest"      # "largest": animate the biggest face; "error": refuse
    max_input_mb: float = 2048.0         # per input file
    max_video_seconds: float = 600.0     # template duration
    max_audio_seconds: float = 3600.0    # speech duration (= output duration)
    max_video_pixels: int = 3840 * 2160  # template width * height
    frame_cache_mb: float = 512.0        # decoded template frames kept in RAM for ping-pong
    # neural backends (ONNX Runtime)
    device: str = "cpu"                  # cpu, cuda (= cuda:0) or cuda:N, for render workers
    gpu_provider: str = "cuda"           # on a cuda device: cuda, or tensorrt (engine cache)
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    gpu_mem_limit_mb: float = 0.0        # ONNX Runtime CUDA arena limit; 0 = no limit
    models_dir: Path | None = None       # default <data dir>/models
    wav2lip_model: str = "wav2lip_gan_96.onnx"   # file name in the models dir
    restore_model: str = "GFPGANv1.4.onnx"        # face restoration (chaofen=1)
    # overlays a job may ask for (HeyGem watermark_switch=1, digital_auth=1): PNG, alpha kept
    watermark_image: Path | None = None  # drawn in the bottom-right corner
    ai_label_image: Path | None = None   # the "AI-generated" label, drawn in the top-left corner
    # job store and render workers
    database_url: str = ""               # default sqlite:///<data dir>/dhserve.db
    lease_seconds: float = 60.0          # a claimed job is the worker's until this expires
    heartbeat_seconds: float = 10.0      # how often a worker renews its lease
    max_attempts: int = 3                # claims per job before it fails as "worker lost"
    max_queued: int = 1000               # queued jobs; over it, submit answers "busy"
    retention_days: float = 7.0          # finished jobs and their files are pruned after this
    template_cache_mb: float = 2048.0    # face analyses and person masks of templates: the
                                         # least recently used go above this size
    poll_seconds: float = 1.0            # idle worker's longest wait between claim attempts
    stop_grace_seconds: float = 30.0     # SIGTERM: time the current render gets to finish
    render_nice: int = 10                # CPU priority a `dhserve worker` process gives up
                                         # (0..19): on shared cores, requests answer first
    download_timeout_seconds: float = 300.0  # http(s) inputs: whole download, per file
    # http(s) inputs may not reach loopback, private, link-local, ... addresses; these
    # comma-separated networks (CIDR) are opened for operators whose media server is internal
    allowed_networks: str = ""
    min_free_mb: float = 256.0           # new jobs are refused (storage.full) below this much
                                         # free space in the data dir
    # HTTP API
    bind: str = "127.0.0.1:8383"         # loopback unless the operator says otherwise
    api_key: str = field(default="", repr=False)  # set: every route but /livez needs
                                                  # "Authorization: Bearer <key>"
    # HeyGem's clients cannot send a key: with DHSERVE_API_KEY set, /easy/* is still open
    # without it to clients on these networks (CIDR, comma-separated; "" closes it), by
    # default this machine, where HeyGem's client runs beside the service. A request that
    # came through a proxy (Forwarded, X-Forwarded-For, X-Real-IP) is never exempt
    heygem_networks: str = "127.0.0.0/8,::1"
    input_roots: str = ""                # folders (os.pathsep-separated) whose files clients
                                         # may name as inputs; default: the data dir
    server: str = ""                     # the service `dhserve submit/status` talk to;
                                         # default http://<bind>
    # prometheus_client's multiprocess folder (its own variable name); None: `dhserve serve`
    # and the Gunicorn master make one in RAM (/dev/shm), fresh at each start, where a full
    # data disk cannot make its memory-mapped files fault (see metrics_path)
    metrics_dir: Path | None = field(default=None,
                                     metadata={"env": METRICS_DIR_ENV})
    # logs of the service's processes: <data dir>/log/dh.log, rotated by size
    log_max_mb: float = 50.0
    log_backups: int = 5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from DHSERVE_* variables; non-None `overrides` (e.g. CLI flags) win."""
        return cls(**_read_env(cls, environ, overrides))

    def __post_init__(self) -> None:
        """Coerces paths and refuses bad values, however the settings were made."""
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for f in fields(self):
            problem = option_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()} {problem}")
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(f"{ENV_PREFIX}HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be "
                             f"at most half of {ENV_PREFIX}LEASE_SECONDS "
                             f"({self.lease_seconds:g}), or leases expire between heartbeats")

    @property
    def templates_dir(self) -> Path:
        """Per-avatar analysis cache, keyed by the template's content hash."""
        return self.data_dir / "templates"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def temp_dir(self) -> Path:
        """HeyGem's work folder: clients put inputs here and find <code>-r.mp4 here."""
        return self.data_dir / "temp"

    @property
    def uploads_dir(self) -> Path:
        """Files uploaded to /v1/jobs, named by their content hash."""
        return self.data_dir / "uploads"

    @property
    def input_root_paths(self) -> list[Path]:
        """The folders whose files a client may name as inputs."""
        roots = [Path(p) for p in self.input_roots.split(os.pathsep) if p.strip()]
        return roots or [self.data_dir]

    @property
    def allowed_network_list(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The networks URL inputs may reach although they are internal."""
        return parse_networks(self.allowed_networks)

    @property
    def heygem_network_list(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The networks whose clients may use /easy/* without the API key."""
        return parse_networks(self.heygem_networks)

    @property
    def metrics_path(self) -> Path:
        """The multiprocess metrics folder the service's processes share (GET /metrics):
        DHSERVE's PROMETHEUS_MULTIPROC_DIR, else a folder in RAM named for the data dir (its
        files are memory-mapped: on a full disk, writing one faults the process with SIGBUS),
        else <data dir>/run/metrics where there is no RAM-backed folder."""
        if self.metrics_dir:
            return Path(self.metrics_dir)
        ram = Path("/dev/shm")
        if ram.is_dir() and os.access(ram, os.W_OK):
            key = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
            return ram / f"dhserve-metrics-{os.getuid()}-{key}"
        return self.data_dir / "run" / "metrics"

    @property
    def log_path(self) -> Path:
        """The service's log file, shared by all its processes."""
        return self.data_dir / "log" / "dh.log"

    @property
    def models_path(self) -> Path:
        """Where model files are looked up: DHSERVE_MODELS_DIR, else <data dir>/models."""
        return Path(self.models_dir) if self.models_dir else self.data_dir / "models"

    @property
    def database(self) -> str:
        """The job store's SQLAlchemy URL: DHSERVE_DATABASE_URL, else SQLite in the data dir."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'dhserve.db').resolve()}"


@dataclass(frozen=True)
class ClientSettings:
    """What `dhserve submit/status` need of Settings: where the service is and its key. Read
    on their own, so that a bad variable the client has no use for (DHSERVE_CRF=abc) does not
    stop it."""

    server: str = ""
    api_key: str = field(default="", repr=False)
    bind: str = Settings.bind

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> ClientSettings:
        return cls(**_read_env(cls, environ, overrides))

    @property
    def server_url(self) -> str:
        """Where a client finds the service: DHSERVE_SERVER, else this machine's bind address
        (a wildcard bind is reached on loopback)."""
        if self.server:
            return self.server.rstrip("/")
        host, _, port = self.bind.rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"


def active_metrics_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The multiprocess metrics folder this process was started to join (PROMETHEUS_MULTIPROC_DIR,
    set by `dhserve serve` or the Gunicorn master for their children): process-wide, whatever
    Settings a caller holds, and what each role passes to metrics.init, which decides where
    the metrics go; None: a single process, prometheus_client's default registry."""
    environ = os.environ if environ is None else environ
    value = environ.get(METRICS_DIR_ENV) or environ.get(METRICS_DIR_ENV.lower())
    return Path(value) if value else None


LAYOUTS = ("split", "all-in-one")
MODES = ("auto", "gunicorn", "flask")
PROFILE_NAMES = ("auto", "cpu", "12gb", "24gb", "48gb")
GPU_SELECTION = re.compile(r"auto|none|\d+(,\d+)*")


@dataclass(frozen=True)
class ServingSettings:
    """How the service runs: Gunicorn's knobs under HeyGem's GUNICORN_* names, the layout and
    the GPU profile. Unset (None) values come from the layout or the profile."""

    bind: str | None = field(default=None, metadata={"env": "GUNICORN_BIND"})
    workers: int | None = field(default=None, metadata={"env": "GUNICORN_WORKERS"})
    threads: int | None = field(default=None, metadata={"env": "GUNICORN_THREADS"})
    timeout: int = field(default=600, metadata={"env": "GUNICORN_TIMEOUT"})
    graceful_timeout: int = field(default=60, metadata={"env": "GUNICORN_GRACEFUL_TIMEOUT"})
    worker_class: str = field(default="gthread", metadata={"env": "GUNICORN_WORKER_CLASS"})
    max_memory_mb: float | None = field(default=None, metadata={"env": "GUNICORN_MAX_MEMORY"})
    max_requests: int = field(default=0, metadata={"env": "GUNICORN_MAX_REQUESTS"})
    # seconds an idle kept-alive connection stays open: longer than any common client's
    # idle time (HeyGem's client polls every 2 s; Node's agent keeps sockets 5 s; nginx 75 s),
    # so a poll never meets a connection the server is closing (Gunicorn's default is 2)
    keepalive: int = field(default=75, metadata={"env": "GUNICORN_KEEPALIVE"})
    batch_size: int | None = field(default=None, metadata={"env": "DHSERVE_BATCH_SIZE"})
    layout: str | None = field(default=None, metadata={"env": "DHSERVE_LAYOUT"})
    profile: str = field(default="auto", metadata={"env": "DHSERVE_PROFILE"})
    gpus: str = field(default="auto", metadata={"env": "DHSERVE_GPUS"})  # auto|none|0,1
    # as the operator set it for the whole service ("" hides every GPU); None when unset
    cuda_visible_devices: str | None = field(default=None,
                                             metadata={"env": "CUDA_VISIBLE_DEVICES"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> ServingSettings:
        environ = os.environ if environ is None else environ
        values = _read_env(cls, environ, overrides)
        values["cuda_visible_devices"] = environ.get("CUDA_VISIBLE_DEVICES")  # "" means none
        return cls(**values)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            problem = self._problem(f.name, value)
            if problem:
                raise ValueError(f"{_env_name(f)}={value!r}: {problem}")

    @staticmethod
    def _problem(name: str, value: Any) -> str | None:
        choices = {"layout": (None, *LAYOUTS), "profile": PROFILE_NAMES}
        if name in choices and value not in choices[name]:
            return f"must be one of {', '.join(c for c in choices[name] if c)}"
        if name == "gpus" and not GPU_SELECTION.fullmatch(value):
            return "must be auto, none or GPU indices like 0,1"
        if name in ("workers", "threads", "batch_size") and value is not None and value < 1:
            return "must be at least 1"
        if isinstance(value, (int, float)) and value < 0:
            return "must be >= 0"
        return None


# Variables dhserve does not own but that decide which GPUs a process sees and how CUDA,
# PyTorch and Gunicorn behave; `dhserve doctor` shows them and checks them against each other.
DIAGNOSTIC_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                        "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_NVML_BASED_CUDA_CHECK",
                        "GUNICORN_CMD_ARGS", "LD_LIBRARY_PATH")


def diagnostic_environment(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Those variables as set now; None when unset ("" is kept: CUDA_VISIBLE_DEVICES="" hides
    every GPU)."""
    environ = os.environ if environ is None else environ
    return {name: environ.get(name) for name in DIAGNOSTIC_VARIABLES}


def process_environment() -> dict[str, str]:
    """A copy of this process's environment as it is now: what a child process is given
    (serving/supervisor.py) and what the doctor's probes run with."""
    return dict(os.environ)


def supervisor_pid(environ: Mapping[str, str] | None = None) -> int | None:
    """The pid of the `dhserve serve` that started this process; None when none did."""
    environ = os.environ if environ is None else environ
    value = environ.get(SUPERVISOR_PID_ENV, "")
    return int(value) if value.isdigit() else None


def _env_name(f: Any) -> str:
    return f.metadata.get("env", ENV_PREFIX + f.name.upper())


def _read_env(cls: type, environ: Mapping[str, str] | None,
              overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Field values of `cls` from its variables (DHSERVE_<NAME> unless the field names one);
    non-None `overrides` (e.g. CLI flags) win."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = environ.get(_env_name(f))
        if raw is not None and raw != "":
            values[f.name] = _parse(_env_name(f), f.type, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def _parse(env: str, type_name: Any, raw: str) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "str")
    kind = kind.removesuffix(" | None")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        return raw
    except ValueError:
        raise ValueError(f"{env}={raw!r} is not a valid {kind}") from None

