"""Every setting dhserve has, read in one place: DHSERVE_* environment variables + overrides."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DHSERVE_"
LOOP_MODES = ("pingpong", "restart")
MULTIPLE_FACE_POLICIES = ("largest", "error")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
GPU_PROVIDERS = ("cuda", "tensorrt")
CUDNN_CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
CHOICES = {"loop": LOOP_MODES, "multiple_faces": MULTIPLE_FACE_POLICIES,
           "x264_preset": X264_PRESETS, "gpu_provider": GPU_PROVIDERS,
           "cudnn_conv_algo_search": CUDNN_CONV_ALGO_SEARCHES}
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
POSITIVE = ("batch_size", "lease_seconds", "heartbeat_seconds", "max_attempts", "max_queued",
            "poll_seconds", "download_timeout_seconds")


def option_problem(name: str, value: Any) -> str | None:
    """Why `value` is not valid for the render option `name`, or None when it is. Shared by
    the service's settings and a job's own choices, which report problems differently."""
    if name in CHOICES and value not in CHOICES[name]:
        return f"must be one of {', '.join(CHOICES[name])}; got {value!r}"
    if name == "crf" and not 0 <= value <= 51:
        return f"must be 0..51, got {value}"
    if name in POSITIVE and value <= 0:
        return f"must be > 0, got {value}"
    if name == "device" and not DEVICE_PATTERN.fullmatch(value):
        return f"must be cpu, cuda or cuda:N; got {value!r}"
    return None


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
    poll_seconds: float = 1.0            # idle worker's longest wait between claim attempts
    stop_grace_seconds: float = 30.0     # SIGTERM: time the current render gets to finish
    download_timeout_seconds: float = 300.0  # http(s) inputs: whole download, per file
    # HTTP API
    bind: str = "127.0.0.1:8383"         # loopback unless the operator says otherwise
    api_key: str = field(default="", repr=False)  # set: every route but /livez needs
                                                  # "Authorization: Bearer <key>"
    input_roots: str = ""                # folders (os.pathsep-separated) whose files clients
                                         # may name as inputs; default: the data dir

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from DHSERVE_* variables; non-None `overrides` (e.g. CLI flags) win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

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
    def models_path(self) -> Path:
        """Where model files are looked up: DHSERVE_MODELS_DIR, else <data dir>/models."""
        return Path(self.models_dir) if self.models_dir else self.data_dir / "models"

    @property
    def database(self) -> str:
        """The job store's SQLAlchemy URL: DHSERVE_DATABASE_URL, else SQLite in the data dir."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'dhserve.db').resolve()}"


def _parse(name: str, type_name: Any, raw: str) -> Any:
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
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None

