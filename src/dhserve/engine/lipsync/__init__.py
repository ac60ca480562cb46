"""Lip-sync backends: one interface (base.py), one module per backend, and the table below.

A backend is named here by "module:Class" and imported on first use (as Gunicorn's
SUPPORTED_WORKERS), so the web tier can check a job's backend and the model file it needs
without importing it, and a render worker imports only the backends it runs. What a backend
needs (its model file, mel features) it declares on its class.
"""

from __future__ import annotations

import importlib
from functools import cache

from dhserve.config import Settings
from dhserve.engine.lipsync.base import FrameBatch, LipSyncBackend
from dhserve.errors import UnknownBackend
from dhserve.runtime.models import ModelSpec, model_path

# Adding a backend: one module, one line here. The order is "auto"'s preference: the first
# whose model file is in the models folder (a backend without a model always qualifies).
BACKENDS = {
    "wav2lip": "dhserve.engine.lipsync.wav2lip:Wav2LipBackend",
    "classic": "dhserve.engine.lipsync.classic:ClassicLipSync",
}


def available_backends() -> list[str]:
    return sorted(BACKENDS)


@cache
def backend_class(name: str) -> type[LipSyncBackend]:
    """The class of the backend `name` (a name in BACKENDS), imported on first use."""
    module, _, attribute = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def backend_model(name: str) -> ModelSpec | None:
    """The model file the backend `name` (a name in BACKENDS) needs; None for none."""
    return backend_class(name).model_spec


def check_backend(name: str, settings: Settings | None = None) -> str:
    """The concrete backend `name` stands for (see resolve_backend); InputError
    options.unknown_backend when no backend has that name. Loads no model, so the web tier
    refuses a job for a backend that does not exist at submit time, not in the worker."""
    name = resolve_backend(name, settings)
    if name not in BACKENDS:
        raise UnknownBackend("backend",
                             f"unknown lip-sync backend {name!r}; available: "
                             f"{', '.join(available_backends())}")
    return name


def resolve_backend(name: str, settings: Settings | None = None) -> str:
    """The concrete backend `name` stands for: "auto" is the first backend of the table whose
    model file is in the models folder (wav2lip when its file is there, else classic). Looks
    at the file system only (no model is loaded), so the web tier may call it for /health."""
    if name != "auto":
        return name
    settings = settings or Settings()
    for candidate in BACKENDS:
        model = backend_model(candidate)
        if model is None or model_path(settings, model).is_file():
            return candidate
    return candidate        # none qualifies: the table's last, which should need no model


def create_backend(name: str, settings: Settings | None = None) -> LipSyncBackend:
    """A ready backend (models loaded, sessions checked) for `name`, which may be "auto".

    Raises InputError options.unknown_backend for a name no backend has, model.missing when
    the backend's model file is absent; ModelError / GpuUnavailable (dhserve.runtime.onnx)
    for a damaged model file or an unusable GPU."""
    settings = settings or Settings()
    return backend_class(check_backend(name, settings)).from_settings(settings)


__all__ = ["BACKENDS", "FrameBatch", "LipSyncBackend", "available_backends", "backend_class",
           "backend_model", "check_backend", "create_backend", "resolve_backend"]
