"""The lip-sync backend interface: template frames + landmarks + audio features in, frames out.

A backend sees one batch at a time (the pipeline streams), so it may run batched inference
(the `wav2lip` ONNX backend) or per-frame geometry (`classic`). It never sees files or jobs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dhserve.errors import InputError


@dataclass
class FrameBatch:
    """Consecutive output frames with everything a backend may need to animate them."""

    frames: list[np.ndarray]    # RGB uint8 (H, W, 3) template frames; never modify in place
    landmarks: np.ndarray       # (B, 468, 2) float32 pixels; NaN rows where there is no face
    openness: np.ndarray        # (B,) 0..1 mouth openness from the speech loudness
    mel: np.ndarray | None      # (B, 80, 16) Wav2Lip mel chunks, when the backend needs_mel

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def has_face(self) -> np.ndarray:
        return ~np.isnan(self.landmarks[:, 0, 0])


class LipSyncBackend(ABC):
    name: ClassVar[str]
    needs_mel: ClassVar[bool] = False

    @abstractmethod
    def animate(self, batch: FrameBatch) -> list[np.ndarray]:
        """Returns one RGB frame per input frame; frames without a face come back unchanged."""

    def close(self) -> None:
        """Releases models and sessions."""


_REGISTRY: dict[str, Callable[[], LipSyncBackend]] = {}


def register(name: str, factory: Callable[[], LipSyncBackend]) -> None:
    _REGISTRY[name] = factory


def available_backends() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create_backend(name: str) -> LipSyncBackend:
    _load_builtin()
    if name == "auto":      # only classic exists so far; wav2lip takes over when its model is there
        name = "classic"
    if name not in _REGISTRY:
        raise InputError("options.unknown_backend", "backend",
                         f"unknown lip-sync backend {name!r}; available: "
                         f"{', '.join(available_backends())}")
    return _REGISTRY[name]()


def _load_builtin() -> None:
    from dhserve.engine.lipsync import classic  # noqa: F401  (registers itself)
