"""What a render may vary (RenderOptions), and the checks of it that only look at files: the
model files it needs are there, the overlay images it asks for are configured and readable.

Nothing here loads a model or decodes a frame, so the web tier checks a submit with these
before it queues the job, and never imports the render pipeline (which the worker runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dhserve.config import Settings, option_problem
from dhserve.engine.background import KEEP, background_problem
from dhserve.engine.face.restore import FaceRestorer
from dhserve.engine.lipsync import backend_model, check_backend
from dhserve.engine.overlay import OVERLAY_KINDS, OverlayKind, check_overlay_file, overlay_path
from dhserve.errors import OptionsInvalid
from dhserve.runtime.models import require_model


@dataclass(frozen=True)
class RenderOptions:
    """What one render may vary: the job's choices and the service's limits."""

    backend: str = Settings.backend
    loop: str = Settings.loop
    x264_preset: str = Settings.x264_preset
    crf: int = Settings.crf
    batch_size: int = Settings.batch_size
    multiple_faces: str = Settings.multiple_faces
    max_input_mb: float = Settings.max_input_mb
    max_video_seconds: float = Settings.max_video_seconds
    max_audio_seconds: float = Settings.max_audio_seconds
    max_video_pixels: int = Settings.max_video_pixels
    frame_cache_mb: float = Settings.frame_cache_mb
    face_restore: bool = False     # HeyGem's chaofen=1: restore the face after lip-sync
    watermark: bool = False        # HeyGem's watermark_switch=1: Settings.watermark_image
    ai_label: bool = False         # HeyGem's digital_auth=1: Settings.ai_label_image
    # keep | transparent (.webm/.mov output) | #rrggbb | an image file (engine/background.py)
    background: str = KEEP

    def __post_init__(self) -> None:
        """A job's choices are user input: a bad one is an InputError naming the option."""
        for name in self.__dataclass_fields__:
            problem = option_problem(name, getattr(self, name))
            if problem:
                raise OptionsInvalid(name, problem)
        for name in ("face_restore", "watermark", "ai_label"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise OptionsInvalid(name, f"must be true or false; got {value!r}")
        problem = background_problem(self.background)
        if problem:
            raise OptionsInvalid("background", problem)

    @classmethod
    def from_settings(cls, settings: Settings, **choices) -> RenderOptions:
        """The service's defaults for every option Settings has, then the job's `choices`."""
        names = cls.__dataclass_fields__
        values = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
        values.update({k: v for k, v in choices.items() if v is not None})
        return cls(**values)



def check_models(options: RenderOptions, settings: Settings | None = None,
                 have_backend: bool = False, have_restorer: bool = False) -> None:
    """The model files the job's choices need (and the caller did not bring loaded) are
    there; InputError model.missing naming the file ("needs models/GFPGANv1.4.onnx")
    otherwise. Looks at files only (loads nothing), so a submit can be refused before it is
    queued."""
    settings = settings or Settings()
    if options.face_restore and not have_restorer:
        require_model(settings, FaceRestorer.model_spec, "face_restore")
    if not have_backend:
        spec = backend_model(check_backend(options.backend, settings))
        if spec is not None:
            require_model(settings, spec, "backend")


def check_overlays(options: RenderOptions, settings: Settings | None = None
                   ) -> list[tuple[OverlayKind, Path]]:
    """The overlays the job's choices ask for, each with its image file, checked to be
    configured (overlay.not_configured) and a readable image (overlay.invalid). Like
    check_models it only looks at files, so a submit can be refused before it is queued."""
    settings = settings or Settings()
    wanted = []
    for kind in OVERLAY_KINDS:
        if getattr(options, kind.option):
            path = overlay_path(settings, kind)
            check_overlay_file(path, kind.option)
            wanted.append((kind, path))
    return wanted
