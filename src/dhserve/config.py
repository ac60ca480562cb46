"""Every setting dhserve has, read in one place: DHSERVE_* environment variables + overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DHSERVE_"
LOOP_MODES = ("pingpong", "restart")
MULTIPLE_FACE_POLICIES = ("largest", "error")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
CHOICES = {"loop": LOOP_MODES, "multiple_faces": MULTIPLE_FACE_POLICIES,
           "x264_preset": X264_PRESETS}


def option_problem(name: str, value: Any) -> str | None:
    """Why `value` is not valid for the render option `name`, or None when it is. Shared by
    the service's settings and a job's own choices, which report problems differently."""
    if name in CHOICES and value not in CHOICES[name]:
        return f"must be one of {', '.join(CHOICES[name])}; got {value!r}"
    if name == "crf" and not 0 <= value <= 51:
        return f"must be 0..51, got {value}"
    if name == "batch_size" and value < 1:
        return f"must be >= 1, got {value}"
    return None


@dataclass(frozen=True)
class Settings:
    """dhserve's configuration. Each field `name` is read from `DHSERVE_<NAME>`."""

    data_dir: Path = Path("data")
    backend: str = "classic"             # lip-sync backend used when a job names none
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
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for f in fields(self):
            problem = option_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()} {problem}")

    @property
    def templates_dir(self) -> Path:
        """Per-avatar analysis cache, keyed by the template's content hash."""
        return self.data_dir / "templates"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"


def _parse(name: str, type_name: Any, raw: str) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "str")
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

