"""A job's render choices: which ones a client may make, checked before the job is queued."""

from __future__ import annotations

from typing import Any

from dhserve.config import Settings
from dhserve.engine.pipeline import RenderOptions, check_models, check_overlays
from dhserve.errors import InputError
from dhserve.jobs.model import JobSpec

# Service limits and the batch size (memory) stay the operator's; a job may choose the rest.
NOT_JOB_OPTIONS = frozenset({"max_input_mb", "max_video_seconds", "max_audio_seconds",
                             "max_video_pixels", "frame_cache_mb", "batch_size"})


def job_render_options(settings: Settings, options: dict[str, Any]) -> RenderOptions:
    """A job's options over the service's defaults; unknown or reserved names are refused
    (InputError options.invalid naming the option)."""
    allowed = set(RenderOptions.__dataclass_fields__) - NOT_JOB_OPTIONS
    for name in options:
        if name not in allowed:
            raise InputError("options.invalid", name,
                             f"unknown option; a job may set {', '.join(sorted(allowed))}")
    return RenderOptions.from_settings(settings, **options)


def check_job(settings: Settings, spec: JobSpec) -> RenderOptions:
    """What a submit checks before queueing: the options, that the model files they need are
    present ("needs models/GFPGANv1.4.onnx"), and that the overlays they ask for are
    configured and readable images. Reads files only; loads no model."""
    options = job_render_options(settings, spec.options)
    check_models(options, settings)
    check_overlays(options, settings)
    return options
