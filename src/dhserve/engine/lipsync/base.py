"""The lip-sync backend interface: template frames + landmarks + audio features in, frames out.

A backend sees one batch at a time (the pipeline streams), so it may run batched inference
(the `wav2lip` ONNX backend) or per-frame geometry (`classic`). It never sees files or jobs.
A backend holds no state between batches: one instance (and its model sessions) serves every
render of a worker process, from several threads at once. What it needs of the neighbouring
frames (for temporal smoothing) it declares in `context_frames` and the pipeline supplies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from dhserve.config import Settings
from dhserve.errors import InputError


def _no_context() -> np.ndarray:
    return np.zeros((0, 468, 2), np.float32)


@dataclass
class FrameBatch:
    """Consecutive output frames with everything a backend may need to animate them."""

    frames: list[np.ndarray]    # RGB uint8 (H, W, 3) template frames; never modify in place
    landmarks: np.ndarray       # (B, 468, 2) float32 pixels; NaN rows where there is no face
    openness: np.ndarray        # (B,) 0..1 mouth openness from the speech loudness
    mel: np.ndarray | None      # (B, 80, 16) Wav2Lip mel chunks, when the backend needs_mel
    # (≤k, 468, 2) landmarks of the k output frames just before / after this batch, for
    # smoothing across batch boundaries (k = backend.context_frames)
    before: np.ndarray = field(default_factory=_no_context)
    after: np.ndarray = field(default_factory=_no_context)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def has_face(self) -> np.ndarray:
        return ~np.isnan(self.landmarks[:, 0, 0])


class LipSyncBackend(ABC):
    name: ClassVar[str]
    needs_mel: ClassVar[bool] = False
    context_frames: ClassVar[int] = 0   # neighbouring frames' landmarks each batch needs

    @abstractmethod
    def animate(self, batch: FrameBatch) -> list[np.ndarray]:
        """Returns one RGB frame per input frame; frames without a face come back unchanged."""

    def close(self) -> None:
        """Releases models and sessions."""


_REGISTRY: dict[str, Callable[[Settings], LipSyncBackend]] = {}


def register(name: str, factory: Callable[..., LipSyncBackend],
             with_settings: bool = False) -> None:
    """Makes `name` a backend; `factory()` builds it, or `factory(settings)` when it needs
    the settings (model files, device)."""
    _REGISTRY[name] = factory if with_settings else (lambda settings: factory())


# Registered when first used; named here so a submit can be checked without importing them.
BUILTIN_BACKENDS = ("classic", "wav2lip")


def available_backends() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def check_backend(name: str, settings: Settings | None = None) -> str:
    """The concrete backend `name` stands for (see resolve_backend); InputError
    options.unknown_backend when no backend has that name. Imports no backend, so the web
    tier refuses a job for a backend that does not exist at submit time, not in the worker."""
    name = resolve_backend(name, settings)
    if name not in BUILTIN_BACKENDS and name not in _REGISTRY:
        raise InputError("options.unknown_backend", "backend",
                         f"unknown lip-sync backend {name!r}; available: "
                         f"{', '.join(sorted({*BUILTIN_BACKENDS, *_REGISTRY}))}")
    return name


def resolve_backend(name: str, settings: Settings | None = None) -> str:
    """The concrete backend `name` stands for: "auto" is wav2lip when its model file is in
    the models dir, else classic. Looks at the file system only (no model is loaded), so the
    web tier may call it for /health."""
    if name != "auto":
        return name
    settings = settings or Settings()
    model = settings.models_path / settings.wav2lip_model
    return "wav2lip" if model.is_file() else "classic"


def create_backend(name: str, settings: Settings | None = None) -> LipSyncBackend:
    """A ready backend (models loaded, sessions checked) for `name`, which may be "auto".

    Raises InputError options.unknown_backend for a name no backend has, model.missing when
    the backend's model file is absent; ModelError / GpuUnavailable (dhserve.runtime.onnx)
    for a damaged model file or an unusable GPU."""
    _load_builtin()
    settings = settings or Settings()
    return _REGISTRY[check_backend(name, settings)](settings)


def _load_builtin() -> None:
    from dhserve.engine.lipsync import classic, wav2lip  # noqa: F401  (register themselves)
