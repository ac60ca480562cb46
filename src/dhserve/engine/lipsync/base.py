"""The lip-sync backend interface: template frames + landmarks + audio features in, frames out.
The backends by name are the table in dhserve.engine.lipsync.

A backend sees one batch at a time (the pipeline streams), so it may run batched inference
(the `wav2lip` ONNX backend) or per-frame geometry (`classic`). It never sees files or jobs.
One instance (and its model sessions) serves every render of a worker process, from several
threads at once, so a backend keeps no per-render state in itself: what it needs of the
neighbouring frames (for temporal smoothing) it declares in `context_frames` and the pipeline
supplies. The one exception is bounded and keyed by content: `classic` carries its lips' blend
from one batch to the next (visemes.ShapeTracker finds a batch's predecessor by its speech).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from dhserve.config import Settings
from dhserve.runtime.models import ModelSpec


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
    """One way of animating the mouth. The class says what it needs before any instance
    exists (its model file, the mel features), so a submit is checked without loading it."""

    name: ClassVar[str]
    model_spec: ClassVar[ModelSpec | None] = None   # its model file; None: needs no weights
    needs_mel: ClassVar[bool] = False
    context_frames: ClassVar[int] = 0   # neighbouring frames' landmarks each batch needs

    @classmethod
    def from_settings(cls, settings: Settings) -> LipSyncBackend:
        """A ready instance: its model loaded from the models folder, on the configured
        device. A backend without a model needs nothing of the settings."""
        return cls()

    @abstractmethod
    def animate(self, batch: FrameBatch) -> list[np.ndarray]:
        """Returns one RGB frame per input frame; frames without a face come back unchanged."""

    def close(self) -> None:
        """Releases models and sessions."""
